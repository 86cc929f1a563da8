//! The foreground supervisor: prepares the working directory, starts the helpers and the
//! hypervisor, reads the guest's control channel, turns SIGINT/SIGTERM into a graceful
//! shutdown with a deadline, and cleans up. Synchronous: std threads and processes only.
//!
//! Processes are started with `PR_SET_PDEATHSIG(SIGTERM)`, which the kernel ties to the
//! *thread* that spawned them: call [`run_foreground`] on a thread that lives until it
//! returns (the main thread in the CLI).

mod child;
mod events;
mod helpers;
mod prepare;
mod run;
mod shutdown;
mod stdio;
#[cfg(test)]
mod tests;
mod user_steps;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use prepare::{remove_created_sockets, remove_sockets_at};
pub use run::{run_foreground, run_foreground_with};
pub use shutdown::{request as request_shutdown, Action as ShutdownAction};

/// Where the hypervisor's console (stdout) and stderr go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Console {
    /// stdin/stdout inherited (the serial console on the terminal); stderr passed through.
    #[default]
    Inherit,
    /// stdin from /dev/null; stdout and stderr appended to this file.
    Log(PathBuf),
    /// stdin and stdout on this terminal (the slave side of a pty whose master the caller
    /// serves, see [`crate::console`]); stderr lines go to our stderr.
    Pty(SharedFd),
}

/// A file descriptor shared between options and the children they start.
#[derive(Debug, Clone)]
pub struct SharedFd(pub Arc<std::os::fd::OwnedFd>);

impl PartialEq for SharedFd {
    fn eq(&self, other: &Self) -> bool {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd() == other.0.as_raw_fd()
    }
}

impl Eq for SharedFd {}

/// An open file the hypervisor inherits at a fixed descriptor number (macvtap queues,
/// inventory §2.0: fd = 3 + iface*queues + queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassFd {
    pub fd: SharedFd,
    pub target: i32,
}

/// How [`run_foreground`] runs a VM.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Working directory: relative sockets, files and volumes resolve here.
    pub workdir: PathBuf,
    pub console: Console,
    /// After a graceful shutdown request, how long before SIGKILL (the original's
    /// `TimeoutSec`).
    pub shutdown_timeout: Duration,
    /// How long each helper may take to create its socket.
    pub helper_timeout: Duration,
    /// How long helpers get between SIGTERM and SIGKILL when the VM is gone.
    pub helper_grace: Duration,
    /// With a control channel: how long after spawn the guest may take to report
    /// `READY` before the VM is stopped and [`RunError::NotReady`] returned. `None`
    /// waits forever.
    pub ready_timeout: Option<Duration>,
    /// Handle SIGINT and SIGTERM (the CLI); tests and embedders use a [`StopHandle`].
    /// While running, these signals are consumed by the supervisor; afterwards their
    /// handlers stay installed but do nothing (signal-hook cannot restore the default),
    /// so the CLI should exit soon after [`run_foreground`] returns.
    pub handle_signals: bool,
    /// Requests a stop from another thread, like a signal would.
    pub stop: StopHandle,
    /// The search path for programs (defaults to `$PATH`).
    pub path_var: Option<std::ffi::OsString>,
    /// Run the hypervisor as this user (uid, primary gid, no supplementary groups).
    /// Helpers keep our credentials; their sockets are handed to this user (0660).
    pub credentials: Option<crate::privilege::Credentials>,
    /// The umask of the hypervisor and the helpers (their sockets), e.g. `0o007`.
    pub umask: Option<u32>,
    /// Descriptors the hypervisor inherits at fixed numbers (macvtap queues).
    pub pass_fds: Vec<PassFd>,
    /// Restart a helper that exits while the hypervisor runs (see [`HelperRestarts`]).
    pub restart_helpers: Option<HelperRestarts>,
    /// An incoming qemu's QMP socket: [`Progress::Resumed`] once it runs the guest it
    /// received (a restored guest reported READY before it was saved).
    pub resume_watch: Option<PathBuf>,
}

/// Restart policy for helpers (virtiofsd) that die while the VM runs: at most `burst`
/// restarts within `interval`; one more failure stops the VM (exit code
/// [`EXIT_HELPER_FAILED`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HelperRestarts {
    pub burst: usize,
    pub interval: Duration,
}

impl Default for HelperRestarts {
    fn default() -> Self {
        HelperRestarts {
            burst: 5,
            interval: Duration::from_secs(60),
        }
    }
}

impl RunOptions {
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        RunOptions {
            workdir: workdir.into(),
            console: Console::Inherit,
            shutdown_timeout: Duration::from_secs(30),
            helper_timeout: Duration::from_secs(10),
            helper_grace: Duration::from_secs(2),
            ready_timeout: Some(Duration::from_secs(120)),
            handle_signals: true,
            stop: StopHandle::default(),
            path_var: std::env::var_os("PATH"),
            credentials: None,
            umask: None,
            pass_fds: Vec::new(),
            restart_helpers: None,
            resume_watch: None,
        }
    }
}

/// Asks a running [`run_foreground`] to stop: the first call shuts the guest down
/// gracefully, the second kills the hypervisor at once.
#[derive(Debug, Clone, Default)]
pub struct StopHandle(Arc<AtomicUsize>);

impl StopHandle {
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// How many stops were requested so far.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

/// Progress reported while the VM runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    HelperStarted {
        name: String,
        pid: i32,
    },
    HypervisorStarted {
        pid: i32,
    },
    /// The guest reported READY `after` spawn (host clock); guest uptimes in seconds.
    Ready {
        after: Duration,
        init_start: f64,
        ready: f64,
    },
    /// An incoming hypervisor ([`RunOptions::resume_watch`]) runs the guest, `after` spawn.
    Resumed {
        after: Duration,
    },
    GuestExit(i32),
    GuestFailed(String),
    /// A line on the control channel that is not part of the protocol.
    ChannelNoise(String),
    ShutdownRequested {
        method: String,
    },
    /// The graceful request failed; the hypervisor gets SIGTERM instead.
    ShutdownFallback {
        error: String,
    },
    /// The deadline passed or a second stop came: SIGKILL.
    Killed,
    /// A helper exited while the hypervisor ran.
    HelperExited {
        name: String,
        status: ExitStatus,
    },
    /// … and was started again.
    HelperRestarted {
        name: String,
        pid: i32,
    },
    /// … and could not be (or exited too often): the VM is being stopped.
    HelperFailed {
        name: String,
        error: String,
    },
}

/// How the VM ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub hypervisor_status: ExitStatus,
    /// `EXIT <n>` from the guest init: the single command's status.
    pub guest_exit: Option<i32>,
    /// `FAIL <message>` from the guest init.
    pub guest_failure: Option<String>,
    /// Host time from spawning the hypervisor to `READY`.
    pub ready_after: Option<Duration>,
    /// Guest uptimes (init start, ready) from the `READY` line.
    pub guest_init_time: Option<(f64, f64)>,
    /// A stop was requested (signal or [`StopHandle`]).
    pub shutdown_requested: bool,
    /// The hypervisor had to be killed (deadline passed or second stop).
    pub forced: bool,
    /// A helper died and could not be restarted; the supervisor stopped the VM.
    pub helper_failure: Option<String>,
}

/// Exit code when the guest init reported `FAIL`.
pub const EXIT_GUEST_INIT_FAILED: i32 = 121;
/// Exit code when the hypervisor was killed after the shutdown deadline or a second stop.
pub const EXIT_FORCED: i32 = 122;
/// Exit code when a helper (virtiofsd) died and could not be restarted, so the VM was stopped.
pub const EXIT_HELPER_FAILED: i32 = 123;

impl RunOutcome {
    /// The exit code of `microvm run`, first match wins:
    /// 1. the guest reported `EXIT n`: `n` (the command's status, clamped to 0..=255);
    /// 2. the guest init reported `FAIL`: [`EXIT_GUEST_INIT_FAILED`] (121);
    /// 3. a helper could not be restarted and the VM was stopped: [`EXIT_HELPER_FAILED`] (123);
    /// 4. the hypervisor was killed after a stop request: [`EXIT_FORCED`] (122);
    /// 5. a requested stop ended the hypervisor in time: 0, whatever its status (firecracker
    ///    and kvmtool die of the signal that stops them);
    /// 6. otherwise the hypervisor's status: its exit code (0 after a guest poweroff),
    ///    or 128 + signal number.
    pub fn exit_code(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        if let Some(n) = self.guest_exit {
            return n.clamp(0, 255);
        }
        if self.guest_failure.is_some() {
            return EXIT_GUEST_INIT_FAILED;
        }
        if self.helper_failure.is_some() {
            return EXIT_HELPER_FAILED;
        }
        if self.forced {
            return EXIT_FORCED;
        }
        if self.shutdown_requested {
            return 0;
        }
        match (
            self.hypervisor_status.code(),
            self.hypervisor_status.signal(),
        ) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("working directory {}", path.display())]
    Workdir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {step} {}", path.display())]
    PreStart {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    WriteFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{program} not found on PATH; {hint}")]
    NotFound { program: String, hint: String },
    #[error("this supervisor does not set up {what} yet")]
    Unsupported { what: String },
    #[error("cannot start {program}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("helper {name} ({program}) exited with {status} before creating {}{}", socket.display(), tail_suffix(stderr_tail))]
    HelperExited {
        name: String,
        program: String,
        status: ExitStatus,
        socket: PathBuf,
        stderr_tail: String,
    },
    #[error("helper {name} ({program}) did not create {} within {timeout:?}{}", socket.display(), tail_suffix(stderr_tail))]
    HelperTimeout {
        name: String,
        program: String,
        socket: PathBuf,
        timeout: Duration,
        stderr_tail: String,
    },
    #[error(
        "{program} exited with {status} before the guest started{}",
        tail_suffix(stderr_tail)
    )]
    HypervisorFailed {
        program: String,
        status: ExitStatus,
        stderr_tail: String,
    },
    #[error("{program} hit a KVM failure ({line}): KVM cannot run this guest on this host; run it under TCG (kvm = \"disabled\")")]
    KvmFailed { program: String, line: String },
    #[error(
        "the guest did not report READY within {timeout:?}; {program} was stopped{}",
        tail_suffix(stderr_tail)
    )]
    NotReady {
        program: String,
        timeout: Duration,
        stderr_tail: String,
    },
    #[error("cannot install the SIGINT/SIGTERM handlers")]
    Signals(#[source] std::io::Error),
    #[error("control channel")]
    Channel(#[from] crate::channel::ChannelError),
}

fn tail_suffix(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; its stderr ended with:\n{}", tail.trim_end())
    }
}
