//! The supervisor's main sequence and event loop.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Instant;

use microvm_runner::{ControlChannel, Invocation};

use std::os::fd::{AsRawFd, OwnedFd};

use super::child::{install_hint, locate, Supervised};
use super::events::{event_loop, Event, State, Stops};
use super::helpers::Helpers;
use super::user_steps;
use super::{prepare, stdio, PassFd, Progress, RunError, RunOptions, RunOutcome};
use crate::channel::{ControlReader, DEFAULT_CONNECT_TIMEOUT};
use crate::console_channel::new_nonce;

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
    // The console channel's nonce: fresh for this boot, on the kernel command line.
    let nonce = match &inv.control_channel {
        Some(ControlChannel::Console { .. }) => {
            Some(new_nonce().map_err(|source| RunError::Spawn {
                program: "the console channel's nonce (/dev/urandom)".into(),
                source,
            })?)
        }
        _ => None,
    };
    let with_nonce = nonce.as_deref().map(|n| inv.with_nonce(n));
    let inv = with_nonce.as_ref().unwrap_or(inv);
    let workdir = opts.workdir.as_path();
    check_inputs(inv, opts)?;
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

    let extra_args = prepare::run_pre_start(&inv.pre_start, workdir, opts.credentials.as_ref())?;
    let with_extra;
    let inv = if extra_args.is_empty() {
        inv
    } else {
        with_extra = user_steps::with_args(inv, extra_args);
        &with_extra
    };
    prepare::write_files(inv, workdir)?;
    let sockets = prepare::created_sockets(inv, workdir);

    let mut stops = Stops::new(opts)?;
    let mut helpers = match Helpers::start(&inv.helpers, &helper_paths, opts, &mut stops, &mut on) {
        Ok(h) => h,
        Err(e) => {
            prepare::remove_sockets(&sockets);
            return Err(e);
        }
    };

    let (tx, rx) = mpsc::channel();
    let mut reader = match &inv.control_channel {
        Some(ControlChannel::Console { .. }) | None => None,
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
    };

    let mut hv = match spawn_hypervisor(inv, &hv_path, opts, nonce.as_deref(), tx.clone()) {
        Ok(hv) => hv,
        Err(e) => {
            drop(reader.take());
            helpers.stop(opts.helper_grace);
            prepare::remove_sockets(&sockets);
            return Err(e);
        }
    };
    let spawned = Instant::now();
    on(&Progress::HypervisorStarted { pid: hv.pid });
    let resume_watch = watch_resumed(opts, &tx);

    let mut state = State::default();
    let result = event_loop(
        inv,
        opts,
        &mut hv,
        &mut helpers,
        &mut stops,
        &tx,
        &rx,
        spawned,
        &mut state,
        &mut on,
    );
    if let Some(stop) = resume_watch {
        stop.store(true, Ordering::SeqCst);
    }
    // Let the reader and the console flush what the guest wrote before poweroff.
    if let Some(mut r) = reader.take() {
        r.stop();
    }
    hv.console.finish();
    while let Ok(ev) = rx.try_recv() {
        if let Event::Channel(c) = ev {
            state.channel(c, spawned, &mut on);
        }
    }
    helpers.stop(opts.helper_grace);
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
        helper_failure: state.helper_failure,
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

/// What must hold before anything starts: the work directory exists, and every macvtap
/// queue the plan names has its opened descriptor to pass.
fn check_inputs(inv: &Invocation, opts: &RunOptions) -> Result<(), RunError> {
    let workdir = opts.workdir.as_path();
    if !workdir.is_dir() {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
        return Err(RunError::Workdir {
            path: workdir.to_owned(),
            source,
        });
    }
    let missing: Vec<String> = inv
        .macvtap_fds
        .iter()
        .filter(|m| !opts.pass_fds.iter().any(|p| p.target == m.fd as i32))
        .map(|m| format!("{} queue {} (fd {})", m.interface, m.queue, m.fd))
        .collect();
    if !missing.is_empty() {
        return Err(RunError::Unsupported {
            what: format!(
                "macvtap interfaces without their opened queues ({}); managed VMs get them from `microvm start`",
                missing.join(", ")
            ),
        });
    }
    Ok(())
}

/// For a restored or received guest: a thread that reports [`Event::Resumed`] once qemu
/// runs it; the flag returned stops the thread.
fn watch_resumed(opts: &RunOptions, tx: &Sender<Event>) -> Option<Arc<AtomicBool>> {
    opts.resume_watch.as_ref().map(|qmp| {
        let (qmp, tx, stop) = (qmp.clone(), tx.clone(), Arc::new(AtomicBool::new(false)));
        let flag = stop.clone();
        std::thread::spawn(move || {
            if crate::migrate::wait_resumed(&qmp, &flag) {
                let _ = tx.send(Event::Resumed);
            }
        });
        stop
    })
}

fn spawn_hypervisor(
    inv: &Invocation,
    path: &Path,
    opts: &RunOptions,
    nonce: Option<&str>,
    tx: Sender<Event>,
) -> Result<Hypervisor, RunError> {
    let mut cmd = Command::new(path);
    cmd.arg0(inv.process_name.as_deref().unwrap_or(&inv.program));
    cmd.args(&inv.args).current_dir(&opts.workdir);
    cmd.envs(inv.env.iter().map(|(k, v)| (k, v)));
    if let Some(c) = &opts.credentials {
        cmd.uid(c.uid).gid(c.gid);
        super::child::least_privilege(&mut cmd);
    }
    apply_umask(&mut cmd, opts.umask);
    let _held = pass_fds(&mut cmd, &opts.pass_fds)?;
    let (sink, own_group, console) = stdio::route(&mut cmd, opts, nonce, &tx)?;
    let hook = Box::new(move |line: &str| {
        if KVM_FAILURE_MARKERS.iter().any(|m| line.contains(m)) {
            let _ = tx.send(Event::KvmFailure(line.trim().to_string()));
        }
    });
    let child = Supervised::spawn(cmd, &inv.program, own_group, sink, Some(hook))?;
    Ok(Hypervisor { child, console })
}

/// The hypervisor process and its console.
struct Hypervisor {
    child: Supervised,
    console: stdio::ConsoleRoute,
}

impl std::ops::Deref for Hypervisor {
    type Target = Supervised;
    fn deref(&self) -> &Supervised {
        &self.child
    }
}

impl std::ops::DerefMut for Hypervisor {
    fn deref_mut(&mut self) -> &mut Supervised {
        &mut self.child
    }
}

/// Sets the child's umask between fork and exec.
pub(super) fn apply_umask(cmd: &mut Command, umask: Option<u32>) {
    if let Some(mask) = umask {
        // SAFETY: umask is async-signal-safe and only affects the child.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            });
        }
    }
}

/// Makes the child inherit `fds` at their target numbers. Each fd is first duplicated
/// (close-on-exec) above every target, so that no dup2 in the child overwrites a source
/// that another target still needs; dup2 then clears close-on-exec on the target.
fn pass_fds(cmd: &mut Command, fds: &[PassFd]) -> Result<Vec<OwnedFd>, RunError> {
    let floor = fds.iter().map(|p| p.target).max().unwrap_or(0) + 1;
    let mut held = Vec::new();
    let mut pairs = Vec::new();
    for p in fds {
        let high = rustix::io::fcntl_dupfd_cloexec(&*p.fd.0, floor.max(64)).map_err(|e| {
            RunError::Spawn {
                program: format!("fd {} for the hypervisor", p.target),
                source: e.into(),
            }
        })?;
        pairs.push((high.as_raw_fd(), p.target));
        held.push(high);
    }
    if !pairs.is_empty() {
        // SAFETY: dup2 is async-signal-safe; the sources stay open in the parent until
        // after spawn (`held`), so they are valid in the child.
        unsafe {
            cmd.pre_exec(move || {
                for (src, dst) in &pairs {
                    if libc::dup2(*src, *dst) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    Ok(held)
}
