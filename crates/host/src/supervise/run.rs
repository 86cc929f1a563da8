//! The supervisor's main sequence and event loop.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

use microvm_runner::{Helper, Invocation};

use super::child::{install_hint, locate, StderrSink, Supervised};
use super::events::{event_loop, Event, State, Stops};
use super::{prepare, Console, Progress, RunError, RunOptions, RunOutcome};
use crate::channel::{ControlReader, DEFAULT_CONNECT_TIMEOUT};

/// qemu's messages when KVM cannot run the guest (it then pauses forever).
const KVM_FAILURE_MARKERS: &[&str] = &["KVM internal error", "kvm run failed"];

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
