//! The control channel to the host: one ASCII line per message (`READY`, `EXIT`, `FAIL`).
//! Writes never block for long: a host that is not reading loses the message after a few
//! seconds, and with nobody on the host end (a virtio port run by hand, without a
//! supervisor) after one second, once, rather than hanging the guest. On the console, each line is framed by the
//! boot's nonce (see [`ControlChannel::Console`]).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use microvm_init::plan::ControlChannel;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fd::{AsFd, FromRawFd, OwnedFd};
use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::devices;

/// The open channel: its descriptor and what precedes every line (`\n<nonce> ` on the
/// console, nothing elsewhere).
struct Open {
    fd: OwnedFd,
    prefix: String,
}

static CHANNEL: Mutex<Option<Open>> = Mutex::new(None);

/// The copy of the kernel command line, without the nonce, shown to the guest.
const SCRUBBED_CMDLINE: &str = "/run/microvm/cmdline";

/// How long one message may wait for a connected host to read it.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one message may wait while nobody is on the host end of a virtio port (the
/// port hangs up): `bin/microvm-run` started by hand, without a supervisor. A supervisor
/// connects as soon as qemu has made the socket, long before this init runs, so this only
/// covers one stalled on a loaded host; once a message was dropped for want of a host,
/// later ones are not waited for.
const ABSENT_TIMEOUT: Duration = Duration::from_secs(1);

/// Set once a message was dropped because no host was connected.
static HOST_ABSENT: AtomicBool = AtomicBool::new(false);

/// Opens the channel, waiting up to `timeout` for its device to appear.
pub fn open(spec: &ControlChannel, timeout: Duration) -> Result<(), String> {
    let mut prefix = String::new();
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
        ControlChannel::Console { param } => {
            let cmdline = std::fs::read_to_string("/proc/cmdline")
                .map_err(|e| format!("read /proc/cmdline: {e}"))?;
            let Some(nonce) = nonce_from_cmdline(&cmdline, param) else {
                super::console::say(&format!(
                    "microvm-init: no valid {param}= on the kernel command line; \
                     not reporting to the host"
                ));
                return Ok(());
            };
            hide_nonce(&cmdline, param)?;
            prefix = format!("\n{nonce} ");
            open_node("/dev/console")?
        }
    };
    if let Ok(mut slot) = CHANNEL.lock() {
        *slot = Some(Open { fd, prefix });
    }
    Ok(())
}

/// The value of `param=` on `cmdline` when it looks like a nonce the host made (16 to 64
/// lowercase hex digits); anything else (a copied plan's placeholder) is no nonce.
pub fn nonce_from_cmdline<'a>(cmdline: &'a str, param: &str) -> Option<&'a str> {
    let value = cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(param)?.strip_prefix('='))
        .next_back()?;
    let hex = value
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && (16..=64).contains(&value.len())).then_some(value)
}

/// `cmdline` without any `param=` word.
pub fn scrub_cmdline(cmdline: &str, param: &str) -> String {
    let kept: Vec<&str> = cmdline
        .split_whitespace()
        .filter(|w| !w.strip_prefix(param).is_some_and(|r| r.starts_with('=')))
        .collect();
    format!("{}\n", kept.join(" "))
}

/// Keeps the nonce from guest programs: `/proc/cmdline` is covered by a copy without it
/// (the bind mount moves with `/proc` at the switch) and the kernel log, which echoes the
/// command line, is readable by root only.
fn hide_nonce(cmdline: &str, param: &str) -> Result<(), String> {
    let dir = Path::new(SCRUBBED_CMDLINE)
        .parent()
        .unwrap_or(Path::new("/run"));
    std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::fs::write(SCRUBBED_CMDLINE, scrub_cmdline(cmdline, param))
        .map_err(|e| format!("write {SCRUBBED_CMDLINE}: {e}"))?;
    rustix::mount::mount_bind(SCRUBBED_CMDLINE, "/proc/cmdline")
        .map_err(|e| format!("cover /proc/cmdline: {e}"))?;
    std::fs::write("/proc/sys/kernel/dmesg_restrict", "1")
        .map_err(|e| format!("restrict dmesg: {e}"))
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
    let Some(Open { fd, prefix }) = slot.as_ref() else {
        return;
    };
    let message = format!("{prefix}{line}\n");
    let mut rest = message.as_bytes();
    let start = Instant::now();
    while !rest.is_empty() {
        match rustix::io::write(fd.as_fd(), rest) {
            Ok(n) => rest = &rest[n..],
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if may_wait(fd, start) => {}
            Err(_) => return,
        }
    }
}

/// Waits about 10 ms for `fd` to take more, and says whether the message may still wait:
/// [`SEND_TIMEOUT`] for a host that is connected, [`ABSENT_TIMEOUT`] (once) for none.
fn may_wait(fd: &OwnedFd, start: Instant) -> bool {
    let mut fds = [PollFd::new(fd, PollFlags::OUT)];
    let _ = rustix::event::poll(
        &mut fds,
        Some(&Timespec {
            tv_sec: 0,
            tv_nsec: 10_000_000,
        }),
    );
    if !fds[0].revents().contains(PollFlags::HUP) {
        return start.elapsed() < SEND_TIMEOUT;
    }
    if !HOST_ABSENT.load(Ordering::Relaxed) {
        // A hung-up port polls ready at once: wait for a host to connect.
        std::thread::sleep(Duration::from_millis(10));
        if start.elapsed() < ABSENT_TIMEOUT {
            return true;
        }
        HOST_ABSENT.store(true, Ordering::Relaxed);
        super::console::say(
            "microvm-init: nobody is on the host end of the control channel \
             (run without microvm's supervisor?): not reporting to the host",
        );
    }
    false
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
        if !Path::new(&node).exists() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nonce_is_read_and_scrubbed() {
        let line = "console=ttyS0 microvm.nonce=0123456789abcdef0123 quiet\n";
        assert_eq!(
            nonce_from_cmdline(line, "microvm.nonce"),
            Some("0123456789abcdef0123")
        );
        assert_eq!(
            scrub_cmdline(line, "microvm.nonce"),
            "console=ttyS0 quiet\n"
        );
        // A placeholder, a short or upper-case value, another parameter: no nonce.
        for bad in [
            "microvm.nonce=@MICROVM_NONCE@",
            "microvm.nonce=abc",
            "microvm.nonce=0123456789ABCDEF",
            "microvm.noncex=0123456789abcdef",
            "",
        ] {
            assert_eq!(nonce_from_cmdline(bad, "microvm.nonce"), None, "{bad}");
        }
        assert_eq!(
            scrub_cmdline("microvm.noncex=1 a", "microvm.nonce"),
            "microvm.noncex=1 a\n"
        );
    }
}
