//! Advisory locks: flock(2) on `<vm>/.lock` and `<state>/.lock`. The lock is released when
//! the guard is dropped or the process dies, so a crashed command never leaves it held.

use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use super::{io_err, StateError, VmDir};
use microvm_spec::types::VmName;

/// Holds the lock of one VM until dropped.
#[derive(Debug)]
pub struct VmLock {
    name: VmName,
    _file: fs::File,
}

impl VmLock {
    pub fn name(&self) -> &VmName {
        &self.name
    }
}

/// Holds the lock of the whole state directory (exclusive or shared) until dropped.
#[derive(Debug)]
pub struct HostLock {
    _file: fs::File,
}

const POLL: Duration = Duration::from_millis(50);

/// Locks `path` exclusively, polling a non-blocking flock until `timeout`. Returns the file,
/// or `None` on timeout.
fn acquire(path: &Path, timeout: Duration, shared: bool) -> Result<Option<fs::File>, StateError> {
    let op = if shared {
        FlockOperation::NonBlockingLockShared
    } else {
        FlockOperation::NonBlockingLockExclusive
    };
    let deadline = Instant::now() + timeout;
    loop {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io_err("open the lock", path))?;
        loop {
            match flock(&file, op) {
                Ok(()) => break,
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {
                    if Instant::now() >= deadline {
                        return Ok(None);
                    }
                    std::thread::sleep(POLL);
                }
                Err(e) => return Err(io_err("lock", path)(e.into())),
            }
        }
        // The file may have been unlinked (its directory removed or renamed away) while we
        // waited: then the lock guards nothing, and the caller must see that.
        let held = file.metadata().map_err(io_err("stat", path))?;
        match fs::metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => return Ok(Some(file)),
            Ok(_) => continue, // replaced by a new file: lock that one
            Err(_) => return Err(io_err("lock", path)(std::io::ErrorKind::NotFound.into())),
        }
    }
}

pub(super) fn lock_vm(vm: &VmDir, timeout: Duration) -> Result<VmLock, StateError> {
    let path = vm.lock_path();
    match acquire(&path, timeout, false) {
        Ok(Some(file)) => Ok(VmLock {
            name: vm.name().clone(),
            _file: file,
        }),
        Ok(None) => Err(StateError::Locked {
            name: vm.name().clone(),
            timeout,
        }),
        Err(StateError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(StateError::NotFound {
                name: vm.name().clone(),
                path: vm.path().to_path_buf(),
            })
        }
        Err(e) => Err(e),
    }
}

pub(super) fn lock_host(
    path: &Path,
    timeout: Duration,
    shared: bool,
) -> Result<HostLock, StateError> {
    match acquire(path, timeout, shared)? {
        Some(file) => Ok(HostLock { _file: file }),
        None => Err(StateError::HostLocked {
            path: PathBuf::from(path.parent().unwrap_or(path)),
            timeout,
        }),
    }
}
