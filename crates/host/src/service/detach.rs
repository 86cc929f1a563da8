//! Microvm's own service manager, for hosts where systemd is not PID 1: the supervisor is
//! started detached (own session, stdio to `supervisor.log`), found again through
//! `supervisor.pid`, and stopped by signals.

use std::ffi::OsString;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Starts `program args…` in a new session (setsid: no controlling terminal, its own
/// process group), stdin from /dev/null, stdout and stderr appended to `log`.
pub fn spawn_detached(
    program: &Path,
    args: &[OsString],
    log: &Path,
    workdir: &Path,
) -> std::io::Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log)?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe and only affects the child.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Whether `pid` is alive and runs `microvm … supervise NAME` (so a reused pid is never
/// signalled).
pub fn is_supervisor_of(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let Some(i) = args.iter().position(|a| *a == b"supervise") else {
        return false;
    };
    // A zombie has an empty cmdline and is caught above.
    args[i + 1..].contains(&name.as_bytes())
}

/// Sends `sig` to `pid` (negative: a process group).
pub fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// Waits until `alive()` is false, up to `timeout`.
pub fn wait_gone(mut alive: impl FnMut() -> bool, timeout: Duration) -> bool {
    let end = Instant::now() + timeout;
    while alive() {
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// Whether systemd manages services here: `/run/systemd/system` exists (sd_booted(3)).
/// `MICROVM_SERVICE_MANAGER=own` or `=systemd` overrides the detection.
pub fn systemd_running(root: &Path) -> bool {
    match std::env::var("MICROVM_SERVICE_MANAGER").as_deref() {
        Ok("own") => false,
        Ok("systemd") => true,
        _ => root.join("run/systemd/system").is_dir(),
    }
}
