//! The host side of the guest init's control channel: ASCII lines
//! `READY <init-start-uptime> <ready-uptime>`, `EXIT <status>`, `FAIL <message>`.
//!
//! A [`ControlReader`] runs on its own thread and hands every event to a sink (an mpsc
//! sender in [`ControlReader::start_mpsc`]); it never blocks its caller and stops when
//! asked or dropped.

use std::io::{ErrorKind, Read};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use microvm_runner::ControlChannel;

/// What the guest init reported.
#[derive(Debug, Clone, PartialEq)]
pub enum GuestEvent {
    /// Guest uptimes (seconds) when the init started and when the root was ready.
    Ready { init_start: f64, ready: f64 },
    /// The single command's exit status.
    Exit(i32),
    /// The init failed and is powering off.
    Fail(String),
}

/// Everything a [`ControlReader`] delivers.
#[derive(Debug, Clone, PartialEq)]
pub enum ChannelEvent {
    /// The channel is connected (virtio-serial) or the guest connected (vsock).
    Connected,
    Guest(GuestEvent),
    /// A line that is not part of the protocol.
    Malformed(String),
    /// The channel could not be opened or broke; no further events follow.
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("cannot listen on the control socket {}", path.display())]
    Listen {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the control channel reader")]
    Thread(#[source] std::io::Error),
}

/// Parses one protocol line (without its newline).
pub fn parse_line(line: &str) -> Option<GuestEvent> {
    let line = line.trim_end_matches(['\r', '\n']);
    let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
    match word {
        "READY" => {
            let mut it = rest.split_whitespace().map(str::parse::<f64>);
            match (it.next(), it.next(), it.next()) {
                (Some(Ok(init_start)), Some(Ok(ready)), None) => {
                    Some(GuestEvent::Ready { init_start, ready })
                }
                _ => None,
            }
        }
        "EXIT" => rest.trim().parse().ok().map(GuestEvent::Exit),
        "FAIL" => Some(GuestEvent::Fail(rest.to_string())),
        _ => None,
    }
}

/// How long to keep trying to connect to a virtio-serial socket the hypervisor serves.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);

/// A running reader thread.
#[derive(Debug)]
pub struct ControlReader {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    created: Option<PathBuf>,
}

impl ControlReader {
    /// Starts reading `channel`; relative socket paths resolve against `workdir`.
    /// `VirtioSerial`: connects to the socket the hypervisor serves, retrying until it
    /// exists for up to `connect_timeout`. `HybridVsock`: listens on `<socket>_<port>`
    /// (a stale file there is removed first) and accepts the guest's connections.
    pub fn start(
        channel: &ControlChannel,
        workdir: &Path,
        connect_timeout: Duration,
        sink: impl Fn(ChannelEvent) + Send + 'static,
    ) -> Result<Self, ChannelError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let (created, body): (_, Box<dyn FnOnce() + Send>) = match channel {
            ControlChannel::VirtioSerial { socket, .. } => {
                let path = workdir.join(socket);
                (
                    None,
                    Box::new(move || connect_loop(&path, connect_timeout, &stop2, &sink)),
                )
            }
            ControlChannel::HybridVsock { socket, port } => {
                let path = workdir.join(format!("{socket}_{port}"));
                let _ = std::fs::remove_file(&path);
                let listener = crate::unixpath::bind(&path)
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .map_err(|source| ChannelError::Listen {
                        path: path.clone(),
                        source,
                    })?;
                (
                    Some(path),
                    Box::new(move || accept_loop(&listener, &stop2, &sink)),
                )
            }
            // Read from the console stream instead (`crate::console_channel`).
            ControlChannel::Console { .. } => (None, Box::new(|| {})),
        };
        let thread = std::thread::Builder::new()
            .name("control-channel".into())
            .spawn(body)
            .map_err(ChannelError::Thread)?;
        Ok(ControlReader {
            stop,
            thread: Some(thread),
            created,
        })
    }

    /// [`ControlReader::start`] with an mpsc channel as the sink.
    pub fn start_mpsc(
        channel: &ControlChannel,
        workdir: &Path,
        connect_timeout: Duration,
    ) -> Result<(Self, Receiver<ChannelEvent>), ChannelError> {
        let (tx, rx) = mpsc::channel();
        let reader = Self::start(channel, workdir, connect_timeout, move |e| {
            let _ = tx.send(e);
        })?;
        Ok((reader, rx))
    }

    /// The socket this reader created (vsock listener), removed by [`ControlReader::stop`].
    pub fn created_socket(&self) -> Option<&Path> {
        self.created.as_deref()
    }

    /// Stops the thread (within ~50 ms) and removes any socket it created.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(p) = self.created.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for ControlReader {
    fn drop(&mut self) {
        self.stop();
    }
}

fn connect_loop(path: &Path, timeout: Duration, stop: &AtomicBool, sink: &dyn Fn(ChannelEvent)) {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match crate::unixpath::connect(path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                sink(ChannelEvent::Failed(format!(
                    "cannot connect to the control socket {} within {timeout:?}: {e}",
                    path.display()
                )));
                return;
            }
            Err(_) => std::thread::sleep(POLL),
        }
    };
    sink(ChannelEvent::Connected);
    read_lines(stream, stop, sink);
}

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, sink: &dyn Fn(ChannelEvent)) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((s, _)) => {
                if s.set_nonblocking(false).is_ok() {
                    sink(ChannelEvent::Connected);
                    read_lines(s, stop, sink);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(POLL)
            }
            Err(e) => {
                sink(ChannelEvent::Failed(format!(
                    "accepting on the control socket: {e}"
                )));
                return;
            }
        }
    }
}

/// Reads lines until EOF or `stop`; partial lines survive read timeouts.
fn read_lines(mut stream: UnixStream, stop: &AtomicBool, sink: &dyn Fn(ChannelEvent)) {
    if stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 1024];
    // After `stop`, what is already buffered is still read (bounded), then we leave.
    let mut reads_after_stop = 0;
    loop {
        if stop.load(Ordering::SeqCst) {
            reads_after_stop += 1;
            if reads_after_stop > 64 {
                break;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            deliver(&line, sink);
        }
        if pending.len() > 64 * 1024 {
            deliver(&std::mem::take(&mut pending), sink);
        }
    }
    if !pending.is_empty() {
        deliver(&pending, sink);
    }
}

fn deliver(raw: &[u8], sink: &dyn Fn(ChannelEvent)) {
    let line = String::from_utf8_lossy(raw);
    let line = line.trim_end_matches(['\r', '\n']);
    if line.is_empty() {
        return;
    }
    sink(match parse_line(line) {
        Some(ev) => ChannelEvent::Guest(ev),
        None => ChannelEvent::Malformed(line.to_string()),
    });
}

#[cfg(test)]
#[path = "channel_tests.rs"]
mod tests;
