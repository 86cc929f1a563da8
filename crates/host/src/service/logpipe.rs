//! `supervisor.log`, rotated like `console.log`. A detached supervisor's stdout and
//! stderr are that file (opened by `microvm start`); [`rotate_own_output`] replaces them
//! by a pipe whose reader thread appends to the file through a [`RotatingLog`], so a VM
//! that runs for months keeps at most twice the limit on disk.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::thread::JoinHandle;

use crate::console::RotatingLog;

/// When fd 2 is the file `log` (same inode), makes fds 1 and 2 a pipe into a rotating
/// writer of `log` with `limit` bytes per generation. Keep the guard until the end: its
/// drop closes the pipe and waits (up to 2 s) until the last lines are written.
pub fn rotate_own_output(log: &Path, limit: u64) -> io::Result<Option<OutputGuard>> {
    Ok(rotate_fds(log, limit, &[2, 1])?.map(|reader| OutputGuard {
        reader: Some(reader),
    }))
}

/// See [`rotate_own_output`].
#[derive(Debug)]
pub struct OutputGuard {
    reader: Option<JoinHandle<()>>,
}

impl Drop for OutputGuard {
    fn drop(&mut self) {
        if let Ok(null) = File::options().write(true).open("/dev/null") {
            for fd in [1, 2] {
                // SAFETY: dup2 of a valid descriptor onto the standard ones.
                unsafe { libc::dup2(null.as_raw_fd(), fd) };
            }
        }
        let Some(reader) = self.reader.take() else {
            return;
        };
        // A child that kept a copy of fd 2 would hold the pipe open: wait 2 s at most.
        let end = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while !reader.is_finished() && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if reader.is_finished() {
            let _ = reader.join();
        }
    }
}

/// When `fds[0]` is the file `log`, points every fd of `fds` at a pipe whose reader
/// thread (returned) appends to `log` through a [`RotatingLog`].
pub fn rotate_fds(log: &Path, limit: u64, fds: &[RawFd]) -> io::Result<Option<JoinHandle<()>>> {
    let Ok(ours) = std::fs::metadata(log) else {
        return Ok(None);
    };
    let Some(&first) = fds.first() else {
        return Ok(None);
    };
    // SAFETY: a zeroed stat is a valid buffer for fstat to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat writes only into st, which is valid for writes.
    if unsafe { libc::fstat(first, &mut st) } != 0
        || st.st_ino != ours.ino()
        || st.st_dev != ours.dev()
    {
        return Ok(None);
    }
    let mut writer = RotatingLog::open(log, limit)?;
    let (read, write) = rustix::pipe::pipe()?;
    for &fd in fds {
        // SAFETY: dup2 onto descriptors the caller hands us; `write` stays valid.
        if unsafe { libc::dup2(write.as_raw_fd(), fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    drop(write);
    let mut read = File::from(read);
    Ok(Some(std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match read.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let _ = writer.write(&buf[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use std::os::fd::{FromRawFd, IntoRawFd};

    #[test]
    fn output_into_the_log_is_rotated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("supervisor.log");
        let fd = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open")
            .into_raw_fd();
        let reader = rotate_fds(&log, 1000, &[fd])
            .expect("rotate")
            .expect("it is the log");
        // SAFETY: fd is ours (opened above, now the pipe's write end).
        let mut out = unsafe { File::from_raw_fd(fd) };
        // Three bursts the reader sees apart (one read may take a whole burst).
        for burst in 0..3 {
            for i in 0..20 {
                writeln!(out, "line {burst}-{i:02} of the supervisor's output").expect("write");
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        drop(out);
        reader.join().expect("reader");
        let now = std::fs::metadata(&log).expect("log").len();
        let old = std::fs::metadata(dir.path().join("supervisor.log.1"))
            .expect("log.1")
            .len();
        assert!(now <= 1000 && old <= 1000, "{now} {old}");
        assert!(std::fs::read_to_string(&log)
            .expect("r")
            .contains("line 2-19"));
        let other = dir.path().join("other");
        std::fs::write(&other, "").expect("w");
        let fd2 = File::open(&other).expect("open");
        assert!(rotate_fds(&log, 1000, &[fd2.as_raw_fd()])
            .expect("no")
            .is_none());
    }
}
