//! The console (the init's stdout) and the clock.

use std::io::Write;
use std::sync::Mutex;

use rustix::fd::AsFd;
use rustix::fs::{Mode, OFlags};
use rustix::time::{clock_gettime, ClockId};

/// Seconds since boot, as `/proc/uptime` counts them (`CLOCK_BOOTTIME`); readable before
/// `/proc` is mounted.
pub fn uptime() -> f64 {
    let t = clock_gettime(ClockId::Boottime);
    t.tv_sec as f64 + t.tv_nsec as f64 / 1e9
}

/// Writes one line to the console. Errors are ignored: PID 1 must not die over a
/// console it cannot write to.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// The kernel opens `/dev/console` as fds 0-2 only when the initramfs has that node;
/// when it had none, open it now from devtmpfs.
pub fn attach_stdio() {
    if rustix::io::fcntl_getfd(std::io::stdout()).is_ok() {
        return;
    }
    let Ok(fd) = rustix::fs::open("/dev/console", OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
    else {
        return;
    };
    let _ = rustix::stdio::dup2_stdin(fd.as_fd());
    let _ = rustix::stdio::dup2_stdout(fd.as_fd());
    let _ = rustix::stdio::dup2_stderr(fd.as_fd());
}

/// The device behind `/dev/console` (the last entry of
/// `/sys/class/tty/console/active`, e.g. `/dev/ttyS0`), which can be a controlling
/// terminal, unlike `/dev/console` itself.
pub fn active_tty() -> Option<String> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").ok()?;
    let name = active.split_whitespace().last()?;
    Some(format!("/dev/{name}"))
}

/// Uptime at the end of each boot step, printed with the ready line.
static STEPS: Mutex<Vec<(&'static str, f64)>> = Mutex::new(Vec::new());

/// Records that boot step `name` ended now.
pub fn mark(name: &'static str) {
    if let Ok(mut steps) = STEPS.lock() {
        steps.push((name, uptime()));
    }
}

/// `name=<uptime>` for each step so far, e.g. `modules=1.92 root=2.01`.
pub fn steps() -> String {
    let Ok(steps) = STEPS.lock() else {
        return String::new();
    };
    let parts: Vec<String> = steps.iter().map(|(n, t)| format!("{n}={t:.3}")).collect();
    parts.join(" ")
}
