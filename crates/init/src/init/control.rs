//! The control channel to the host: one ASCII line per message (`READY`, `EXIT`, `FAIL`).
//! Writes never block for long: a host that is not listening loses the message after a
//! few seconds rather than hanging the guest.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use microvm_init::plan::ControlChannel;
use rustix::fd::{AsFd, FromRawFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::devices;

static CHANNEL: Mutex<Option<OwnedFd>> = Mutex::new(None);

/// How long one message may wait for the host to read it.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the channel, waiting up to `timeout` for its device to appear.
pub fn open(spec: &ControlChannel, timeout: Duration) -> Result<(), String> {
    let fd = match spec {
        ControlChannel::VirtioPort { name } => {
            let node = devices::wait_for(timeout, || virtio_port(name))
                .ok_or_else(|| format!("no virtio port named {name:?}"))?;
            open_node(&node)?
        }
        ControlChannel::Serial { device } => {
            let fd = open_node(device)?;
            if let Ok(mut termios) = rustix::termios::tcgetattr(&fd) {
                termios.make_raw();
                let _ = rustix::termios::tcsetattr(
                    &fd,
                    rustix::termios::OptionalActions::Now,
                    &termios,
                );
            }
            fd
        }
        ControlChannel::Vsock { port } => {
            let mut last = String::new();
            devices::wait_for(timeout, || match vsock_connect(*port) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            })
            .ok_or_else(|| format!("vsock connect to host port {port}: {last}"))?
        }
    };
    if let Ok(mut slot) = CHANNEL.lock() {
        *slot = Some(fd);
    }
    Ok(())
}

pub fn is_open() -> bool {
    CHANNEL.try_lock().is_ok_and(|slot| slot.is_some())
}

/// Closes the channel (before the hand-over: the guest's own init may want the port).
pub fn close() {
    if let Ok(mut slot) = CHANNEL.lock() {
        *slot = None;
    }
}

/// Sends one line; a missing channel or a host that does not read is not an error.
pub fn send(line: &str) {
    let Ok(slot) = CHANNEL.try_lock() else { return };
    let Some(fd) = slot.as_ref() else { return };
    let message = format!("{line}\n");
    let mut rest = message.as_bytes();
    let deadline = Instant::now() + SEND_TIMEOUT;
    while !rest.is_empty() {
        match rustix::io::write(fd.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(_) => return,
        }
    }
}

/// `/dev/vportNpM` of the port called `name`, created from its sysfs `dev` when
/// devtmpfs has no node for it yet.
fn virtio_port(name: &str) -> Option<String> {
    let dir = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    dir.filter_map(|e| e.ok()).find_map(|e| {
        let port = e.file_name().into_string().ok()?;
        let sys = format!("/sys/class/virtio-ports/{port}");
        if std::fs::read_to_string(format!("{sys}/name")).ok()?.trim() != name {
            return None;
        }
        let node = format!("/dev/{port}");
        if !std::path::Path::new(&node).exists() {
            let dev = std::fs::read_to_string(format!("{sys}/dev")).ok()?;
            let (major, minor) = dev.trim().split_once(':')?;
            let dev = rustix::fs::makedev(major.parse().ok()?, minor.parse().ok()?);
            rustix::fs::mknodat(
                rustix::fs::CWD,
                node.as_str(),
                FileType::CharacterDevice,
                Mode::from_raw_mode(0o600),
                dev,
            )
            .ok()?;
        }
        Some(node)
    })
}

fn open_node(path: &str) -> Result<OwnedFd, String> {
    rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("open {path}: {e}"))
}

/// A non-blocking AF_VSOCK stream to the host (CID 2) on `port`.
fn vsock_connect(port: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid starting value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_HOST;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm and the length passed is its exact size.
    let rc = unsafe {
        libc::connect(
            raw,
            (&addr as *const libc::sockaddr_vm).cast(),
            size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    rustix::fs::fcntl_setfl(&fd, OFlags::NONBLOCK)?;
    Ok(fd)
}
