//! Helper daemons (virtiofsd, the crosvm GPU device): started before the hypervisor, each
//! waited for until its socket exists; watched while the VM runs and restarted when one
//! dies (a bounded number of times); stopped when the VM has ended.

use std::collections::VecDeque;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use microvm_runner::Helper;

use super::child::{StderrSink, Supervised};
use super::events::Stops;
use super::{Progress, RunError, RunOptions};

/// One helper and its history.
pub(super) struct Slot {
    spec: Helper,
    path: PathBuf,
    child: Supervised,
    restarts: VecDeque<Instant>,
}

/// The running helpers of one VM.
#[derive(Default)]
pub(super) struct Helpers {
    slots: Vec<Slot>,
}

impl Helpers {
    /// Starts every helper in order; on failure the ones already started are stopped.
    pub(super) fn start(
        specs: &[Helper],
        paths: &[PathBuf],
        opts: &RunOptions,
        stops: &mut Stops,
        on: &mut impl FnMut(&Progress),
    ) -> Result<Helpers, RunError> {
        let mut helpers = Helpers::default();
        for (h, path) in specs.iter().zip(paths) {
            let child = match start_one(h, path, opts, stops) {
                Ok(c) => c,
                Err(e) => {
                    helpers.stop(opts.helper_grace);
                    return Err(e);
                }
            };
            on(&Progress::HelperStarted {
                name: h.name.clone(),
                pid: child.pid,
            });
            helpers.slots.push(Slot {
                spec: h.clone(),
                path: path.clone(),
                child,
                restarts: VecDeque::new(),
            });
        }
        Ok(helpers)
    }

    /// Restarts helpers that have exited (when the options allow). Returns a failure
    /// message when one could not be restarted, or exited too often: the VM must stop.
    pub(super) fn watch(
        &mut self,
        opts: &RunOptions,
        stops: &mut Stops,
        on: &mut impl FnMut(&Progress),
    ) -> Option<String> {
        let policy = opts.restart_helpers?;
        for slot in &mut self.slots {
            let Some(status) = slot.child.try_wait() else {
                continue;
            };
            let name = slot.spec.name.clone();
            on(&Progress::HelperExited {
                name: name.clone(),
                status,
            });
            let now = Instant::now();
            while slot
                .restarts
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.interval)
            {
                slot.restarts.pop_front();
            }
            if slot.restarts.len() >= policy.burst {
                let error = format!(
                    "{name} exited {} times within {:?} (last: {status}); not restarting it",
                    slot.restarts.len() + 1,
                    policy.interval
                );
                on(&Progress::HelperFailed {
                    name,
                    error: error.clone(),
                });
                return Some(error);
            }
            slot.restarts.push_back(now);
            if let Some(s) = &slot.spec.socket {
                let _ = std::fs::remove_file(opts.workdir.join(s));
            }
            match start_one(&slot.spec, &slot.path, opts, stops) {
                Ok(child) => {
                    on(&Progress::HelperRestarted {
                        name,
                        pid: child.pid,
                    });
                    slot.child = child;
                }
                Err(e) => {
                    let error = format!("cannot restart {name}: {e}");
                    on(&Progress::HelperFailed {
                        name,
                        error: error.clone(),
                    });
                    return Some(error);
                }
            }
        }
        None
    }

    /// Stops all helpers, newest first (SIGTERM, grace, SIGKILL).
    pub(super) fn stop(&mut self, grace: Duration) {
        while let Some(mut s) = self.slots.pop() {
            s.child.terminate(grace);
        }
    }
}

/// The helper's arguments as this host can take them: a `--socket-group=G` whose group
/// does not exist here (hosts without udev have no `kvm` group) is left out with a
/// warning, rather than virtiofsd refusing to start.
fn host_args(args: &[String]) -> Vec<String> {
    args.iter()
        .filter(|a| match a.strip_prefix("--socket-group=") {
            Some(group) if !group_exists(group) => {
                eprintln!(
                    "microvm: warning: group {group} does not exist on this host; the helper's socket keeps the supervisor's group ({a} left out; `groupadd --system {group}` or `microvm host install` creates it)"
                );
                false
            }
            _ => true,
        })
        .cloned()
        .collect()
}

fn group_exists(group: &str) -> bool {
    std::fs::read_to_string("/etc/group")
        .map(|t| t.lines().any(|l| l.split(':').next() == Some(group)))
        .unwrap_or(true)
}

/// Starts one helper and waits for its socket. With [`RunOptions::credentials`], the
/// socket is then handed to that user (mode 0600: not its group) so the hypervisor can connect.
fn start_one(
    h: &Helper,
    path: &Path,
    opts: &RunOptions,
    stops: &mut Stops,
) -> Result<Supervised, RunError> {
    let mut cmd = Command::new(path);
    cmd.arg0(&h.program)
        .args(host_args(&h.args))
        .current_dir(&opts.workdir);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    super::run::apply_umask(&mut cmd, opts.umask);
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
        // lstat: a planted symlink "exists" too, and must not be followed.
        if std::fs::symlink_metadata(&socket).is_ok() {
            if let Some(c) = &opts.credentials {
                let handed = crate::trust::hand_over_socket(&socket, c.uid, c.gid, 0o600);
                if let Err(source) = handed {
                    child.terminate(opts.helper_grace);
                    return Err(RunError::PreStart {
                        step: "hand over the socket",
                        path: socket,
                        source,
                    });
                }
            }
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
