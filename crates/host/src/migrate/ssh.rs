//! Live migration over ssh, the way libvirt's tunnelled migration reaches the target's
//! daemon: `migrate NAME --to ssh://[USER@]HOST[:PORT]` runs the target's
//! `microvm start NAME --incoming stdin` through OpenSSH (key authentication, the
//! host key checked), and streams the guest through that same connection. The target's
//! qemu listens only on a unix socket in its VM directory ([`super::INCOMING_SOCKET`]);
//! nothing listens on the network but sshd.
//!
//! The order of a move: the remote start prints `receiving NAME` once its qemu waits;
//! the source streams; qemu pauses the guest for the switch-over and completes; the
//! remote waits until the guest runs there and exits 0; only then is the source qemu
//! quit. When the remote fails at any step, the source guest resumes (`cont`), so a VM
//! is never lost and never runs twice.

use std::ffi::OsString;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{MigrateError, MigrationStats};

/// How long the target may take to start its incoming qemu, and after the stream to run
/// the guest.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(120);

/// `ssh://[USER@]HOST[:PORT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
}

impl std::str::FromStr for SshTarget {
    type Err = MigrateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MigrateError::BadTarget(s.to_string());
        let rest = s.strip_prefix("ssh://").ok_or_else(bad)?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (user, hostport) = match rest.split_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (host, port) = match hostport.strip_prefix('[') {
            // [v6]:port or [v6]
            Some(v6) => {
                let (h, after) = v6.split_once(']').ok_or_else(bad)?;
                match after.strip_prefix(':') {
                    Some(p) => (h, Some(p)),
                    None if after.is_empty() => (h, None),
                    None => return Err(bad()),
                }
            }
            None => match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            },
        };
        let word_ok = |w: &str, extra: &str| {
            !w.is_empty()
                && w.len() <= 253
                && !w.starts_with('-')
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
        };
        if !word_ok(host, ".-_:") || user.is_some_and(|u| !word_ok(u, ".-_")) {
            return Err(bad());
        }
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            None => None,
        };
        Ok(SshTarget {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ssh://")?;
        if let Some(u) = &self.user {
            write!(f, "{u}@")?;
        }
        match (self.host.contains(':'), self.port) {
            (true, Some(p)) => write!(f, "[{}]:{p}", self.host),
            (true, None) => write!(f, "[{}]", self.host),
            (false, Some(p)) => write!(f, "{}:{p}", self.host),
            (false, None) => write!(f, "{}", self.host),
        }
    }
}

/// The target host and how microvm is run there.
#[derive(Debug, Clone)]
pub struct Remote {
    pub target: SshTarget,
    /// An ssh client configuration (`ssh -F`): keys, known hosts, host aliases.
    pub config: Option<PathBuf>,
    /// The `microvm` command on the target.
    pub binary: String,
    /// The target's state directory.
    pub state_dir: PathBuf,
}

impl Remote {
    /// The argv of `ssh`: batch mode (no password prompts), then the remote command,
    /// each word quoted for the remote shell. An incoming VM runs under microvm's own
    /// supervisor (a systemd unit cannot receive one), also on a target where systemd is
    /// PID 1: `env MICROVM_SERVICE_MANAGER=own`.
    pub fn argv(&self, vm: &str) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec!["ssh".into(), "-o".into(), "BatchMode=yes".into()];
        if let Some(c) = &self.config {
            argv.extend(["-F".into(), c.clone().into_os_string()]);
        }
        if let Some(p) = self.target.port {
            argv.extend(["-p".into(), p.to_string().into()]);
        }
        if let Some(u) = &self.target.user {
            argv.extend(["-l".into(), u.into()]);
        }
        argv.push("--".into());
        argv.push(self.target.host.clone().into());
        let state = self.state_dir.to_string_lossy();
        let words = [
            "env",
            "MICROVM_SERVICE_MANAGER=own",
            &*self.binary,
            "--state-dir",
            &state,
            "start",
            vm,
            "--incoming",
            "stdin",
        ];
        argv.push(
            words
                .iter()
                .map(|w| quote(w))
                .collect::<Vec<_>>()
                .join(" ")
                .into(),
        );
        argv
    }
}

/// `word` in POSIX single quotes (ssh hands the remote command to the user's shell).
pub fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// Moves the running VM (directory `vmdir`, QMP at `qmp_socket`) to `remote`; see the
/// module docs. `socket_group` as for [`super::snapshot`].
pub fn migrate(
    vmdir: &Path,
    qmp_socket: &Path,
    vm: &str,
    remote: &Remote,
    socket_group: Option<u32>,
    progress: impl FnMut(&Value),
) -> Result<MigrationStats, MigrateError> {
    let target = remote.target.to_string();
    let failed = |why: String| MigrateError::Remote {
        target: target.clone(),
        why,
    };
    let argv = remote.argv(vm);
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("cannot run ssh: {e}")))?;
    let lines = read_lines(&mut child);
    let first = lines.recv_timeout(REMOTE_TIMEOUT);
    if !matches!(&first, Ok(l) if l.trim() == format!("receiving {vm}")) {
        let why = ended(&mut child, Duration::from_secs(5));
        return Err(failed(format!("its incoming start failed: {why}")));
    }
    let stdin = child.stdin.take().expect("piped stdin");
    let streamed = super::stream_through_socket(vmdir, qmp_socket, socket_group, stdin, progress);
    let (mut qmp, stats, stdin) = match streamed {
        Ok(s) => s,
        Err(e) => {
            // qemu resumes the guest itself after a failed stream; the target says why
            // it stopped reading (on our stderr) and ends, or is ended.
            let why = ended(&mut child, Duration::from_secs(10));
            return Err(failed(format!("{e}; {why}")));
        }
    };
    drop(stdin); // end of stream: the target loads it and resumes the guest
    let why = ended(&mut child, REMOTE_TIMEOUT);
    if why.is_empty() {
        super::note_handover(vmdir, &format!("migrated to {target}"));
        qmp.quit()?;
        return Ok(stats);
    }
    // The target did not confirm: the guest goes on here.
    qmp.execute("cont", None)?;
    Err(failed(why))
}

/// The child's stdout, line by line, from a thread of its own.
fn read_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    rx
}

/// Waits up to `timeout` for ssh to end: "" when it exited 0, else why not (it is killed
/// at the deadline).
fn ended(child: &mut Child, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return String::new(),
            Ok(Some(s)) => return format!("ssh ended with {s}"),
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return format!("no answer within {} s", timeout.as_secs());
            }
            Err(e) => return format!("waiting for ssh: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_targets_parse_and_print() {
        let t: SshTarget = "ssh://root@node2:2222".parse().expect("target");
        assert_eq!(t.user.as_deref(), Some("root"));
        assert_eq!((t.host.as_str(), t.port), ("node2", Some(2222)));
        assert_eq!(t.to_string(), "ssh://root@node2:2222");
        let t: SshTarget = "ssh://[fd00::2]:22".parse().expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("fd00::2", Some(22)));
        assert_eq!(t.to_string(), "ssh://[fd00::2]:22");
        assert_eq!(
            "ssh://n3".parse::<SshTarget>().expect("bare").to_string(),
            "ssh://n3"
        );
        for bad in [
            "n3",
            "ssh://",
            "ssh://-oProxyCommand=x",
            "ssh://a b",
            "ssh://h:0",
            "ssh://h:x",
            "ssh://u;rm@h",
            "ssh://[::1]x",
            "tcp://h",
        ] {
            assert!(bad.parse::<SshTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_remote_command_is_quoted_argv() {
        let r = Remote {
            target: "ssh://root@n2:2200".parse().expect("target"),
            config: Some("/etc/microvm/ssh_config".into()),
            binary: "microvm".into(),
            state_dir: "/var/lib/my vms".into(),
        };
        let argv: Vec<String> = r
            .argv("vm1")
            .into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect();
        assert_eq!(
            argv,
            [
                "ssh",
                "-o",
                "BatchMode=yes",
                "-F",
                "/etc/microvm/ssh_config",
                "-p",
                "2200",
                "-l",
                "root",
                "--",
                "n2",
                "'env' 'MICROVM_SERVICE_MANAGER=own' 'microvm' '--state-dir' '/var/lib/my vms' 'start' 'vm1' '--incoming' 'stdin'"
            ]
        );
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
