//! Snapshots and live migration of qemu VMs over QMP (docs/cluster.md).
//!
//! Outgoing: `migrate` to a URI, then `query-migrate` until the stream is done; the source
//! qemu is then left paused (`postmigrate`) and told to `quit`, so a VM never runs twice.
//! A snapshot streams over a unix socket in the VM directory that microvm (root) listens
//! on and copies into the snapshot file, so the hypervisor's user never opens a host path.
//! Incoming: the supervisor starts qemu with `-incoming`: `fd:N` for a snapshot file that
//! the supervisor opened ([`INCOMING_FD`]), `tcp:ADDR:PORT` for a live migration, or a unix
//! socket in the VM directory that `start --incoming stdin` feeds (migration over ssh,
//! [`ssh`]).

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microvm_runner::{HelperKind, Invocation};
use microvm_spec::types::Hypervisor;
use serde::Serialize;
use serde_json::{json, Value};

use crate::qmp::{QmpClient, QmpError, DEFAULT_TIMEOUT};

pub mod ssh;

/// The descriptor number a restored qemu reads its snapshot from (`-incoming fd:100`):
/// above every macvtap queue (3 + iface × queues + queue).
pub const INCOMING_FD: i32 = 100;
/// The socket a snapshot streams through, relative to the VM directory (qemu's cwd).
pub const SNAPSHOT_SOCKET: &str = "snapshot.sock";
/// The socket an incoming qemu listens on for `--incoming stdin`, relative to the VM
/// directory (qemu creates it as its own user, umask 077: only that user and root connect).
pub const INCOMING_SOCKET: &str = "incoming.sock";
/// The note a snapshot or migration leaves in the VM directory before it quits the source
/// qemu, so that its supervisor says how the VM ended.
pub const HANDOVER_NOTE: &str = "handover";
/// The longest a migration stream may take before it is cancelled.
pub const MIGRATE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{hypervisor} VMs cannot be snapshotted or migrated by microvm (qemu only); see docs/cluster.md")]
    Hypervisor { hypervisor: String },
    #[error("{what} cannot migrate: {why}")]
    Device { what: String, why: String },
    #[error("{0:?} is not an incoming source: use file:PATH, tcp:ADDR:PORT or stdin")]
    BadIncoming(String),
    #[error("{0:?} is not a migration target: use ssh://[USER@]HOST[:PORT], or ADDR:PORT where the target was started with `--incoming tcp:ADDR:PORT`")]
    BadTarget(String),
    #[error("the target {target} did not take the VM over ({why}); the VM keeps running here")]
    Remote { target: String, why: String },
    #[error(transparent)]
    Qmp(#[from] QmpError),
    #[error("the migration {status}: {desc}")]
    Failed { status: String, desc: String },
    #[error("the migration did not finish within {0:?} and was cancelled")]
    Timeout(Duration),
    #[error("{step} {}", path.display())]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where an incoming VM's state comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A snapshot file written by [`snapshot`].
    File(PathBuf),
    /// A live migration: qemu listens on `ADDR:PORT`.
    Tcp(String),
    /// A live migration that `start --incoming stdin` copies from its standard input into
    /// qemu's [`INCOMING_SOCKET`] (the far end of `migrate --to ssh://…`).
    Stdin,
}

impl std::str::FromStr for Incoming {
    type Err = MigrateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || MigrateError::BadIncoming(s.to_string());
        if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() || p.len() > 4096 {
                return Err(bad());
            }
            return Ok(Incoming::File(PathBuf::from(p)));
        }
        if let Some(a) = s.strip_prefix("tcp:") {
            return address(a).map(Incoming::Tcp).map_err(|_| bad());
        }
        if s == "stdin" {
            return Ok(Incoming::Stdin);
        }
        Err(bad())
    }
}

impl Incoming {
    /// The value of qemu's `-incoming`.
    pub fn qemu_uri(&self) -> String {
        match self {
            Incoming::File(_) => format!("fd:{INCOMING_FD}"),
            Incoming::Tcp(a) => format!("tcp:{a}"),
            Incoming::Stdin => format!("unix:{INCOMING_SOCKET}"),
        }
    }

    /// The argument of `microvm supervise --incoming` (and of `start --incoming`).
    pub fn arg(&self) -> String {
        match self {
            Incoming::File(p) => format!("file:{}", p.display()),
            Incoming::Tcp(a) => format!("tcp:{a}"),
            Incoming::Stdin => "stdin".into(),
        }
    }
}

/// Leaves `what` (e.g. "migrated to ssh://node2") for the supervisor of the VM in `vmdir`,
/// which reports it instead of "the guest powered off" when its qemu quits.
pub fn note_handover(vmdir: &Path, what: &str) {
    let _ = crate::state::write_atomic(&vmdir.join(HANDOVER_NOTE), what.as_bytes());
}

/// The note [`note_handover`] left (root's own, at most 1 KiB), removed once read.
pub fn take_handover(vmdir: &Path) -> Option<String> {
    let path = vmdir.join(HANDOVER_NOTE);
    let text = crate::trust::read_owned(&path, 1024).ok().flatten();
    let _ = std::fs::remove_file(&path);
    text.map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty())
}

/// Checks `ADDR:PORT` (an IPv4/IPv6 literal or a host name, and a port).
pub fn address(s: &str) -> Result<String, MigrateError> {
    let bad = || MigrateError::BadTarget(s.to_string());
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(s.to_string()),
        _ => Err(bad()),
    }
}

/// Refuses what cannot migrate: other hypervisors, vfio devices, vhost-user devices
/// (virtiofs: qemu blocks migration of vhost-user-fs, its state lives in virtiofsd).
pub fn check_migratable(inv: &Invocation, pci_devices: &[String]) -> Result<(), MigrateError> {
    if inv.hypervisor != Hypervisor::Qemu {
        return Err(MigrateError::Hypervisor {
            hypervisor: inv.program.clone(),
        });
    }
    if let Some(dev) = pci_devices.first() {
        return Err(MigrateError::Device {
            what: format!("the vfio device {dev}"),
            why: "a passed-through PCI device's state lives in the hardware".into(),
        });
    }
    if let Some(h) = inv.helpers.iter().find_map(|h| match &h.kind {
        HelperKind::Virtiofsd { tag } => Some(tag),
        _ => None,
    }) {
        return Err(MigrateError::Device {
            what: format!("the virtiofs share {tag}", tag = h),
            why: "qemu blocks migration of vhost-user-fs devices (their state lives in virtiofsd); use a volume on shared storage".into(),
        });
    }
    if inv.args.iter().any(|a| a.contains("vhost-user")) {
        return Err(MigrateError::Device {
            what: "a vhost-user device".into(),
            why: "its back-end cannot hand its state over".into(),
        });
    }
    Ok(())
}

/// What `query-migrate` said when the stream ended.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MigrationStats {
    pub total_ms: u64,
    /// How long the guest was paused at the end (qemu's `downtime`).
    pub downtime_ms: u64,
    pub transferred_bytes: u64,
    pub ram_total_bytes: u64,
}

/// Streams the VM to `uri`, calling `progress` with each `query-migrate` reply, and
/// quits the (now paused) source qemu once the stream completed, after `before_quit`.
pub fn migrate(
    qmp_socket: &Path,
    uri: &str,
    timeout: Duration,
    progress: impl FnMut(&Value),
    before_quit: impl FnOnce(),
) -> Result<MigrationStats, MigrateError> {
    let (mut qmp, stats) = stream(qmp_socket, uri, timeout, progress)?;
    before_quit();
    qmp.quit()?;
    Ok(stats)
}

/// Streams the VM to `uri` until qemu says the stream is complete; the source qemu is
/// then paused (`postmigrate`): the caller quits it, or resumes it with `cont` when the
/// target did not take over. A failed or cancelled stream leaves the guest running.
pub fn stream(
    qmp_socket: &Path,
    uri: &str,
    timeout: Duration,
    mut progress: impl FnMut(&Value),
) -> Result<(QmpClient, MigrationStats), MigrateError> {
    let mut qmp = QmpClient::connect(qmp_socket, DEFAULT_TIMEOUT)?;
    qmp.execute("migrate", Some(json!({ "uri": uri })))?;
    let end = Instant::now() + timeout;
    loop {
        let info = qmp.execute("query-migrate", None)?;
        progress(&info);
        let status = info["status"].as_str().unwrap_or("").to_string();
        match status.as_str() {
            "completed" => return Ok((qmp, stats(&info))),
            "failed" | "cancelled" => {
                let desc = info["error-desc"].as_str().unwrap_or("no reason given");
                return Err(MigrateError::Failed {
                    status,
                    desc: desc.to_string(),
                });
            }
            _ => {}
        }
        if Instant::now() >= end {
            let _ = qmp.execute("migrate_cancel", None);
            return Err(MigrateError::Timeout(timeout));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stats(info: &Value) -> MigrationStats {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    MigrationStats {
        total_ms: n(&info["total-time"]),
        downtime_ms: n(&info["downtime"]),
        transferred_bytes: n(&info["ram"]["transferred"]),
        ram_total_bytes: n(&info["ram"]["total"]),
    }
}

/// Saves the running VM whose directory is `vmdir` into `file` (created, mode 0600,
/// never through a symlink); the VM is stopped afterwards. `socket_group` is the group
/// of the hypervisor's user, which must be able to connect to the stream socket.
pub fn snapshot(
    vmdir: &Path,
    qmp_socket: &Path,
    file: &Path,
    socket_group: Option<u32>,
    progress: impl FnMut(&Value),
) -> Result<MigrationStats, MigrateError> {
    let io = |step, path: &Path| {
        let path = path.to_owned();
        move |source| MigrateError::Io { step, path, source }
    };
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .map_err(io("cannot create", file))?;
    let done = stream_through_socket(vmdir, qmp_socket, socket_group, out, progress).and_then(
        |(mut qmp, stats, out)| {
            out.sync_all().map_err(io("cannot write", file))?;
            note_handover(vmdir, &format!("saved to {}", file.display()));
            qmp.quit()?;
            Ok(stats)
        },
    );
    if done.is_err() {
        let _ = std::fs::remove_file(file); // created above: a partial snapshot
    }
    done
}

/// Streams the VM through a unix socket in `vmdir` that we listen on (0660, group
/// `socket_group`) into `out`; returns once qemu completed the stream and `out` has all
/// of it, with the paused source qemu's QMP client.
pub(crate) fn stream_through_socket<W: Write + Send + 'static>(
    vmdir: &Path,
    qmp_socket: &Path,
    socket_group: Option<u32>,
    mut out: W,
    progress: impl FnMut(&Value),
) -> Result<(QmpClient, MigrationStats, W), MigrateError> {
    let io = |step, path: &Path| {
        let path = path.to_owned();
        move |source| MigrateError::Io { step, path, source }
    };
    let sock = vmdir.join(SNAPSHOT_SOCKET);
    let _ = std::fs::remove_file(&sock);
    // The VM directory is writable by the hypervisor's group: the socket is made 0660 at
    // bind (umask) and handed over without following a link someone put in its place.
    // SAFETY: umask has no memory effects; this command runs no other thread yet.
    let old = unsafe { libc::umask(0o117) };
    let bound = crate::unixpath::bind(&sock);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = bound.map_err(io("cannot listen on", &sock))?;
    let cleanup = scopeguard(&sock);
    if let Some(gid) = socket_group {
        rustix::fs::chownat(
            rustix::fs::CWD,
            &sock,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::from_raw(gid)),
            rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(std::io::Error::from)
        .map_err(io("cannot hand over", &sock))?;
    }
    let copier = std::thread::spawn(move || -> std::io::Result<W> {
        let (mut stream, _) = listener.accept()?;
        std::io::copy(&mut stream, &mut out)?;
        out.flush()?;
        Ok(out)
    });
    let uri = format!("unix:{SNAPSHOT_SOCKET}");
    let (qmp, stats) = match stream(qmp_socket, &uri, MIGRATE_TIMEOUT, progress) {
        Ok(done) => done,
        Err(e) => {
            // Unblock the accept if qemu never connected. The copier is not waited for:
            // it may be stuck writing to a reader that stopped (ssh); it ends when its
            // writer fails or qemu closes the stream.
            let _ = crate::unixpath::connect(&sock);
            return Err(e);
        }
    };
    let copied = copier
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("panicked")));
    drop(cleanup);
    let out = copied.map_err(io("cannot copy the migration stream from", &sock))?;
    Ok((qmp, stats, out))
}

/// Removes the socket when dropped.
struct Remove(PathBuf);

impl Drop for Remove {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn scopeguard(p: &Path) -> Remove {
    Remove(p.to_owned())
}

/// Opens a snapshot file for an incoming qemu (read-only, never through a symlink).
pub fn open_snapshot(path: &Path) -> Result<File, MigrateError> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|source| MigrateError::Io {
            step: "cannot open the snapshot",
            path: path.to_owned(),
            source,
        })
}

/// Waits until an incoming qemu answers QMP: it then listens for its migration (qemu
/// opens the incoming side before it serves the monitor).
pub fn wait_listening(qmp_socket: &Path, timeout: Duration) -> Result<(), MigrateError> {
    let end = Instant::now() + timeout;
    loop {
        let status = QmpClient::connect(qmp_socket, DEFAULT_TIMEOUT)
            .and_then(|mut q| q.execute("query-status", None));
        match status {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= end => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Polls an incoming qemu (`query-status`) until it has loaded its state and runs the
/// guest (`true`), or until `stop` is set (`false`: it ended, or never got its state).
pub fn wait_resumed(qmp_socket: &Path, stop: &std::sync::atomic::AtomicBool) -> bool {
    use std::sync::atomic::Ordering;
    while !stop.load(Ordering::SeqCst) {
        let status = QmpClient::connect(qmp_socket, DEFAULT_TIMEOUT)
            .and_then(|mut q| q.execute("query-status", None));
        if status.is_ok_and(|s| s["status"] == "running") {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The invocation of an incoming start: `-incoming` appended, and for a snapshot the
/// opened file the hypervisor inherits at [`INCOMING_FD`].
pub fn incoming_invocation(
    inv: &Invocation,
    pci_devices: &[String],
    incoming: &Incoming,
) -> Result<(Invocation, Option<crate::supervise::PassFd>), MigrateError> {
    check_migratable(inv, pci_devices)?;
    let fd = match incoming {
        Incoming::File(p) => Some(crate::supervise::PassFd {
            fd: crate::supervise::SharedFd(std::sync::Arc::new(open_snapshot(p)?.into())),
            target: INCOMING_FD,
        }),
        Incoming::Tcp(_) | Incoming::Stdin => None,
    };
    let mut inv = inv.clone();
    inv.args.push("-incoming".into());
    inv.args.push(incoming.qemu_uri());
    Ok((inv, fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incoming_and_targets_parse_or_are_refused() {
        assert_eq!(
            "file:/x/y".parse::<Incoming>().expect("file"),
            Incoming::File("/x/y".into())
        );
        let tcp: Incoming = "tcp:10.0.0.2:4444".parse().expect("tcp");
        assert_eq!(tcp.qemu_uri(), "tcp:10.0.0.2:4444");
        assert_eq!(
            Incoming::File("/s".into()).qemu_uri(),
            format!("fd:{INCOMING_FD}")
        );
        for bad in [
            "exec:sh",
            "tcp:",
            "tcp:host",
            "tcp:h:0",
            "tcp:h:99999",
            "file:",
            "tcp:a b:1",
            "stdin:x",
            "unix:incoming.sock",
        ] {
            assert!(bad.parse::<Incoming>().is_err(), "{bad}");
        }
        assert_eq!("stdin".parse::<Incoming>().expect("stdin"), Incoming::Stdin);
        assert_eq!(Incoming::Stdin.qemu_uri(), "unix:incoming.sock");
        for i in [Incoming::Stdin, tcp, Incoming::File("/a b".into())] {
            assert_eq!(i.arg().parse::<Incoming>().expect("round trip"), i);
        }
        assert!(address("[::1]:5000").is_ok());
        assert!(address("host;rm:1").is_err());
    }
    fn invocation(hypervisor: Hypervisor) -> Invocation {
        Invocation {
            hypervisor,
            program: "hv".into(),
            args: vec![],
            process_name: None,
            env: vec![],
            files: vec![],
            helpers: vec![],
            pre_start: vec![],
            control_socket: None,
            shutdown: microvm_runner::Shutdown::Signal {
                signal: "SIGTERM".into(),
            },
            control_channel: None,
            taps: vec![],
            macvtap_fds: vec![],
            kernel_cmdline: String::new(),
            capabilities: microvm_runner::Capabilities {
                can_shutdown: false,
                supports_notify_socket: false,
                tap_multi_queue: false,
                readiness: false,
            },
            warnings: vec![],
        }
    }

    #[test]
    fn only_qemu_without_vfio_or_vhost_user_migrates() {
        assert!(check_migratable(&invocation(Hypervisor::Qemu), &[]).is_ok());
        let e = check_migratable(&invocation(Hypervisor::CloudHypervisor), &[]);
        assert!(e.expect_err("refused").to_string().contains("qemu only"));
        let e = check_migratable(&invocation(Hypervisor::Qemu), &["0000:01:00.0".into()]);
        assert!(e.expect_err("refused").to_string().contains("vfio"));
        let mut fs = invocation(Hypervisor::Qemu);
        fs.args.push("vhost-user-blk-pci,chardev=c".into());
        assert!(check_migratable(&fs, &[]).is_err());
    }
}
