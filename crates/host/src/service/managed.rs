//! The supervisor of a managed VM (`microvm supervise NAME`): one process owns the whole
//! lifecycle of one VM — what microvm.nix spreads over `microvm@`, `microvm-tap-interfaces@`,
//! `microvm-macvtap-interfaces@`, `microvm-pci-devices@` and `microvm-virtiofsd@`.
//!
//! One attempt: read `current` (once; the runner directory is immutable), set `booted`,
//! prepare the directory and volumes, create taps and macvtaps, bind PCI devices, open
//! the console pty, run the VM ([`crate::supervise`]) with the hypervisor as the
//! unprivileged user, then — on every way the run can end — remove the interfaces it
//! created (from memory), clear `booted`, and record the end in `status.json`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microvm_runner::Invocation;

use super::outcome::{describe, describe_status, status_code};
use super::record::{ExitRecord, HelperRecord, RunRecord};
use super::refusal::{self, Refusal};
use super::run_options::run_options;
use super::{adopted, machined, notify, pci, record};
use crate::console::{self, ConsoleConfig, ConsoleServer};
use crate::error_chain;
use crate::net::{self, Links, MacvtapSetup, NetHost};
use crate::privilege::Credentials;
use crate::state::{now, Status, VmDir, VmState};
use crate::supervise::{
    self, Console, PassFd, Progress, RunError, RunOptions, RunOutcome, SharedFd, StopHandle,
};

/// When the supervisor starts a VM again after it ended (systemd's `Restart=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    No,
    /// After a non-zero exit that nobody asked for (crash, kill, guest failure).
    OnFailure,
    /// After any end that nobody asked for, guest poweroff included (the original's
    /// `Restart=always`).
    Always,
}

impl std::str::FromStr for RestartMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "no" => Ok(RestartMode::No),
            "on-failure" => Ok(RestartMode::OnFailure),
            "always" => Ok(RestartMode::Always),
            other => Err(format!(
                "unknown restart policy {other:?} (no, on-failure, always)"
            )),
        }
    }
}

/// Restart policy: like `Restart=`, `RestartSec=`, `StartLimitBurst=` and
/// `StartLimitIntervalSec=` of the unit: at most `burst` starts within `interval`, then
/// the supervisor gives up (no restart storms, #317/#48).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    pub delay: Duration,
    pub burst: usize,
    pub interval: Duration,
}

impl RestartPolicy {
    pub fn new(mode: RestartMode) -> Self {
        RestartPolicy {
            mode,
            delay: Duration::from_secs(5),
            burst: 5,
            interval: Duration::from_secs(300),
        }
    }
}

/// How the console is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleMode {
    /// A pty served on `console.sock` and logged to `console.log` (service mode).
    Pty,
    /// The caller's terminal (`microvm run NAME`).
    Inherit,
}

#[derive(Debug, Clone)]
pub struct ManagedOptions {
    /// The hypervisor's user; `None` = unchanged ([`crate::privilege::resolve_run_user`]).
    pub run_user: Option<Credentials>,
    pub restart: RestartPolicy,
    pub shutdown_timeout: Duration,
    pub ready_timeout: Option<Duration>,
    pub net: NetHost,
    pub console: ConsoleMode,
    pub console_log_limit: u64,
    pub path_var: Option<OsString>,
    /// Fed by the caller's signal handling: one request = graceful stop, two = force.
    pub stop: StopHandle,
    /// The first attempt restores this state instead of booting (qemu `-incoming`).
    pub incoming: Option<crate::migrate::Incoming>,
}

/// A runner directory, as the supervisor needs it.
#[derive(Debug, Clone)]
pub struct Runner {
    pub dir: PathBuf,
    /// Built elsewhere (no `invocation.json`): run through its `bin/` scripts
    /// ([`adopted`]).
    pub adopted: bool,
    pub invocation: Invocation,
    pub macvtaps: Vec<MacvtapSetup>,
    pub pci_devices: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("VM {name} has no `current` runner in {}", dir.display())]
    NoCurrent { name: String, dir: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not a runner made by microvm (no valid invocation.json; runners of microvm.nix must be recreated with `microvm create --from`)", path.display())]
    Invocation {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(transparent)]
    Net(#[from] net::NetError),
    #[error(transparent)]
    Pci(#[from] pci::PciError),
    #[error(transparent)]
    Forward(#[from] crate::network::forward::ForwardError),
    /// What [`load_runner`] said of the runner `current` names, before the first start.
    #[error(transparent)]
    UnusableRunner(Box<ServiceError>),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("VM {name} is already supervised by pid {pid}")]
    AlreadySupervised { name: String, pid: u32 },
    #[error("the hypervisor runs as {user}, who cannot open /dev/net/tun (mode {mode:o}) to attach its taps; make it 0666 (the usual mode: `chmod 0666 /dev/net/tun`, or a udev rule) or run the VM as root (--user root)")]
    TunAccess { user: String, mode: u32 },
    #[error("{0}")]
    Prepare(String),
    #[error("console")]
    Console(#[source] std::io::Error),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Reads a runner directory (the target of `current`).
pub fn load_runner(dir: &Path) -> Result<Runner, ServiceError> {
    let share = dir.join("share/microvm");
    let path = share.join("invocation.json");
    let adopted = adopted::is_adopted(dir);
    // The plan root acts on (or the adopted runner's scripts root runs): only from a path
    // the hypervisors' group cannot replace.
    let trusted = if adopted {
        dir.join("bin")
    } else {
        path.clone()
    };
    crate::trust::check_trusted_path(&trusted).map_err(|source| ServiceError::Read {
        path: trusted.clone(),
        source,
    })?;
    let invocation = if adopted {
        adopted::invocation(dir)
    } else {
        let bytes = std::fs::read(&path).map_err(|source| ServiceError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|source| ServiceError::Invocation { path, source })?
    };
    let optional = |name: &str| std::fs::read_to_string(share.join(name)).unwrap_or_default();
    Ok(Runner {
        dir: dir.to_path_buf(),
        adopted,
        invocation,
        macvtaps: MacvtapSetup::parse_list(&optional("macvtap-interfaces"))?,
        pci_devices: optional("pci-devices")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// Prepares what a run needs beyond the runner (the CLI creates volumes here).
pub type Prepare<'a> = dyn FnMut(&Runner, Option<&Credentials>) -> Result<(), String> + 'a;

/// How one attempt ended.
#[derive(Debug, Clone)]
struct End {
    code: i32,
    reason: String,
    /// The stop was asked for (signal, `microvm stop`): never restarted.
    requested: bool,
    /// The start was refused for a reason waiting cannot change: never restarted.
    refused: Option<Refusal>,
}

/// Supervises `vm` until it ends for good; returns the exit code (see docs/host.md,
/// "Supervisor"). `report` receives one line per event worth logging.
pub fn supervise(
    vm: &VmDir,
    opts: &ManagedOptions,
    prepare: &mut Prepare<'_>,
    report: &mut dyn FnMut(&str),
) -> Result<i32, ServiceError> {
    let name = vm.name().to_string();
    let me = std::process::id();
    if let Some(root) = vm.path().parent() {
        crate::trust::check_state_root(root).map_err(|source| ServiceError::Read {
            path: root.to_path_buf(),
            source,
        })?;
    }
    if let Some(pid) = vm.supervisor_pid() {
        if pid != me && super::detach::is_supervisor_of(pid, &name) {
            return Err(ServiceError::AlreadySupervised { name, pid });
        }
    }
    let current = vm.current().ok_or_else(|| ServiceError::NoCurrent {
        name: name.clone(),
        dir: vm.path().to_path_buf(),
    })?;
    // Fail before writing any state when it is unusable.
    load_runner(&current).map_err(|e| ServiceError::UnusableRunner(Box::new(e)))?;
    vm.write_supervisor_pid(me)?;
    let mut rec = RunRecord {
        supervisor_pid: me,
        user: opts
            .run_user
            .as_ref()
            .map_or_else(current_user, |c| c.user.clone()),
        ..RunRecord::default()
    };
    let mut starts: VecDeque<Instant> = VecDeque::new();
    let mut notified = false;
    let code = loop {
        let base = opts.stop.count();
        starts.push_back(Instant::now());
        let end = match vm.current().map(|c| load_runner(&c)) {
            Some(Ok(runner)) => {
                attempt(vm, &runner, opts, &mut rec, &mut notified, prepare, report)
            }
            // The runner directory is immutable: what is wrong with it stays wrong.
            Some(Err(e)) => End {
                code: 1,
                reason: error_chain(&e),
                requested: false,
                refused: Some(Refusal::Runner),
            },
            None => End {
                code: 1,
                reason: format!("VM {name} has no `current` runner any more"),
                requested: false,
                refused: Some(Refusal::Runner),
            },
        };
        report(&format!("ended: {} (exit code {})", end.reason, end.code));
        rec.last_exit = Some(ExitRecord {
            code: end.code,
            reason: end.reason.clone(),
            at: now(),
            refused: end.refused,
        });
        if let Some(r) = end.refused {
            report(&r.log_line());
            let reason = r.status_reason(&end.reason);
            write_end(vm, &rec, &End { reason, ..end }, None);
            break refusal::REFUSED_EXIT;
        }
        let stopped = end.requested || opts.stop.count() > base;
        // An incoming start that never ran its guest is not booted cold instead: the
        // guest may still run where it came from.
        let lost_incoming = opts.incoming.is_some() && rec.attempt == 1 && rec.ready.is_none();
        let again = !stopped
            && !lost_incoming
            && match opts.restart.mode {
                RestartMode::No => false,
                RestartMode::OnFailure => end.code != 0,
                RestartMode::Always => true,
            };
        if !again {
            write_end(vm, &rec, &end, None);
            break end.code;
        }
        while starts
            .front()
            .is_some_and(|t| t.elapsed() > opts.restart.interval)
        {
            starts.pop_front();
        }
        if starts.len() >= opts.restart.burst {
            let reason = format!(
                "{}; not restarting: {} starts within {} s (start limit)",
                end.reason,
                starts.len(),
                opts.restart.interval.as_secs()
            );
            report(&reason);
            write_end(
                vm,
                &rec,
                &End {
                    reason,
                    ..end.clone()
                },
                None,
            );
            break end.code;
        }
        let delay = opts.restart.delay;
        report(&format!("restarting in {} s", delay.as_secs()));
        rec.next_restart = Some(now() + delay.as_secs());
        write_end(vm, &rec, &end, Some(delay));
        let until = Instant::now() + delay;
        while Instant::now() < until && opts.stop.count() == base {
            std::thread::sleep(Duration::from_millis(100));
        }
        rec.next_restart = None;
        if opts.stop.count() > base {
            report("stop requested while waiting to restart");
            let end = End {
                code: 0,
                reason: "stopped on request".into(),
                requested: true,
                refused: None,
            };
            write_end(vm, &rec, &end, None);
            break 0;
        }
    };
    if vm.supervisor_pid() == Some(me) {
        let _ = std::fs::remove_file(vm.supervisor_pid_path());
    }
    Ok(code)
}

fn current_user() -> String {
    if crate::privilege::is_root() {
        "root".into()
    } else {
        rustix::process::geteuid().as_raw().to_string()
    }
}

fn write_end(vm: &VmDir, rec: &RunRecord, end: &End, restart_in: Option<Duration>) {
    let _ = record::write(vm, rec);
    let since = now();
    let state = if end.code == 0 && restart_in.is_none() {
        VmState::Stopped {
            since,
            exit_code: Some(end.code),
        }
    } else {
        let mut reason = end.reason.clone();
        if let Some(d) = restart_in {
            reason.push_str(&format!("; restarting in {} s", d.as_secs()));
        }
        VmState::Failed {
            since,
            exit_code: Some(end.code),
            reason,
        }
    };
    let _ = vm.write_status(&Status {
        state,
        runner: rec.runner.clone(),
    });
}

/// One run of the VM, with its cleanup.
fn attempt(
    vm: &VmDir,
    runner: &Runner,
    opts: &ManagedOptions,
    rec: &mut RunRecord,
    notified: &mut bool,
    prepare: &mut Prepare<'_>,
    report: &mut dyn FnMut(&str),
) -> End {
    let me = std::process::id();
    rec.attempt += 1;
    rec.started = now();
    rec.runner = Some(runner.dir.clone());
    rec.hypervisor = runner.invocation.program.clone();
    rec.hypervisor_pid = None;
    rec.ready = None;
    rec.ready_after_ms = None;
    rec.helpers.clear();
    rec.interfaces.clear();
    let _ = crate::migrate::take_handover(vm.path()); // a stale note of an earlier run
    let _ = record::write(vm, rec);
    let _ = vm.write_status(&Status {
        state: VmState::Starting {
            supervisor_pid: me,
            since: rec.started,
        },
        runner: Some(runner.dir.clone()),
    });
    let mut links = Links::for_vm(opts.net.clone(), vm.name().as_str());
    let result = match vm.set_booted(&runner.dir) {
        Ok(()) => run(vm, runner, opts, rec, notified, prepare, report, &mut links),
        Err(e) => Err(e.into()),
    };
    // Teardown, on every path: interfaces from the in-memory list first, then `booted`.
    for e in links.remove_all() {
        report(&format!("warning: {}", error_chain(&e)));
    }
    if runner.adopted {
        for script in ["tap-down", "macvtap-down"] {
            if let Err(e) = adopted::script(&runner.dir, script, vm.path()) {
                report(&format!("warning: {e}"));
            }
        }
    }
    rec.interfaces.clear();
    if let Err(e) = vm.clear_booted() {
        report(&format!("warning: {}", error_chain(&e)));
    }
    match result {
        Ok(outcome) if clean_stop(&outcome) => End {
            code: 0,
            reason: "stopped on request".into(),
            requested: true,
            refused: None,
        },
        Ok(outcome) => End {
            code: outcome.exit_code(),
            // A qemu that quit after a snapshot or a migration: not "the guest powered off".
            reason: crate::migrate::take_handover(vm.path())
                .filter(|_| outcome.hypervisor_status.success() && !outcome.shutdown_requested)
                .map_or_else(|| describe(&outcome), |note| format!("the VM was {note}")),
            requested: outcome.shutdown_requested && outcome.helper_failure.is_none(),
            refused: None,
        },
        Err(e) => failed_start(&runner.invocation.program, e),
    }
}

/// The end of an attempt whose start failed, classified ([`refusal::classify`]).
fn failed_start(program: &str, e: ServiceError) -> End {
    let refused = refusal::classify(&e);
    match &e {
        ServiceError::Run(RunError::HypervisorFailed {
            status,
            stderr_tail,
            ..
        }) => {
            let mut reason = format!(
                "{program} ended with {} before the guest started",
                describe_status(*status)
            );
            if let Some(line) = refusal::lock_line(program, stderr_tail) {
                reason.push_str(&format!(": {}", line.trim()));
            }
            End {
                code: status_code(*status),
                reason,
                requested: false,
                refused,
            }
        }
        _ => End {
            code: 1,
            reason: error_chain(&e),
            requested: false,
            refused,
        },
    }
}

/// The host side a boot needs before the hypervisor: the VM directory, pre-start steps,
/// an adopted runner's set-up scripts, taps and macvtaps; the fds the hypervisor inherits.
fn prepare_host(
    vm: &VmDir,
    runner: &Runner,
    opts: &ManagedOptions,
    prepare: &mut Prepare<'_>,
    links: &mut Links,
) -> Result<Vec<PassFd>, ServiceError> {
    let inv = &runner.invocation;
    let creds = opts.run_user.as_ref();
    prepare_dir(vm.path(), creds)?;
    prepare(runner, creds).map_err(ServiceError::Prepare)?;
    if let Some(c) = creds {
        if !inv.taps.is_empty() {
            check_tun(&opts.net.dev.join("net/tun"), c)?;
        }
    }
    if runner.adopted {
        for script in ["tap-up", "macvtap-up", "pci-setup"] {
            adopted::script(&runner.dir, script, vm.path()).map_err(ServiceError::Prepare)?;
        }
    }
    for tap in &inv.taps {
        links.create_tap(tap, creds)?;
    }
    open_macvtaps(runner, links, creds)
}

/// The VM's serial console on a pty, served on `console.sock` and logged (`ConsoleMode::Pty`).
fn start_console(
    vm: &VmDir,
    opts: &ManagedOptions,
    ro: &mut RunOptions,
) -> Result<Option<ConsoleServer>, ServiceError> {
    if let ConsoleMode::Inherit = opts.console {
        return Ok(None);
    }
    let pty = console::open_pty().map_err(ServiceError::Console)?;
    let cfg = ConsoleConfig {
        log: vm.console_log_path(),
        log_limit: opts.console_log_limit,
        socket: vm.path().join("console.sock"),
        // Only root, unless the admin named a group (`<state>/console-group`).
        socket_owner: vm
            .path()
            .parent()
            .and_then(crate::trust::console_group)
            .map(|g| (0, g)),
    };
    let server = ConsoleServer::start(pty.master, &cfg).map_err(ServiceError::Console)?;
    ro.console = Console::Pty(SharedFd(std::sync::Arc::new(pty.slave)));
    Ok(Some(server))
}

#[allow(clippy::too_many_arguments)]
fn run(
    vm: &VmDir,
    runner: &Runner,
    opts: &ManagedOptions,
    rec: &mut RunRecord,
    notified: &mut bool,
    prepare: &mut Prepare<'_>,
    report: &mut dyn FnMut(&str),
    links: &mut Links,
) -> Result<RunOutcome, ServiceError> {
    let inv = &runner.invocation;
    let creds = opts.run_user.as_ref();
    let mut pass = prepare_host(vm, runner, opts, prepare, links)?;
    let state = vm.path().parent().unwrap_or(Path::new("/"));
    let forwards = crate::network::forward::start(state, vm.name().as_str(), &runner.dir)?;
    for line in forwards.iter().flat_map(|f| f.log_lines()) {
        report(&line);
    }
    let restored;
    let (inv, incoming) = match (&opts.incoming, rec.attempt) {
        (Some(i), 1) => {
            let (with, fd) = crate::migrate::incoming_invocation(inv, &runner.pci_devices, i)
                .map_err(|e| ServiceError::Prepare(error_chain(&e)))?;
            pass.extend(fd);
            restored = with;
            report(&format!("restoring from {}", i.qemu_uri()));
            (&restored, true)
        }
        _ => (inv, false),
    };
    rec.interfaces = links.names().to_vec();
    pci::bind_vfio(
        &opts.net.sysfs,
        &opts.net.dev,
        &runner.pci_devices,
        creds,
        true,
    )?;
    let _ = record::write(vm, rec);

    // `_graceful` (an adopted runner's microvm-shutdown watcher) lives for the run.
    let (mut ro, _graceful) = run_options(vm, runner, opts, inv, incoming, pass);
    let server = start_console(vm, opts, &mut ro)?;
    let me = std::process::id();
    let runner_dir = runner.dir.clone();
    // A restored guest reported READY before its snapshot: it runs once qemu does.
    let has_channel = inv.control_channel.is_some() && !incoming;
    let mut machine = machined::Registration::new(runner.adopted);
    let result = supervise::run_foreground_with(inv, &ro, |p| {
        let running = |rec: &RunRecord| Status {
            state: VmState::Running {
                supervisor_pid: me,
                hypervisor_pid: rec.hypervisor_pid,
                since: now(),
            },
            runner: Some(runner_dir.clone()),
        };
        let mut ready = |rec: &RunRecord, notified: &mut bool, report: &mut dyn FnMut(&str)| {
            // The record (its `ready` time) first: whoever sees `running` reads it next.
            let _ = record::write(vm, rec);
            let _ = vm.write_status(&running(rec));
            machine.register(&runner_dir, rec.hypervisor_pid, report);
            if !*notified {
                *notified = true;
                let _ = notify::notify("READY=1\nSTATUS=running");
            }
        };
        match p {
            Progress::HelperStarted { name, pid } => {
                rec.helpers.push(HelperRecord {
                    name: name.clone(),
                    pid: *pid as u32,
                    restarts: 0,
                });
            }
            Progress::HypervisorStarted { pid } => {
                rec.hypervisor_pid = Some(*pid as u32);
                report(&format!("{} started (pid {pid})", inv.program));
                if !has_channel && !incoming {
                    rec.ready = Some(now()); // nothing to wait for: ready as it starts
                }
                if !has_channel {
                    ready(rec, notified, report);
                }
            }
            Progress::Ready { after, .. } => {
                rec.ready = Some(now());
                rec.ready_after_ms = Some(after.as_millis() as u64);
                report(&format!("ready {:.2} s after start", after.as_secs_f64()));
                ready(rec, notified, report);
            }
            Progress::Resumed { after } => {
                rec.ready = Some(now());
                rec.ready_after_ms = Some(after.as_millis() as u64);
                report(&format!("resumed {:.2} s after start", after.as_secs_f64()));
            }
            Progress::ShutdownRequested { method } => {
                report(&format!("shutting down ({method})"));
                let _ = notify::notify("STOPPING=1");
                let _ = vm.write_status(&Status {
                    state: VmState::Stopping {
                        supervisor_pid: me,
                        since: now(),
                    },
                    runner: Some(runner_dir.clone()),
                });
            }
            Progress::HelperExited { name, status } => {
                report(&format!(
                    "helper {name} exited with {} while the VM runs; restarting it",
                    describe_status(*status)
                ));
            }
            Progress::HelperRestarted { name, pid } => {
                if let Some(h) = rec.helpers.iter_mut().find(|h| &h.name == name) {
                    h.pid = *pid as u32;
                    h.restarts += 1;
                }
                report(&format!("helper {name} restarted (pid {pid})"));
            }
            Progress::HelperFailed { error, .. } => report(&format!("{error}; stopping the VM")),
            Progress::GuestExit(n) => report(&format!("the guest command exited with {n}")),
            Progress::GuestFailed(m) => report(&format!("the guest init failed: {m}")),
            Progress::ShutdownFallback { error } => report(&format!(
                "graceful shutdown failed ({error}); sending SIGTERM"
            )),
            Progress::Killed => report("the hypervisor did not stop in time and was killed"),
            Progress::ChannelNoise(_) => {}
        }
        let _ = record::write(vm, rec);
    });
    drop(ro); // closes our copy of the pty slave: the console reader sees EOF
    machine.unregister(&runner.dir, report);
    if let Some(s) = server {
        s.finish(Duration::from_secs(2));
    }
    Ok(result?)
}

/// Creates the runner's macvtaps and opens their queues; the fds the hypervisor inherits.
fn open_macvtaps(
    runner: &Runner,
    links: &mut Links,
    creds: Option<&Credentials>,
) -> Result<Vec<PassFd>, ServiceError> {
    let mut pass = Vec::new();
    for m in &runner.macvtaps {
        let dev = links.create_macvtap(m, creds)?;
        let mut fds: Vec<_> = runner
            .invocation
            .macvtap_fds
            .iter()
            .filter(|f| f.interface == m.id)
            .collect();
        fds.sort_by_key(|f| f.queue);
        let opened = net::open_macvtap_queues(&dev, fds.len())?;
        for (f, fd) in fds.into_iter().zip(opened) {
            pass.push(PassFd {
                fd: SharedFd(std::sync::Arc::new(fd)),
                target: f.fd as i32,
            });
        }
    }
    Ok(pass)
}

/// A stop the host asked for that ended the VM in time is a clean stop, whatever the
/// guest's status (a single-command guest's command dies of the SIGTERM its init sends
/// at power-off: 143).
fn clean_stop(o: &RunOutcome) -> bool {
    o.shutdown_requested && !o.forced && o.helper_failure.is_none()
}

/// The VM directory: group of the hypervisor's user, group-writable (its sockets), and
/// sticky, so that user cannot replace what root wrote there (`current`, `status.json`).
fn prepare_dir(dir: &Path, creds: Option<&Credentials>) -> Result<(), ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(c) = creds else {
        return Ok(());
    };
    let err = |source| ServiceError::Read {
        path: dir.to_path_buf(),
        source,
    };
    std::os::unix::fs::chown(dir, None, Some(c.gid)).map_err(err)?;
    let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode() & 0o7777;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o1070)).map_err(err)
}

fn check_tun(tun: &Path, c: &Credentials) -> Result<(), ServiceError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::metadata(tun) else {
        return Ok(()); // the hypervisor reports a missing device itself
    };
    let mode = m.mode() & 0o777;
    let ok = mode & 0o006 == 0o006
        || (m.gid() == c.gid && mode & 0o060 == 0o060)
        || (m.uid() == c.uid && mode & 0o600 == 0o600);
    if ok {
        Ok(())
    } else {
        Err(ServiceError::TunAccess {
            user: c.user.clone(),
            mode,
        })
    }
}

/// Turns SIGINT and SIGTERM into stop requests on `stop` for the rest of the process's
/// life (the first stops gracefully, the second forces), from a thread of its own.
pub fn forward_signals(stop: &StopHandle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let stop = stop.clone();
    std::thread::spawn(move || {
        for _ in signals.forever() {
            stop.request();
        }
    });
    Ok(())
}
