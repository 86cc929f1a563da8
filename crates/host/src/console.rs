//! The serial console of a managed VM. The hypervisor gets the slave side of a pty as
//! stdin/stdout (so stratovirt and alioth, which want a terminal, have one); the
//! supervisor serves the master:
//! - everything the guest prints is appended to `console.log`, rotated at a size limit
//!   (`console.log` → `console.log.1`, so at most twice the limit is kept);
//! - clients of `console.sock` (`microvm console NAME`) get the same output live, and
//!   what they type goes to the guest. Any number of clients may attach; one that does
//!   not read is dropped rather than blocking the VM.
//!
//! [`attach`] is the client: raw terminal, Ctrl-] detaches without stopping the VM.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The default size at which `console.log` is rotated.
pub const DEFAULT_LOG_LIMIT: u64 = 1 << 20;
/// The byte that detaches [`attach`]: Ctrl-] (as in telnet and virsh console).
pub const DETACH_BYTE: u8 = 0x1d;

/// Both sides of a new pty; the slave is in raw mode (no echo, no line editing, no
/// newline translation: the guest's own terminal handling applies).
#[derive(Debug)]
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

pub fn open_pty() -> io::Result<Pty> {
    use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let slave: OwnedFd = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(Path::new(std::ffi::OsStr::from_bytes(name.as_bytes())))?
        .into();
    let mut t = rustix::termios::tcgetattr(&slave)?;
    t.make_raw();
    rustix::termios::tcsetattr(&slave, rustix::termios::OptionalActions::Now, &t)?;
    Ok(Pty { master, slave })
}

/// An append-only log file rotated at `limit` bytes. Opened with `O_NOFOLLOW`: a symlink
/// planted in the VM directory is never followed by the (root) supervisor.
#[derive(Debug)]
pub struct RotatingLog {
    path: PathBuf,
    limit: u64,
    file: File,
    size: u64,
}

impl RotatingLog {
    pub fn open(path: &Path, limit: u64) -> io::Result<RotatingLog> {
        let file = Self::open_file(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path: path.to_path_buf(),
            limit,
            file,
            size,
        })
    }

    fn open_file(path: &Path) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        if self.size > 0 && self.size + data.len() as u64 > self.limit {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            fs::rename(&self.path, &old)?;
            self.file = Self::open_file(&self.path)?;
            self.size = 0;
        }
        self.file.write_all(data)?;
        self.size += data.len() as u64;
        Ok(())
    }
}

pub use crate::unixpath::short_socket_path;

/// Where [`ConsoleServer`] writes and listens.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub log: PathBuf,
    pub log_limit: u64,
    pub socket: PathBuf,
    /// Owner and group of the socket (mode 0660); `None` leaves it to the caller (0600).
    pub socket_owner: Option<(u32, u32)>,
}

type Clients = Arc<Mutex<Vec<UnixStream>>>;

/// The most clients attached to one console at once (each costs a thread).
const MAX_CLIENTS: usize = 8;
const TOO_MANY: &str = "microvm: too many console clients (8 attached); try again later\r\n";

/// Serves a pty master: log + attached clients. See the module docs.
#[derive(Debug)]
pub struct ConsoleServer {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    acceptor: Option<JoinHandle<()>>,
    socket: PathBuf,
}

impl ConsoleServer {
    pub fn start(master: OwnedFd, cfg: &ConsoleConfig) -> io::Result<ConsoleServer> {
        use std::os::unix::fs::PermissionsExt;
        let mut log = RotatingLog::open(&cfg.log, cfg.log_limit)?;
        let _ = fs::remove_file(&cfg.socket);
        let (_dir, short) = short_socket_path(&cfg.socket)?;
        let listener = UnixListener::bind(&short)?;
        match cfg.socket_owner {
            Some((uid, gid)) => {
                std::os::unix::fs::lchown(&cfg.socket, Some(uid), Some(gid))?;
                fs::set_permissions(&cfg.socket, fs::Permissions::from_mode(0o660))?;
            }
            None => fs::set_permissions(&cfg.socket, fs::Permissions::from_mode(0o600))?,
        }
        listener.set_nonblocking(true)?;
        let clients: Clients = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let input = File::from(master.try_clone()?);
        let mut output = File::from(master);

        let reader = {
            let clients = clients.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    let n = match output.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // EIO: every slave descriptor is closed (the hypervisor is gone).
                        Err(_) => break,
                    };
                    let _ = log.write(&buf[..n]);
                    if let Ok(mut list) = clients.lock() {
                        list.retain_mut(|c| c.write_all(&buf[..n]).is_ok());
                    }
                }
                if let Ok(mut list) = clients.lock() {
                    for c in list.drain(..) {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                }
            })
        };
        let acceptor = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((mut stream, _)) => {
                            let full = clients.lock().map_or(true, |l| l.len() >= MAX_CLIENTS);
                            if full {
                                let _ = stream.write_all(TOO_MANY.as_bytes());
                                continue;
                            }
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.set_write_timeout(Some(Duration::from_millis(500)));
                            let (Ok(theirs), Ok(mut to_guest)) =
                                (stream.try_clone(), input.try_clone())
                            else {
                                continue;
                            };
                            if let Ok(mut list) = clients.lock() {
                                list.push(stream);
                            }
                            std::thread::spawn(move || {
                                let mut from_client = theirs;
                                let _ = io::copy(&mut from_client, &mut to_guest);
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        Ok(ConsoleServer {
            stop,
            reader: Some(reader),
            acceptor: Some(acceptor),
            socket: cfg.socket.clone(),
        })
    }

    /// Stops accepting clients, waits up to `timeout` for the output to be drained (the
    /// reader ends once the hypervisor and every copy of the slave are gone), removes the
    /// socket.
    pub fn finish(mut self, timeout: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let _ = fs::remove_file(&self.socket);
        let end = Instant::now() + timeout;
        if let Some(r) = self.reader.take() {
            while !r.is_finished() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
    }
}

impl Drop for ConsoleServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// How [`attach`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// The user pressed the detach byte.
    Detached,
    /// The supervisor closed the console (the VM stopped).
    Closed,
}

/// Attaches the terminal to a console socket until Ctrl-] or until the VM's console
/// closes. When stdin is a terminal it is put into raw mode and restored afterwards.
pub fn attach(socket: &Path) -> io::Result<Detach> {
    let (_dir, short) = short_socket_path(socket)?;
    let stream = UnixStream::connect(&short)?;
    let stdin = io::stdin();
    let _raw = RawMode::enter(stdin.as_fd());
    pump(stdin.as_fd(), &stream, &mut io::stdout())
}

/// The attach loop over any input descriptor (tests use a pipe).
fn pump(
    input: std::os::fd::BorrowedFd<'_>,
    stream: &UnixStream,
    out: &mut impl Write,
) -> io::Result<Detach> {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut buf = [0u8; 4096];
    let mut sock = stream;
    let mut input_open = true;
    loop {
        let mut fds = vec![PollFd::new(stream, PollFlags::IN)];
        if input_open {
            fds.push(PollFd::new(&input, PollFlags::IN));
        }
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
        let sock_ready = !fds[0].revents().is_empty();
        let in_ready = fds.get(1).is_some_and(|f| !f.revents().is_empty());
        if sock_ready {
            let n = sock.read(&mut buf)?;
            if n == 0 {
                return Ok(Detach::Closed);
            }
            out.write_all(&buf[..n])?;
            out.flush()?;
        }
        if in_ready {
            let n = rustix::io::read(input, &mut buf)?;
            if n == 0 {
                input_open = false;
                continue;
            }
            let data = &buf[..n];
            if let Some(i) = data.iter().position(|b| *b == DETACH_BYTE) {
                sock.write_all(&data[..i])?;
                return Ok(Detach::Detached);
            }
            sock.write_all(data)?;
        }
    }
}

/// Raw mode on a terminal for as long as it lives.
struct RawMode<'a> {
    fd: std::os::fd::BorrowedFd<'a>,
    saved: Option<rustix::termios::Termios>,
}

impl<'a> RawMode<'a> {
    fn enter(fd: std::os::fd::BorrowedFd<'a>) -> RawMode<'a> {
        let saved = rustix::termios::tcgetattr(fd).ok();
        if let Some(s) = &saved {
            let mut raw = s.clone();
            raw.make_raw();
            let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &raw);
        }
        RawMode { fd, saved }
    }
}

impl Drop for RawMode<'_> {
    fn drop(&mut self) {
        if let Some(s) = &self.saved {
            let _ = rustix::termios::tcsetattr(self.fd, rustix::termios::OptionalActions::Now, s);
        }
    }
}

/// The user's terminal while a VM's console is relayed to it: stdin in raw mode (what
/// is typed goes to the guest as is). Dropping it restores the saved settings and
/// switches line wrapping back on (firmware such as SeaBIOS turns it off), so that every
/// exit of `microvm run` leaves the terminal as it found it.
#[derive(Debug)]
pub struct TerminalGuard {
    fd: OwnedFd,
    saved: rustix::termios::Termios,
}

impl TerminalGuard {
    /// `None` when stdin is not a terminal.
    pub fn raw_stdin() -> Option<TerminalGuard> {
        let fd = io::stdin().as_fd().try_clone_to_owned().ok()?;
        let saved = rustix::termios::tcgetattr(&fd).ok()?;
        let mut raw = saved.clone();
        raw.make_raw();
        // Keep output post-processing: the guest's bare newlines still start a line.
        raw.output_modes = saved.output_modes;
        rustix::termios::tcsetattr(&fd, rustix::termios::OptionalActions::Now, &raw).ok()?;
        Some(TerminalGuard { fd, saved })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            &self.fd,
            rustix::termios::OptionalActions::Now,
            &self.saved,
        );
        if rustix::termios::isatty(io::stdout()) {
            // DECAWM on (line wrapping), default colours.
            let _ = io::stdout().write_all(b"\x1b[?7h\x1b[0m");
            let _ = io::stdout().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_rotates_at_the_limit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let mut log = RotatingLog::open(&path, 10).expect("open");
        log.write(b"12345678").expect("w");
        log.write(b"abcd").expect("w"); // would pass 10: rotate first
        assert_eq!(fs::read(&path).expect("r"), b"abcd");
        assert_eq!(
            fs::read(dir.path().join("console.log.1")).expect("r"),
            b"12345678"
        );
        let mut log = RotatingLog::open(&path, 10).expect("reopen appends");
        log.write(b"ef").expect("w");
        assert_eq!(fs::read(&path).expect("r"), b"abcdef");
    }

    #[test]
    fn long_socket_paths_bind_through_the_directory_handle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        fs::create_dir_all(&deep).expect("mkdir");
        let sock = deep.join("console.sock");
        let (_d, short) = short_socket_path(&sock).expect("short");
        let _l = UnixListener::bind(&short).expect("bind");
        assert!(sock.exists());
        let (_d2, short2) = short_socket_path(&sock).expect("short");
        UnixStream::connect(&short2).expect("connect");
    }

    #[test]
    fn log_does_not_follow_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("target");
        fs::write(&target, "keep").expect("w");
        std::os::unix::fs::symlink(&target, dir.path().join("console.log")).expect("ln");
        assert!(RotatingLog::open(&dir.path().join("console.log"), 10).is_err());
        assert_eq!(fs::read_to_string(&target).expect("r"), "keep");
    }

    /// A console logging to and listening in `dir`, the default log limit, no owner.
    fn config(dir: &Path) -> ConsoleConfig {
        ConsoleConfig {
            log: dir.join("console.log"),
            log_limit: DEFAULT_LOG_LIMIT,
            socket: dir.join("console.sock"),
            socket_owner: None,
        }
    }

    /// At most 8 clients attach at once; the ninth is told so and closed.
    #[test]
    fn console_clients_are_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pty = open_pty().expect("pty");
        let cfg = config(dir.path());
        let server = ConsoleServer::start(pty.master, &cfg).expect("server");
        let mut attached = Vec::new();
        for _ in 0..MAX_CLIENTS {
            attached.push(UnixStream::connect(&cfg.socket).expect("connect"));
            std::thread::sleep(Duration::from_millis(80)); // the acceptor polls every 50 ms
        }
        let mut ninth = UnixStream::connect(&cfg.socket).expect("connect");
        ninth
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut text = String::new();
        let _ = ninth.read_to_string(&mut text);
        assert_eq!(text, TOO_MANY);
        drop(pty.slave);
        server.finish(Duration::from_secs(2));
    }

    /// A guest stand-in on the pty slave echoes what a client types; the output reaches
    /// the log and the client; Ctrl-] detaches; closing the slave ends the server.
    #[test]
    fn pty_output_reaches_log_and_clients_and_input_reaches_the_guest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pty = open_pty().expect("pty");
        let cfg = config(dir.path());
        let server = ConsoleServer::start(pty.master, &cfg).expect("server");
        let mut guest = File::from(pty.slave);
        let mut client = UnixStream::connect(&cfg.socket).expect("connect");
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        std::thread::sleep(Duration::from_millis(200)); // the acceptor polls every 50 ms
        client.write_all(b"ping\n").expect("type");
        let mut got = [0u8; 5];
        guest.read_exact(&mut got).expect("guest reads");
        assert_eq!(&got, b"ping\n");
        guest.write_all(b"pong\n").expect("guest writes");
        let mut echo = [0u8; 5];
        client.read_exact(&mut echo).expect("client reads");
        assert_eq!(&echo, b"pong\n");

        // The attach loop: typed bytes up to Ctrl-] are sent, then it detaches.
        let (r, w) = rustix::pipe::pipe().expect("pipe");
        File::from(w).write_all(b"x\x1dy").expect("w");
        let attached = UnixStream::connect(&cfg.socket).expect("connect 2");
        let mut out = Vec::new();
        assert_eq!(
            pump(r.as_fd(), &attached, &mut out).expect("pump"),
            Detach::Detached
        );
        let mut x = [0u8; 1];
        guest.read_exact(&mut x).expect("guest reads x");
        assert_eq!(&x, b"x");

        drop(guest);
        server.finish(Duration::from_secs(5));
        assert!(!cfg.socket.exists());
        assert_eq!(fs::read(&cfg.log).expect("log"), b"pong\n");
        let mut rest = Vec::new();
        let _ = client.read_to_end(&mut rest);
    }
}
