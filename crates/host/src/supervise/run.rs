//! The supervisor's main sequence and event loop.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use microvm_runner::{Helper, Invocation};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::child::{install_hint, locate, StderrSink, Supervised};
use super::shutdown::{self, Action};
use super::{prepare, Console, Progress, RunError, RunOptions, RunOutcome};
use crate::channel::{ChannelEvent, ControlReader, GuestEvent, DEFAULT_CONNECT_TIMEOUT};

const TICK: Duration = Duration::from_millis(25);

/// qemu's messages when KVM cannot run the guest (it then pauses forever).
const KVM_FAILURE_MARKERS: &[&str] = &["KVM internal error", "kvm run failed"];

enum Event {
    Channel(ChannelEvent),
    KvmFailure(String),
    ShutdownDone(Result<Action, String>),
}

/// [`run_foreground_with`] without progress reports.
pub fn run_foreground(inv: &Invocation, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    run_foreground_with(inv, opts, |_| {})
}

/// Runs the VM described by `inv` until the hypervisor exits; see the module docs and
/// [`RunOutcome::exit_code`]. A hypervisor that exits non-zero on its own before the guest
/// reported anything is [`RunError::HypervisorFailed`], with its stderr tail.
pub fn run_foreground_with(
    inv: &Invocation,
    opts: &RunOptions,
    mut on: impl FnMut(&Progress),
) -> Result<RunOutcome, RunError> {
    let workdir = opts.workdir.as_path();
    if !workdir.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
        return Err(RunError::Workdir {
            path: workdir.to_owned(),
            source,
        });
    }
    if !inv.macvtap_fds.is_empty() {
        return Err(RunError::Unsupported {
            what: "macvtap interfaces".into(),
        });
    }
    let find = |program: &str| {
        locate(program, opts.path_var.as_deref()).ok_or_else(|| RunError::NotFound {
            program: program.to_string(),
            hint: install_hint(program),
        })
    };
    let hv_path = find(&inv.program)?;
    let helper_paths = inv
        .helpers
        .iter()
        .map(|h| find(&h.program))
        .collect::<Result<Vec<_>, _>>()?;

    prepare::run_pre_start(&inv.pre_start, workdir)?;
    prepare::write_files(inv, workdir)?;
    let sockets = prepare::created_sockets(inv, workdir);

    let mut stops = Stops::new(opts)?;
    let mut helpers = Vec::new();
    for (h, path) in inv.helpers.iter().zip(&helper_paths) {
        let child = match start_helper(h, path, opts, &mut stops) {
            Ok(c) => c,
            Err(e) => {
                stop_helpers(&mut helpers, opts.helper_grace);
                prepare::remove_sockets(&sockets);
                return Err(e);
            }
        };
        on(&Progress::HelperStarted {
            name: h.name.clone(),
            pid: child.pid,
        });
        helpers.push(child);
    }

    let (tx, rx) = mpsc::channel();
    let mut reader = match &inv.control_channel {
        Some(ch) => {
            let tx = tx.clone();
            let sink = move |e| drop(tx.send(Event::Channel(e)));
            Some(ControlReader::start(
                ch,
                workdir,
                DEFAULT_CONNECT_TIMEOUT,
                sink,
            )?)
        }
        None => None,
    };

    let mut hv = match spawn_hypervisor(inv, &hv_path, opts, tx.clone()) {
        Ok(hv) => hv,
        Err(e) => {
            drop(reader.take());
            stop_helpers(&mut helpers, opts.helper_grace);
            prepare::remove_sockets(&sockets);
            return Err(e);
        }
    };
    let spawned = Instant::now();
    on(&Progress::HypervisorStarted { pid: hv.pid });

    let mut state = State::default();
    let result = event_loop(
        inv, opts, &mut hv, &mut stops, &tx, &rx, spawned, &mut state, &mut on,
    );
    // Let the reader flush what the guest wrote before poweroff.
    if let Some(mut r) = reader.take() {
        r.stop();
    }
    while let Ok(ev) = rx.try_recv() {
        if let Event::Channel(c) = ev {
            state.channel(c, spawned, &mut on);
        }
    }
    stop_helpers(&mut helpers, opts.helper_grace);
    prepare::remove_sockets(&sockets);
    hv.finish_stderr();

    let status = result?;
    let outcome = RunOutcome {
        hypervisor_status: status,
        guest_exit: state.guest_exit,
        guest_failure: state.guest_failure,
        ready_after: state.ready_after,
        guest_init_time: state.init_time,
        shutdown_requested: state.shutdown_requested,
        forced: state.forced,
    };
    let guest_spoke = outcome.ready_after.is_some()
        || outcome.guest_exit.is_some()
        || outcome.guest_failure.is_some();
    if !status.success() && !outcome.shutdown_requested && !guest_spoke {
        return Err(RunError::HypervisorFailed {
            program: inv.program.clone(),
            status,
            stderr_tail: hv.stderr_tail(),
        });
    }
    Ok(outcome)
}

#[derive(Debug, Default)]
struct State {
    guest_exit: Option<i32>,
    guest_failure: Option<String>,
    ready_after: Option<Duration>,
    init_time: Option<(f64, f64)>,
    shutdown_requested: bool,
    forced: bool,
}

impl State {
    fn channel(&mut self, ev: ChannelEvent, spawned: Instant, on: &mut impl FnMut(&Progress)) {
        match ev {
            ChannelEvent::Connected => {}
            ChannelEvent::Guest(GuestEvent::Ready { init_start, ready }) => {
                let after = spawned.elapsed();
                self.ready_after = Some(after);
                self.init_time = Some((init_start, ready));
                on(&Progress::Ready {
                    after,
                    init_start,
                    ready,
                });
            }
            ChannelEvent::Guest(GuestEvent::Exit(n)) => {
                self.guest_exit = Some(n);
                on(&Progress::GuestExit(n));
            }
            ChannelEvent::Guest(GuestEvent::Fail(m)) => {
                on(&Progress::GuestFailed(m.clone()));
                self.guest_failure = Some(m);
            }
            ChannelEvent::Malformed(l) => on(&Progress::ChannelNoise(l)),
            ChannelEvent::Failed(m) => on(&Progress::ChannelNoise(m)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn event_loop(
    inv: &Invocation,
    opts: &RunOptions,
    hv: &mut Supervised,
    stops: &mut Stops,
    tx: &Sender<Event>,
    rx: &Receiver<Event>,
    spawned: Instant,
    state: &mut State,
    on: &mut impl FnMut(&Progress),
) -> Result<ExitStatus, RunError> {
    let mut handled = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(status) = hv.try_wait() {
            return Ok(status);
        }
        let requested = stops.total();
        if requested > handled {
            if handled == 0 {
                state.shutdown_requested = true;
                deadline = Some(Instant::now() + opts.shutdown_timeout);
                on(&Progress::ShutdownRequested {
                    method: shutdown::describe(&inv.shutdown),
                });
                let (method, dir, program, tx) = (
                    inv.shutdown.clone(),
                    opts.workdir.clone(),
                    inv.program.clone(),
                    tx.clone(),
                );
                std::thread::spawn(move || {
                    let r = shutdown::request(&method, &dir, &program);
                    let _ = tx.send(Event::ShutdownDone(r));
                });
            }
            if requested >= 2 && !state.forced {
                force(hv, state, on);
            }
            handled = requested;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) && !state.forced {
            force(hv, state, on);
        }
        if let (Some(timeout), Some(_), None, false) = (
            opts.ready_timeout,
            &inv.control_channel,
            state.ready_after,
            state.shutdown_requested,
        ) {
            if spawned.elapsed() >= timeout && state.guest_failure.is_none() {
                hv.kill();
                return Err(RunError::NotReady {
                    program: inv.program.clone(),
                    timeout,
                    stderr_tail: hv.stderr_tail(),
                });
            }
        }
        match rx.recv_timeout(TICK) {
            Ok(Event::Channel(c)) => state.channel(c, spawned, on),
            Ok(Event::KvmFailure(line)) => {
                hv.kill();
                return Err(RunError::KvmFailed {
                    program: inv.program.clone(),
                    line,
                });
            }
            Ok(Event::ShutdownDone(Ok(Action::Requested))) => {}
            Ok(Event::ShutdownDone(Ok(Action::Signal(sig)))) => hv.signal(sig),
            Ok(Event::ShutdownDone(Err(error))) => {
                on(&Progress::ShutdownFallback { error });
                hv.signal(SIGTERM);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

fn force(hv: &mut Supervised, state: &mut State, on: &mut impl FnMut(&Progress)) {
    state.forced = true;
    on(&Progress::Killed);
    hv.signal(libc::SIGKILL);
}

/// Stop requests: SIGINT/SIGTERM (when handled) plus the [`super::StopHandle`].
struct Stops {
    signals: Option<Signals>,
    received: usize,
    handle: super::StopHandle,
    base: usize,
}

impl Stops {
    fn new(opts: &RunOptions) -> Result<Self, RunError> {
        let signals = if opts.handle_signals {
            Some(
                Signals::new([SIGINT, SIGTERM]).map_err(|source| RunError::Spawn {
                    program: "signal handler".into(),
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(Stops {
            signals,
            received: 0,
            handle: opts.stop.clone(),
            base: opts.stop.count(),
        })
    }

    fn total(&mut self) -> usize {
        if let Some(s) = &mut self.signals {
            self.received += s.pending().count();
        }
        self.received + self.handle.count().saturating_sub(self.base)
    }
}

fn start_helper(
    h: &Helper,
    path: &Path,
    opts: &RunOptions,
    stops: &mut Stops,
) -> Result<Supervised, RunError> {
    let mut cmd = Command::new(path);
    cmd.arg0(&h.program)
        .args(&h.args)
        .current_dir(&opts.workdir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let mut child = Supervised::spawn(
        cmd,
        &h.program,
        true,
        StderrSink::Prefixed(h.name.clone()),
        None,
    )?;
    let Some(socket) = &h.socket else {
        return Ok(child);
    };
    let socket = opts.workdir.join(socket);
    let end = Instant::now() + opts.helper_timeout;
    loop {
        if socket.exists() {
            return Ok(child);
        }
        if let Some(status) = child.try_wait() {
            return Err(RunError::HelperExited {
                name: h.name.clone(),
                program: h.program.clone(),
                status,
                socket,
                stderr_tail: child.stderr_tail(),
            });
        }
        if Instant::now() >= end || stops.total() > 0 {
            child.terminate(opts.helper_grace);
            return Err(RunError::HelperTimeout {
                name: h.name.clone(),
                program: h.program.clone(),
                socket,
                timeout: opts.helper_timeout,
                stderr_tail: child.stderr_tail(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn_hypervisor(
    inv: &Invocation,
    path: &Path,
    opts: &RunOptions,
    tx: Sender<Event>,
) -> Result<Supervised, RunError> {
    let mut cmd = Command::new(path);
    cmd.arg0(inv.process_name.as_deref().unwrap_or(&inv.program));
    cmd.args(&inv.args).current_dir(&opts.workdir);
    cmd.envs(inv.env.iter().map(|(k, v)| (k, v)));
    let (sink, own_group) = match &opts.console {
        Console::Inherit => {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
            // SAFETY: isatty only inspects fd 0.
            let tty = unsafe { libc::isatty(0) } == 1;
            // On a terminal the hypervisor must stay in the foreground process group to
            // read the console; elsewhere its own group keeps stray signals away from it.
            (StderrSink::Plain, !tty)
        }
        Console::Log(log) => {
            let err = |source| RunError::WriteFile {
                path: log.clone(),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(err)?;
            cmd.stdin(Stdio::null())
                .stdout(file.try_clone().map_err(err)?);
            (StderrSink::File(file), true)
        }
    };
    let hook = Box::new(move |line: &str| {
        if KVM_FAILURE_MARKERS.iter().any(|m| line.contains(m)) {
            let _ = tx.send(Event::KvmFailure(line.trim().to_string()));
        }
    });
    Supervised::spawn(cmd, &inv.program, own_group, sink, Some(hook))
}

fn stop_helpers(helpers: &mut Vec<Supervised>, grace: Duration) {
    while let Some(mut h) = helpers.pop() {
        h.terminate(grace);
    }
}
