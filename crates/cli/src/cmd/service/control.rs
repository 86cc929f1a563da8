//! start / stop / restart / shutdown of one managed VM, through systemd or microvm's own
//! detached supervisor.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use microvm_host::service::{adopted, detach, load_runner, record};
use microvm_host::state::{StateDir, VmDir, VmState};
use microvm_host::supervise::{request_shutdown, ShutdownAction};
use microvm_spec::types::VmName;

use super::START_TIMEOUT;

const LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// After `stop`'s timeout, a second SIGTERM makes the supervisor kill the hypervisor and
/// clean up; this is how long that may take before everything is SIGKILLed.
const FORCE_GRACE: Duration = Duration::from_secs(10);

fn systemd() -> bool {
    detach::systemd_running(Path::new("/"))
}

fn systemctl(verb: &str, name: &VmName) -> anyhow::Result<()> {
    let unit = format!("microvm@{name}.service");
    let status = Command::new("systemctl")
        .args([verb, &unit])
        .status()
        .context("running systemctl")?;
    if !status.success() {
        bail!("`systemctl {verb} {unit}` failed ({status}); see `journalctl -u {unit}`");
    }
    Ok(())
}

/// The pid of the live supervisor of `vm`, if any.
pub(super) fn supervisor(vm: &VmDir) -> Option<u32> {
    let pid = vm.supervisor_pid()?;
    detach::is_supervisor_of(pid, vm.name().as_str()).then_some(pid)
}

/// Cleans up after a supervisor of `vm` that died without doing it (`kill -9`), and says so.
pub(super) fn recover_dead(vm: &VmDir) {
    if let Some(r) =
        microvm_host::service::recover::recover(vm, &microvm_host::net::NetHost::system())
    {
        eprintln!("microvm: {}", r.describe(vm.name().as_str()));
    }
}

/// Starts the VM and waits until the guest is ready (or the start failed: then the log
/// tail is printed and the supervisor stopped). Starting a running VM does nothing.
pub fn start_one(state: &StateDir, name: &VmName) -> anyhow::Result<()> {
    start_with(state, name, &[])
}

/// [`start_one`] with `extra` arguments for `microvm supervise` (`--incoming URI`).
pub(super) fn start_with(
    state: &StateDir,
    name: &VmName,
    extra: &[OsString],
) -> anyhow::Result<()> {
    let vm = state.vm(name);
    vm.require()?;
    if systemd() && !extra.is_empty() {
        bail!("restoring or receiving a VM runs under microvm's own supervisor: set MICROVM_SERVICE_MANAGER=own");
    }
    if systemd() {
        return systemctl("start", name);
    }
    let _lock = vm.lock(LOCK_TIMEOUT)?;
    recover_dead(&vm);
    if let Some(pid) = supervisor(&vm) {
        if !extra.is_empty() {
            bail!("{name} is already running (supervisor pid {pid}); stop it first");
        }
        eprintln!("microvm: {name} is already running (supervisor pid {pid})");
        return Ok(());
    }
    let log = vm.supervisor_log_path();
    let offset = std::fs::metadata(&log).map_or(0, |m| m.len());
    // The status the last run left: a `failed` written in this same second by the run
    // that was just stopped (restart) is not this start's failure.
    let previous = vm.status().ok().flatten();
    let exe = std::env::current_exe().context("locating the microvm binary")?;
    let mut args: Vec<OsString> = vec![
        "--state-dir".into(),
        state.root().into(),
        "supervise".into(),
        name.as_str().into(),
        "--restart".into(),
        "on-failure".into(),
    ];
    args.extend_from_slice(extra);
    let mut child = detach::spawn_detached(&exe, &args, &log, vm.path())
        .with_context(|| format!("starting the supervisor of {name}"))?;
    let pid = child.id();
    let started = microvm_host::state::now();
    let begun = Instant::now();
    let end = begun + START_TIMEOUT;
    let mut ours = false; // seen a state written by this supervisor
    let failure = loop {
        // Before the status: a supervisor that ended (a refused start, exit 78) wrote why.
        let exited = child.try_wait().ok().flatten();
        let now = vm.status().ok().flatten();
        let fresh = now != previous;
        match now.map(|s| s.state) {
            Some(VmState::Running { supervisor_pid, .. })
                if supervisor_pid == pid && exited.is_none() =>
            {
                eprintln!(
                    "microvm: {name} is running, ready {:.1} s after its start (supervisor pid {pid})",
                    begun.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            Some(VmState::Failed { since, reason, .. }) if since >= started && (ours || fresh) => {
                break reason;
            }
            Some(s) => ours |= s.supervisor_pid() == Some(pid),
            None => {}
        }
        if let Some(status) = exited {
            break format!("its supervisor exited with {status}");
        }
        if Instant::now() >= end {
            break format!(
                "the guest was not ready within {} s",
                START_TIMEOUT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if child.try_wait().ok().flatten().is_none() {
        terminate(&vm, pid, Duration::from_secs(30));
        let _ = child.wait();
    }
    print_tail(&log, offset, 30);
    bail!("{name} did not start: {failure}")
}

/// Stops the VM: SIGTERM to its supervisor (graceful guest shutdown), after `timeout` a
/// second SIGTERM (the supervisor kills the hypervisor and cleans up), and if even that
/// hangs, SIGKILL to everything it started. Stopping a stopped VM does nothing.
pub fn stop_one(state: &StateDir, name: &VmName, timeout: Duration) -> anyhow::Result<()> {
    let vm = state.vm(name);
    vm.require()?;
    if systemd() {
        return systemctl("stop", name);
    }
    let _lock = vm.lock(LOCK_TIMEOUT)?;
    recover_dead(&vm);
    let Some(pid) = supervisor(&vm) else {
        return Ok(());
    };
    if !terminate(&vm, pid, timeout) {
        bail!("the supervisor of {name} (pid {pid}) could not be stopped");
    }
    Ok(())
}

/// Stop, then start (start only, when it was not running).
pub fn restart_one(state: &StateDir, name: &VmName, timeout: Duration) -> anyhow::Result<()> {
    if systemd() {
        state.vm(name).require()?;
        return systemctl("restart", name);
    }
    stop_one(state, name, timeout)?;
    start_one(state, name)
}

/// Asks the guest to power off (the hypervisor's graceful method only, never a kill) and
/// waits up to `timeout` for the VM to end.
pub fn shutdown_one(state: &StateDir, name: &VmName, timeout: Duration) -> anyhow::Result<()> {
    let vm = state.vm(name);
    vm.require()?;
    let Some(rec) = record::read(&vm).filter(|r| r.hypervisor_pid.is_some()) else {
        bail!("{name} is not running");
    };
    let alive = || match vm.status().ok().flatten().map(|s| s.state) {
        Some(s) => s.is_live(),
        None => false,
    };
    if !alive() {
        bail!("{name} is not running");
    }
    let runner = vm
        .booted()
        .or(rec.runner.clone())
        .context("no booted runner")?;
    request_power_off(name, &vm, &runner, &rec, timeout)?;
    if detach::wait_gone(alive, timeout) {
        Ok(())
    } else {
        bail!(
            "{name} did not power off within {} s (still running; `microvm stop` forces)",
            timeout.as_secs()
        )
    }
}

/// Asks the guest of `runner` to power off: the hypervisor's graceful method, or an
/// adopted runner's own `bin/microvm-shutdown` (as the user the hypervisor runs as).
fn request_power_off(
    name: &VmName,
    vm: &VmDir,
    runner: &Path,
    rec: &record::RunRecord,
    timeout: Duration,
) -> anyhow::Result<()> {
    if adopted::is_adopted(runner) {
        let user = microvm_host::privilege::lookup_user(&rec.user)
            .ok()
            .flatten()
            .filter(|c| c.uid != 0)
            .map(|c| (c.uid, c.gid));
        return match adopted::shutdown(runner, vm.path(), user, timeout) {
            Ok(true) => Ok(()),
            Ok(false) => bail!(
                "{name} runs an adopted runner without bin/microvm-shutdown: it has no graceful \
                 way to power off (`microvm stop {name}` sends SIGTERM)"
            ),
            Err(e) => bail!("cannot ask {name} to power off: {e}"),
        };
    }
    let inv = load_runner(runner)?.invocation;
    match request_shutdown(&inv.shutdown, vm.path(), &inv.program) {
        Ok(ShutdownAction::Requested) => Ok(()),
        Ok(ShutdownAction::Signal(sig)) => {
            if let Some(hv) = rec.hypervisor_pid {
                detach::signal(hv as i32, sig);
            }
            Ok(())
        }
        Err(e) => bail!("cannot ask {name} to power off: {e}"),
    }
}

/// SIGTERM, wait `timeout`; SIGTERM again, wait [`FORCE_GRACE`]; then SIGKILL the
/// supervisor's session and what it recorded, and clean up after it. Returns whether
/// the supervisor is gone.
fn terminate(vm: &VmDir, pid: u32, timeout: Duration) -> bool {
    let name = vm.name().as_str().to_string();
    let alive = || detach::is_supervisor_of(pid, &name);
    detach::signal(pid as i32, libc_sigterm());
    if detach::wait_gone(alive, timeout) {
        return true;
    }
    eprintln!(
        "microvm: {name}: no graceful stop within {} s; forcing",
        timeout.as_secs()
    );
    detach::signal(pid as i32, libc_sigterm());
    if detach::wait_gone(alive, FORCE_GRACE) {
        return true;
    }
    // The supervisor hangs: kill it and everything it recorded, and clean up for it.
    let rec = record::read(vm);
    detach::signal(-(pid as i32), 9);
    detach::signal(pid as i32, 9);
    if let Some(r) = &rec {
        for p in r
            .hypervisor_pid
            .iter()
            .chain(r.helpers.iter().map(|h| &h.pid))
        {
            detach::signal(-(*p as i32), 9);
        }
        let net = microvm_host::net::NetHost::system();
        for i in &r.interfaces {
            if net.link_exists(i) {
                let _ = net.delete_link(i);
            }
        }
    }
    let _ = vm.clear_booted();
    let _ = vm.write_status(&microvm_host::state::Status {
        state: VmState::Failed {
            since: microvm_host::state::now(),
            exit_code: None,
            reason: "the supervisor hung while stopping and was killed".into(),
        },
        runner: rec.and_then(|r| r.runner),
    });
    detach::wait_gone(alive, Duration::from_secs(5))
}

const fn libc_sigterm() -> i32 {
    15
}

/// Prints the last `lines` lines written to `log` after byte `offset`.
fn print_tail(log: &Path, offset: u64, lines: usize) {
    let Ok(bytes) = std::fs::read(log) else {
        return;
    };
    let text = String::from_utf8_lossy(bytes.get(offset as usize..).unwrap_or(&[]));
    let all: Vec<&str> = text.lines().collect();
    eprintln!("--- {} (last lines) ---", log.display());
    for l in &all[all.len().saturating_sub(lines)..] {
        eprintln!("{l}");
    }
}
