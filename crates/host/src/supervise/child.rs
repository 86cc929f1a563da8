//! Spawning and stopping supervised processes: own process group where wanted,
//! `PR_SET_PDEATHSIG(SIGTERM)` always, stderr drained on a thread into a tail buffer.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::RunError;

/// Lines of stderr kept for error messages.
const TAIL_LINES: usize = 20;

/// Where a child's stderr lines go besides the tail buffer.
pub(crate) enum StderrSink {
    /// Our stderr, each line prefixed (helpers: `[virtiofsd-home] …`).
    Prefixed(String),
    /// Our stderr as is.
    Plain,
    /// A log file.
    File(std::fs::File),
}

pub(crate) type LineHook = Box<dyn Fn(&str) + Send>;

#[derive(Debug, Clone, Default)]
pub(crate) struct Tail(Arc<Mutex<VecDeque<String>>>);

impl Tail {
    fn push(&self, line: &str) {
        if let Ok(mut t) = self.0.lock() {
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line.to_string());
        }
    }

    pub(crate) fn text(&self) -> String {
        self.0
            .lock()
            .map(|t| Vec::from(t.clone()).join("\n"))
            .unwrap_or_default()
    }
}

/// A running child we supervise.
pub(crate) struct Supervised {
    pub(crate) program: String,
    pub(crate) pid: i32,
    child: std::process::Child,
    own_group: bool,
    tail: Tail,
    drain: Option<(JoinHandle<()>, mpsc::Receiver<()>)>,
    status: Option<ExitStatus>,
}

impl std::fmt::Debug for Supervised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervised")
            .field("program", &self.program)
            .field("pid", &self.pid)
            .finish()
    }
}

/// Least privilege for a child that changes user (the hypervisor): `no_new_privs`, so
/// no setuid binary or file capability can give back what the switch from root took (with
/// the uid change the kernel empties its permitted, effective and ambient capability
/// sets; `no_new_privs` keeps them empty across every later `execve`).
pub(crate) fn least_privilege(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and makes one async-signal-safe
    // prctl(2) call on the child itself.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Supervised {
    /// Spawns `cmd` (whose stdin/stdout the caller set) with stderr piped to `sink`.
    /// `own_group`: put it in a new process group (a terminal's Ctrl-C then reaches only
    /// us, and stopping it stops all its children).
    pub(crate) fn spawn(
        mut cmd: Command,
        program: &str,
        own_group: bool,
        sink: StderrSink,
        hook: Option<LineHook>,
    ) -> Result<Self, RunError> {
        // SAFETY: getpid has no preconditions.
        let parent = unsafe { libc::getpid() };
        cmd.stderr(Stdio::piped());
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // syscalls (setpgid, prctl, getppid) on the child itself.
        unsafe {
            cmd.pre_exec(move || {
                if own_group && libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // We may have died between fork and prctl: then nobody would signal it.
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
            program: program.to_string(),
            source,
        })?;
        let tail = Tail::default();
        let drain = child.stderr.take().map(|err| {
            let tail = tail.clone();
            let (done_tx, done_rx) = mpsc::channel();
            let t = std::thread::spawn(move || {
                drain(err, &tail, sink, hook);
                let _ = done_tx.send(());
            });
            (t, done_rx)
        });
        Ok(Supervised {
            program: program.to_string(),
            pid: child.id() as i32,
            child,
            own_group,
            tail,
            drain,
            status: None,
        })
    }

    /// The last lines of its stderr (complete once it has exited and been reaped).
    pub(crate) fn stderr_tail(&mut self) -> String {
        self.finish_stderr();
        self.tail.text()
    }

    /// Once reaped, waits (up to 1 s: a grandchild may hold the pipe open) until its
    /// stderr has been drained to the sink.
    pub(crate) fn finish_stderr(&mut self) {
        if self.status.is_none() {
            return;
        }
        if let Some((thread, done)) = self.drain.take() {
            if done.recv_timeout(Duration::from_secs(1)).is_ok() {
                let _ = thread.join();
            }
        }
    }

    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Sends `sig` to the process (its whole group when it has one). Not after reaping,
    /// so the pid cannot have been reused.
    pub(crate) fn signal(&mut self, sig: i32) {
        if self.try_wait().is_some() {
            return;
        }
        let target = if self.own_group { -self.pid } else { self.pid };
        // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
        unsafe { libc::kill(target, sig) };
    }

    /// Waits up to `timeout` for it to exit.
    pub(crate) fn wait_for(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Always reaps.
    pub(crate) fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        if let Some(s) = self.wait_for(grace) {
            return s;
        }
        self.kill()
    }

    /// SIGKILL and reap.
    pub(crate) fn kill(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        match self.child.wait() {
            Ok(s) => {
                self.status = Some(s);
                s
            }
            Err(_) => *self
                .status
                .get_or_insert(ExitStatus::from_raw(libc::SIGKILL)),
        }
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            self.kill();
        }
    }
}

fn drain(
    err: std::process::ChildStderr,
    tail: &Tail,
    mut sink: StderrSink,
    hook: Option<LineHook>,
) {
    let mut reader = BufReader::new(err);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        tail.push(line);
        if let Some(h) = &hook {
            h(line);
        }
        let _ = match &mut sink {
            StderrSink::Prefixed(p) => writeln!(std::io::stderr().lock(), "[{p}] {line}"),
            StderrSink::Plain => writeln!(std::io::stderr().lock(), "{line}"),
            StderrSink::File(f) => writeln!(f, "{line}"),
        };
    }
}

/// Finds `program` on `path_var` (or checks it when it contains a slash).
pub(crate) fn locate(
    program: &str,
    path_var: Option<&std::ffi::OsStr>,
) -> Option<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_exec = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = std::path::PathBuf::from(program);
        return is_exec(&p).then_some(p);
    }
    std::env::split_paths(path_var?)
        .map(|d| d.join(program))
        .find(|p| is_exec(p))
}

/// What to install when `program` is missing.
pub(crate) fn install_hint(program: &str) -> String {
    let base = program.rsplit('/').next().unwrap_or(program);
    let pkg = match base {
        b if b.starts_with("qemu-system-") => {
            let arch = &b["qemu-system-".len()..];
            let pkg = match arch {
                "x86_64" | "i386" => "qemu-system-x86",
                "aarch64" | "arm" => "qemu-system-arm",
                _ => "qemu-system",
            };
            return format!("install {pkg}");
        }
        "virtiofsd" => return "install virtiofsd (Debian 13+) or `cargo install virtiofsd`".into(),
        "lkvm" => "kvmtool",
        "cloud-hypervisor" | "ch-remote" => "cloud-hypervisor",
        other => other,
    };
    format!("install {pkg}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hypervisor as another user: no capabilities at all, and `no_new_privs`.
    #[test]
    fn a_child_that_changes_user_has_no_capabilities_and_no_new_privs() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root (to change user)");
            return;
        }
        let mut cmd = Command::new("sleep");
        cmd.arg("30").uid(65534).gid(65534);
        least_privilege(&mut cmd);
        let mut child = cmd.spawn().expect("spawn");
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        let _ = child.kill();
        let _ = child.wait();
        let status = status.expect("status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        for caps in ["CapInh:", "CapPrm:", "CapEff:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{caps} {status}");
        }
    }
}
