//! One lock for the networks of a state directory: an exclusive flock on
//! `<state>/.networks/.lock`, held for the whole of every change (create or update,
//! remove, `managed-by`, a VM's address reservation), so that two `network create`, a
//! `create` and a `remove` or two `host apply` run one after the other. A waiter blocks
//! and says so once on stderr when the lock is not free within a moment.
//!
//! The file is opened close-on-exec (as Rust opens every file), so the supervisor and
//! dnsmasq a holder starts do not inherit it: the lock ends with the change, not with
//! the network's processes. The supervisor (`network supervise`) never takes it: a
//! holder waits for the supervisor's dnsmasq, so taking it there would deadlock.
//!
//! Order: the forwarded-port lock (`forward.rs`, `/run/microvm-forward.lock`) is taken
//! before this one, never after: a VM's start takes the forward lock and then this one to
//! reserve an address; the network changes here never take the forward lock.

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use super::{io_err, NetworkConfig, NetworkError, NetworkName, Networks};

/// The lock file in `<state>/.networks/` (a dot name: never a network's).
pub(super) const LOCK: &str = ".lock";
/// How long a waiter waits quietly before it says that it waits.
const QUIET: Duration = Duration::from_millis(500);

/// While it lives, this process is the only one changing the networks of its state
/// directory. Its methods are the changes; each of [`Networks`]'s takes one for itself.
#[derive(Debug)]
pub struct NetworksLock<'a> {
    nets: &'a Networks,
    _file: fs::File,
}

impl Networks {
    /// Takes the lock of this state directory's networks, waiting for another process
    /// that holds it (saying so on stderr after a moment). Not reentrant: a process
    /// that holds it must make its changes through the returned guard.
    pub fn lock(&self) -> Result<NetworksLock<'_>, NetworkError> {
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        let path = self.root.join(LOCK);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io_err("open the lock", &path))?;
        wait_for(&file, &path, &mut |m| eprintln!("microvm: {m}"))?;
        Ok(NetworksLock {
            nets: self,
            _file: file,
        })
    }
}

/// Takes the exclusive flock of `file`, blocking; `say` hears once that it waits when
/// the lock is not free within [`QUIET`].
fn wait_for(file: &fs::File, path: &Path, say: &mut dyn FnMut(&str)) -> Result<(), NetworkError> {
    let lock_err = |e: rustix::io::Errno| io_err("lock", path)(e.into());
    let end = Instant::now() + QUIET;
    loop {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(lock_err(e)),
        }
    }
    say(&format!(
        "waiting for another change of the networks ({})",
        path.display()
    ));
    loop {
        match flock(file, FlockOperation::LockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(lock_err(e)),
        }
    }
}

impl NetworksLock<'_> {
    /// [`Networks::apply`] under this lock.
    pub fn apply(&self, config: &NetworkConfig) -> Result<(), NetworkError> {
        config.validate()?;
        self.nets.apply_locked(config)
    }

    /// [`Networks::remove`] under this lock.
    pub fn remove(&self, name: &NetworkName) -> Result<(), NetworkError> {
        self.nets.remove_locked(name)
    }

    /// [`Networks::set_managed_by`] under this lock.
    pub fn set_managed_by(&self, name: &NetworkName, file: &Path) -> Result<(), NetworkError> {
        self.nets.set_managed_by_locked(name, file)
    }

    /// The lock file (for messages and tests).
    pub fn path(&self) -> PathBuf {
        self.nets.root.join(LOCK)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(dir: &Path) -> Networks {
        Networks::new(dir, super::super::Tools::system())
    }

    #[test]
    fn the_lock_file_is_no_network() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = nets(dir.path());
        let lock = n.lock().expect("lock");
        assert!(lock.path().is_file());
        assert!(n.names().expect("names").is_empty());
    }

    #[test]
    fn a_second_holder_waits_and_says_so_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = nets(dir.path());
        let held = n.lock().expect("lock");
        let path = held.path();
        // Another open file description: flock treats it as another holder.
        let other = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let mut said = Vec::new();
            wait_for(&other, &path, &mut |m| said.push(m.to_string())).expect("locked");
            tx.send(()).expect("send");
            said
        });
        assert!(
            rx.recv_timeout(QUIET * 3).is_err(),
            "took a lock that is held"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(10))
            .expect("the waiter gets the lock once it is free");
        let said = waiter.join().expect("waiter");
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(said[0].starts_with("waiting for another change of the networks ("));
    }

    #[test]
    fn a_free_lock_is_taken_quietly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = nets(dir.path());
        drop(n.lock().expect("lock"));
        let path = dir.path().join(".networks").join(LOCK);
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        let mut said = Vec::new();
        wait_for(&file, &path, &mut |m| said.push(m.to_string())).expect("lock");
        assert!(said.is_empty(), "{said:?}");
    }
}
