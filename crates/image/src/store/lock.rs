//! The store's lock: flock(2) on `<store>/.lock`, shared by everything that builds into
//! or runs from the store (a [`Store`](super::Store) holds it while it lives), exclusive
//! for `microvm gc`. So gc never collects an entry between its build and the link or run
//! that uses it, and a `microvm run FILE` keeps its runner alive while the VM runs.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};

use super::StoreError;

/// The name of the lock file in the store's root.
pub const LOCK_FILE: &str = ".lock";

const POLL: Duration = Duration::from_millis(50);

/// Holds the store's lock until dropped (or the process ends).
#[derive(Debug)]
pub struct StoreLock {
    _file: Option<fs::File>,
}

/// Whether the lock is shared (builders, runs) or exclusive (gc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockKind {
    Shared,
    Exclusive,
}

impl StoreLock {
    /// Locks the store at `root`, waiting as long as it takes ([`StoreLock::acquire`]).
    pub fn wait(
        root: &Path,
        kind: LockKind,
        waiting: &mut dyn FnMut(),
    ) -> Result<StoreLock, StoreError> {
        // Without a deadline `acquire` returns only with the lock (or an error).
        Ok(Self::acquire(root, kind, None, waiting)?.unwrap_or(StoreLock { _file: None }))
    }

    /// Locks the store at `root`, waiting up to `timeout` (forever when `None`); `waiting`
    /// is called once if the lock is not free at once. A store whose lock file cannot be
    /// created nor opened (a read-only store someone else owns) is used unlocked.
    /// Returns `Ok(None)` on timeout.
    pub fn acquire(
        root: &Path,
        kind: LockKind,
        timeout: Option<Duration>,
        waiting: &mut dyn FnMut(),
    ) -> Result<Option<StoreLock>, StoreError> {
        let path = root.join(LOCK_FILE);
        let Some(file) = open(&path)? else {
            return Ok(Some(StoreLock { _file: None }));
        };
        let op = match kind {
            LockKind::Shared => FlockOperation::NonBlockingLockShared,
            LockKind::Exclusive => FlockOperation::NonBlockingLockExclusive,
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut told = false;
        loop {
            match flock(&file, op) {
                Ok(()) => return Ok(Some(StoreLock { _file: Some(file) })),
                Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(lock_error(&path, e)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(None);
            }
            if !told {
                told = true;
                waiting();
            }
            std::thread::sleep(POLL);
        }
    }
}

fn open(path: &Path) -> Result<Option<fs::File>, StoreError> {
    let rw = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path);
    match rw {
        Ok(f) => Ok(Some(f)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
            ) =>
        {
            Ok(fs::File::open(path).ok())
        }
        Err(source) => Err(StoreError::Io {
            op: "opening the lock",
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn lock_error(path: &Path, e: rustix::io::Errno) -> StoreError {
    StoreError::Io {
        op: "locking",
        path: path.to_path_buf(),
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn try_lock(root: &Path, kind: LockKind) -> Option<StoreLock> {
        StoreLock::acquire(root, kind, Some(Duration::ZERO), &mut || {}).expect("lock")
    }

    #[test]
    fn builders_share_and_gc_excludes_them() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path();
        let a = try_lock(root, LockKind::Shared).expect("first builder");
        let b = try_lock(root, LockKind::Shared).expect("a second builder at once");
        assert!(try_lock(root, LockKind::Exclusive).is_none(), "gc waits");
        drop((a, b));
        let gc = try_lock(root, LockKind::Exclusive).expect("gc once builders are done");
        assert!(
            try_lock(root, LockKind::Shared).is_none(),
            "builders wait for gc"
        );
        let mut told = 0;
        let waiter = std::thread::spawn({
            let root = root.to_path_buf();
            move || {
                StoreLock::wait(&root, LockKind::Shared, &mut || told += 1).expect("lock");
                told
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        drop(gc);
        assert_eq!(waiter.join().expect("thread"), 1, "told once that it waits");
    }

    #[test]
    fn an_unwritable_store_is_used_unlocked() {
        use std::os::unix::fs::PermissionsExt as _;
        if rustix::process::geteuid().is_root() {
            eprintln!("skipped: root can write any directory");
            return;
        }
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o555)).expect("chmod");
        assert!(try_lock(tmp.path(), LockKind::Shared).is_some());
    }
}
