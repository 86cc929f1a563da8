//! What runs once the root is ready: the guest's own init (hand-over), or one command
//! that PID 1 supervises until it ends, then powers off.

use std::convert::Infallible;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often, and how far apart, the power-off signal is sent to the guest's init.
const POWEROFF_REQUESTS: u32 = 10;
const POWEROFF_REPEAT: Duration = Duration::from_secs(3);

use microvm_init::plan::{ExecPlan, GuestPlan, PowerButton};
use rustix::fd::OwnedFd;
use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;
use rustix::process::{Pid, Signal, WaitOptions};

use super::console::{self, say};
use super::fail::{Context, Failure};
use super::{control, mounts, power, switch, systemd};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn start(plan: &GuestPlan, started: f64) -> Result<Infallible, Failure> {
    switch::switch_root()?;
    console::mark("switch");
    match &plan.exec {
        ExecPlan::Init {
            path,
            args,
            ready_from_guest,
        } => hand_over(plan, path, args, *ready_from_guest, started),
        ExecPlan::Command { argv, cwd, user } => {
            let status = supervise(plan, argv, cwd.as_deref(), user.as_deref(), started)?;
            shut_down(status)
        }
    }
}

fn environment(plan: &GuestPlan) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), PATH.into()),
        ("HOME".into(), "/".into()),
        ("TERM".into(), "linux".into()),
    ];
    for (key, value) in &plan.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env
}

fn ready(started: f64) {
    let now = console::uptime();
    say(&format!(
        "microvm-init: ready at {now:.3} s (init took {:.3} s; steps: {})",
        now - started,
        console::steps()
    ));
    control::send(&format!("READY {started:.3} {now:.3}"));
}

fn hand_over(
    plan: &GuestPlan,
    path: &str,
    args: &[String],
    ready_from_guest: bool,
    started: f64,
) -> Result<Infallible, Failure> {
    std::fs::metadata(path).ctx(|| format!("find the guest init {path}"))?;
    let is_systemd = systemd::is_systemd(path);
    let mut deferred = false;
    if is_systemd {
        systemd::write_network_files(&plan.network)?;
        if let (true, Some(channel)) = (ready_from_guest, &plan.control) {
            deferred = systemd::install_ready_unit(channel, started)?;
        }
    }
    // systemd: logind handles the key, the watcher is only a delayed backstop.
    let watch = plan.power_button.as_ref().and_then(|b| {
        if is_systemd {
            b.systemd_backstop_seconds
                .map(|delay| (systemd::POWEROFF_SIGNAL, delay))
        } else {
            b.signal_after_handover.map(|signal| (signal, 0))
        }
    });
    let buttons = if watch.is_some() {
        power::buttons()
    } else {
        Vec::new()
    };
    console::mark("button");
    if watch.is_some() && buttons.is_empty() {
        say("microvm-init: warning: no power button device; presses will be ignored");
    }
    if deferred {
        let now = console::uptime();
        say(&format!(
            "microvm-init: handing over to systemd at {now:.3} s (init took {:.3} s; steps: {}); \
             microvm-ready.service reports readiness",
            now - started,
            console::steps()
        ));
    } else {
        ready(started);
    }
    control::close();
    if let (Some((signal, delay)), false) = (watch, buttons.is_empty()) {
        // SAFETY: PID 1 is single-threaded here (no thread was ever spawned in
        // hand-over mode), so the child may run ordinary Rust code after fork.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            if power::wait_press(&buttons) {
                std::thread::sleep(Duration::from_secs(delay.into()));
                // PID 1 drops a signal it has no handler for yet (a press right after
                // READY can come before the guest's init set its handlers up), so the
                // request is repeated. A guest init that acts on it kills this watcher
                // with every other process on its way down, which ends the repeats.
                for _ in 0..POWEROFF_REQUESTS {
                    // SAFETY: kill() takes no pointers.
                    unsafe { libc::kill(1, signal) };
                    std::thread::sleep(POWEROFF_REPEAT);
                }
            }
            // SAFETY: _exit() ends this forked child without running PID 1's atexit state.
            unsafe { libc::_exit(0) };
        }
        drop(buttons);
    }
    // Beside systemd only until its networkd (if the guest runs it) takes the lease over.
    super::dhcp::keep_in_children(is_systemd);
    let error = Command::new(path)
        .arg0(path)
        .args(args)
        .env_clear()
        .envs(environment(plan))
        .current_dir("/")
        .exec();
    Err(Failure::new(
        format!("exec the guest init {path}"),
        error.to_string(),
    ))
}

/// Runs the command as a session leader on the console and reaps every process until
/// it ends. Returns its status (exit code, or 128 + signal).
fn supervise(
    plan: &GuestPlan,
    argv: &[String],
    cwd: Option<&str>,
    user: Option<&str>,
    started: f64,
) -> Result<i32, Failure> {
    let program = argv
        .first()
        .ok_or_else(|| Failure::new("command", "argv is empty"))?;
    let mut command = Command::new(program);
    command
        .args(&argv[1..])
        .env_clear()
        .envs(environment(plan))
        .current_dir(cwd.unwrap_or("/"));
    if let Some(user) = user {
        let (uid, gid) = parse_user(user)?;
        command.uid(uid).gid(gid);
    }
    if let Some(tty) = console::active_tty() {
        if let Ok(fd) = rustix::fs::open(tty.as_str(), OFlags::RDWR | OFlags::NOCTTY, Mode::empty())
        {
            let (a, b) = (fd.try_clone(), fd.try_clone());
            if let (Ok(a), Ok(b)) = (a, b) {
                command
                    .stdin(Stdio::from(fd))
                    .stdout(Stdio::from(a))
                    .stderr(Stdio::from(b));
            }
        }
    }
    // SAFETY: the closure runs between fork and exec and only makes two syscalls
    // (setsid, ioctl), both async-signal-safe; it allocates nothing.
    unsafe {
        command.pre_exec(|| {
            rustix::process::setsid()?;
            let _ = rustix::process::ioctl_tiocsctty(rustix::stdio::stdin());
            Ok(())
        });
    }
    // The button is opened before READY: a press right after it (a stop as soon as the
    // VM is up) must not be lost.
    let button = plan
        .power_button
        .as_ref()
        .map(|b| (power::buttons(), b.clone()));
    console::mark("button");
    super::dhcp::keep_in_threads();
    ready(started);
    let child = command
        .spawn()
        .ctx(|| format!("start the command {program}"))?;
    let pid = Pid::from_child(&child);
    if let Some((buttons, button)) = button {
        watch_power_button(pid, buttons, button);
    }
    loop {
        match rustix::process::wait(WaitOptions::empty()) {
            Ok(Some((reaped, status))) if reaped == pid => {
                let status = std::process::ExitStatus::from_raw(status.as_raw());
                return Ok(status
                    .code()
                    .or_else(|| status.signal().map(|s| 128 + s))
                    .unwrap_or(255));
            }
            Ok(_) | Err(Errno::INTR) => {}
            Err(e) => return Err(Failure::new("wait for the command", e.to_string())),
        }
    }
}

fn parse_user(user: &str) -> Result<(u32, u32), Failure> {
    let parsed = user
        .split_once(':')
        .and_then(|(u, g)| Some((u.parse().ok()?, g.parse().ok()?)));
    parsed.ok_or_else(|| Failure::new(format!("user {user:?}"), "expected uid:gid (numbers)"))
}

/// In command mode a power-button press stops the command's process group: SIGTERM,
/// then SIGKILL after the grace period. The reaper then takes the normal exit path.
fn watch_power_button(pid: Pid, buttons: Vec<OwnedFd>, button: PowerButton) {
    std::thread::spawn(move || {
        if buttons.is_empty() {
            say("microvm-init: warning: no power button device; presses will be ignored");
            return;
        }
        if power::wait_press(&buttons) {
            say("microvm-init: power button pressed, stopping the command");
            let _ = rustix::process::kill_process_group(pid, Signal::TERM);
            std::thread::sleep(Duration::from_secs(button.grace_seconds.into()));
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    });
}

/// After the command: report, stop what is left, flush and unmount, power off.
fn shut_down(status: i32) -> ! {
    say(&format!(
        "microvm-init: command exited with status {status}"
    ));
    rustix::fs::sync();
    control::send(&format!("EXIT {status}"));
    stop_all(libc::SIGTERM, Duration::from_secs(1));
    stop_all(libc::SIGKILL, Duration::from_secs(1));
    rustix::fs::sync();
    mounts::unmount_all();
    power::off()
}

/// Signals every process but PID 1 and reaps until none is left or `grace` passes.
fn stop_all(signal: i32, grace: Duration) {
    // SAFETY: kill() takes no pointers; -1 means every process except PID 1.
    if unsafe { libc::kill(-1, signal) } != 0 {
        return; // ESRCH: nothing left
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some(_)) => {}
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => return, // ECHILD: all reaped
        }
    }
}
