//! Does hardware virtualisation really work here?
//!
//! Opening `/dev/kvm` is not enough: a nested or paravirtual KVM may accept every ioctl
//! and then never run a guest (or hang). [`probe`] therefore runs a tiny guest in a
//! forked child under a deadline and only reports [`KvmStatus::Usable`] when the guest
//! ran a 10-million-iteration loop at hardware speed, produced the expected port write
//! and halted. A KVM that merely emulates guest code (the nested `kvm_pvm` module runs
//! the tiny real-mode test correctly, ~300× too slowly, then fails real kernels with
//! "emulation failure" and leaves qemu paused forever) is caught by the deadline.
//! Nothing is cached; the probe costs ~100 ms when KVM works and the deadline when not.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

mod cache;
mod guest;
mod tsc;

pub use cache::probe_cached;
pub use tsc::{tsc_khz, tsc_khz_from};

/// The result of [`probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmStatus {
    Usable,
    Unusable { reason: String },
}

impl KvmStatus {
    pub fn is_usable(&self) -> bool {
        matches!(self, KvmStatus::Usable)
    }
}

/// What [`probe`] found and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvmProbe {
    pub status: KvmStatus,
    pub elapsed: Duration,
}

/// How long the test guest may take before KVM is declared unusable.
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(1000);

/// Probes `/dev/kvm` with [`DEFAULT_DEADLINE`].
pub fn probe() -> KvmProbe {
    probe_device(Path::new("/dev/kvm"), DEFAULT_DEADLINE)
}

/// Probes the KVM device at `dev`: opens it, checks the API version, then runs a tiny
/// guest in a forked child that is killed if it has not finished within `deadline`.
pub fn probe_device(dev: &Path, deadline: Duration) -> KvmProbe {
    let start = Instant::now();
    let status = probe_inner(dev, deadline);
    KvmProbe {
        status,
        elapsed: start.elapsed(),
    }
}

fn unusable(reason: impl Into<String>) -> KvmStatus {
    KvmStatus::Unusable {
        reason: reason.into(),
    }
}

fn probe_inner(dev: &Path, deadline: Duration) -> KvmStatus {
    // Cheap checks in this process first: they give the clearest reasons.
    let file = match std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        Ok(f) => f,
        Err(e) => return unusable(format!("cannot open {}: {e}", dev.display())),
    };
    // SAFETY: `file` is open and ownership of its fd moves into `kvm`.
    let kvm = unsafe { kvm_ioctls::Kvm::from_raw_fd(file.into_raw_fd()) };
    let version = kvm.get_api_version();
    if version < 0 {
        let e = std::io::Error::last_os_error();
        return unusable(format!("{} is not a KVM device: {e}", dev.display()));
    }
    if version != 12 {
        return unusable(format!(
            "unsupported KVM API version {version} (expected 12)"
        ));
    }
    drop(kvm);
    run_in_child(dev, deadline)
}

/// Runs [`guest::run_test_guest`] in a forked child and reads its one-line verdict.
fn run_in_child(dev: &Path, deadline: Duration) -> KvmStatus {
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return unusable(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let dev_c = match std::ffi::CString::new(dev.as_os_str().as_encoded_bytes()) {
        Ok(c) => c,
        Err(_) => return unusable("device path contains a NUL byte"),
    };
    // SAFETY: the child only runs the test guest (ioctls, mmap, a few small heap
    // allocations, which glibc makes safe after fork by holding its arena locks across
    // it), writes to the pipe and `_exit`s; it never returns into the caller's code.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return unusable(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        drop(rd);
        let verdict = guest::run_test_guest(&dev_c);
        let line = match &verdict {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("{e}\n"),
        };
        // SAFETY: writing a byte buffer we own to the pipe's write end, then leaving the
        // child without running any atexit handlers or destructors of the parent.
        unsafe {
            libc::write(wr.as_raw_fd(), line.as_ptr().cast(), line.len());
            libc::_exit(0);
        }
    }
    drop(wr);
    let verdict = read_with_deadline(&rd, deadline);
    reap(pid, verdict.is_none());
    match verdict {
        None => unusable(format!(
            "a test guest that runs in ~10 ms on hardware virtualisation did not finish within \
             {} ms: guest code is emulated or stalled{}",
            deadline.as_millis(),
            nested_hint(Path::new("/sys"))
        )),
        Some(v) if v == "ok" => KvmStatus::Usable,
        Some(v) if v.is_empty() => unusable("the KVM test process died without a verdict"),
        Some(v) => unusable(format!("the KVM test guest failed: {v}")),
    }
}

/// Names the paravirtual KVM module when it is loaded (it cannot run ordinary guests).
fn nested_hint(sys: &Path) -> &'static str {
    if sys.join("module/kvm_pvm").exists() {
        " (the kvm_pvm module is loaded: paravirtual nested KVM)"
    } else {
        " (nested or paravirtual KVM?)"
    }
}

/// Reads the child's verdict line, or `None` when the deadline passes first.
fn read_with_deadline(rd: &OwnedFd, deadline: Duration) -> Option<String> {
    let end = Instant::now() + deadline;
    let mut buf = Vec::new();
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let mut pfd = libc::pollfd {
            fd: rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Some(String::from("poll failed"));
        }
        if n == 0 {
            return None;
        }
        let mut chunk = [0u8; 512];
        let mut file = std::fs::File::from(rd.try_clone().ok()?);
        match file.read(&mut chunk) {
            Ok(0) => return Some(String::from_utf8_lossy(&buf).trim().to_string()),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Some(format!("reading the verdict: {e}")),
        }
    }
}

/// Reaps the child; kills it first when it overran. Never blocks for long: a child
/// stuck in the kernel is left to a detached thread to reap.
fn reap(pid: libc::pid_t, kill: bool) {
    if kill {
        // SAFETY: `pid` is our own child, not yet reaped.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    let end = Instant::now() + Duration::from_millis(500);
    loop {
        let mut status = 0;
        // SAFETY: waiting on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r != 0 {
            return;
        }
        if Instant::now() >= end {
            std::thread::spawn(move || {
                let mut status = 0;
                // SAFETY: as above; blocking is fine on this detached thread.
                unsafe { libc::waitpid(pid, &mut status, 0) };
            });
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_is_unusable_with_reason() {
        let p = probe_device(Path::new("/nonexistent/kvm"), DEFAULT_DEADLINE);
        match p.status {
            KvmStatus::Unusable { reason } => assert!(reason.contains("cannot open"), "{reason}"),
            KvmStatus::Usable => panic!("usable?"),
        }
    }

    #[test]
    fn non_kvm_device_is_unusable() {
        let p = probe_device(Path::new("/dev/null"), DEFAULT_DEADLINE);
        assert!(!p.status.is_usable());
    }

    /// Runs the real probe; prints what it found (the result depends on the machine),
    /// and checks that it respects its deadline.
    #[test]
    fn real_probe_is_bounded() {
        let p = probe();
        eprintln!("kvm probe: {:?} in {:?}", p.status, p.elapsed);
        assert!(p.elapsed < DEFAULT_DEADLINE + Duration::from_secs(1));
    }
}
