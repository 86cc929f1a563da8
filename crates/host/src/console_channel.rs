//! The control protocol over the serial console, for hypervisors without a virtio-serial
//! or vsock channel. The supervisor puts a fresh nonce on the kernel command line
//! ([`new_nonce`], [`microvm_runner::Invocation::with_nonce`]); the guest init writes each
//! message as a line `<nonce> READY …` on its console. [`FrameScanner`] finds those lines
//! in the console stream, hands them on as events and removes them from what the user
//! sees; every other byte passes through unchanged. A guest program cannot forge a frame:
//! the init hides the nonce from the guest (a scrubbed `/proc/cmdline`, `dmesg` for root
//! only), and a line counts only when it starts with the whole nonce.
//!
//! [`ConsoleRelay`] runs the stream: the hypervisor gets the slave side of a pty, the
//! relay copies its master to the user's output (terminal, log, or the managed console)
//! through the scanner, and the user's input to the master.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use crate::channel::{parse_line, ChannelEvent};

/// The longest frame kept; a longer "frame" is reported as noise and dropped.
const MAX_FRAME: usize = 4096;
/// How long a possible frame start is held back before it is shown anyway.
const HOLD_MS: u16 = 100;

/// A fresh nonce: 32 lowercase hex digits from the kernel's random source.
pub fn new_nonce() -> io::Result<String> {
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Splits a console stream into what the user sees and the framed control lines.
#[derive(Debug)]
pub struct FrameScanner {
    /// `<nonce> `: what a frame line starts with.
    marker: Vec<u8>,
    at_line_start: bool,
    /// Bytes at a line start that may still become the marker.
    held: Vec<u8>,
    /// The rest of a frame line after the marker, until its newline.
    frame: Option<Vec<u8>>,
}

impl FrameScanner {
    pub fn new(nonce: &str) -> FrameScanner {
        FrameScanner {
            marker: format!("{nonce} ").into_bytes(),
            at_line_start: true,
            held: Vec::new(),
            frame: None,
        }
    }

    /// Feeds console bytes: what the user should see goes to `out`, control lines to
    /// `events`.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>, events: &mut Vec<ChannelEvent>) {
        for &b in data {
            if let Some(frame) = &mut self.frame {
                if b == b'\n' {
                    let line = std::mem::take(frame);
                    self.frame = None;
                    self.at_line_start = true;
                    events.push(frame_event(&line));
                } else if frame.len() < MAX_FRAME {
                    frame.push(b);
                }
                continue;
            }
            if self.at_line_start {
                self.held.push(b);
                if self.held == self.marker {
                    self.held.clear();
                    self.frame = Some(Vec::new());
                    self.at_line_start = false;
                } else if !self.marker.starts_with(&self.held) {
                    out.append(&mut self.held);
                    self.at_line_start = b == b'\n';
                }
                continue;
            }
            out.push(b);
            self.at_line_start = b == b'\n';
        }
    }

    /// Shows what was held back as a possible frame start (the stream went quiet).
    pub fn flush(&mut self, out: &mut Vec<u8>) {
        if !self.held.is_empty() {
            out.append(&mut self.held);
            self.at_line_start = false;
        }
    }
}

fn frame_event(raw: &[u8]) -> ChannelEvent {
    let line = String::from_utf8_lossy(raw);
    let line = line.trim_end_matches('\r');
    match parse_line(line) {
        Some(ev) => ChannelEvent::Guest(ev),
        None => ChannelEvent::Malformed(line.to_string()),
    }
}

/// Where the relay writes the console and reads the user's input.
pub struct RelayEnds {
    pub output: Box<dyn Write + Send>,
    /// `None`: the guest gets no input.
    pub input: Option<OwnedFd>,
    /// Drop escape sequences from the output (a console nobody interacts with: firmware
    /// screen control such as SeaBIOS's reset and line-wrap-off must not reach it).
    pub strip_escapes: bool,
    /// Called when the input has [`crate::console::DETACH_BYTE`] (Ctrl-]), which is not
    /// passed on; `None` passes every byte.
    pub on_detach: Option<Box<dyn Fn() + Send>>,
}

/// Removes ANSI escape sequences from a byte stream: `ESC x`, CSI (`ESC [ … final`) and
/// OSC (`ESC ] … BEL` or `ESC ] … ESC \\`); a run of carriage returns becomes one (a
/// hypervisor that finds a terminal on stdin may turn on ONLCR, which makes the guest's
/// `\r\n` a `\r\r\n`); everything else passes.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    state: EscState,
    after_cr: bool,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum EscState {
    #[default]
    Text,
    Esc,
    Csi,
    Osc,
    OscEsc,
}

impl EscapeFilter {
    pub fn filter(&mut self, data: &[u8], out: &mut Vec<u8>) {
        use EscState::*;
        for &b in data {
            let state = self.state;
            self.state = match (state, b) {
                (Text, 0x1b) => Esc,
                (Text, b'\r') if self.after_cr => Text,
                (Text, _) => {
                    out.push(b);
                    Text
                }
                (Esc, b'[') => Csi,
                (Esc, b']') => Osc,
                (Esc, _) => Text,
                (Csi, 0x40..=0x7e) => Text,
                (Csi, _) => Csi,
                (Osc, 0x07) => Text,
                (Osc, 0x1b) => OscEsc,
                (Osc, _) => Osc,
                (OscEsc, b'\\') => Text,
                (OscEsc, _) => Osc,
            };
            if state == Text {
                self.after_cr = b == b'\r';
            }
        }
    }
}

impl std::fmt::Debug for RelayEnds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayEnds")
            .field("input", &self.input)
            .field("strip_escapes", &self.strip_escapes)
            .finish_non_exhaustive()
    }
}

/// The running relay (see the module docs).
#[derive(Debug)]
pub struct ConsoleRelay {
    stop: Arc<AtomicBool>,
    output: Option<JoinHandle<()>>,
    input: Option<JoinHandle<()>>,
}

impl ConsoleRelay {
    /// Relays `master` (the pty whose slave the hypervisor has) to and from `ends`;
    /// control lines framed by `nonce` go to `sink`.
    pub fn start(
        master: OwnedFd,
        ends: RelayEnds,
        nonce: Option<&str>,
        sink: impl Fn(ChannelEvent) + Send + 'static,
    ) -> io::Result<ConsoleRelay> {
        let stop = Arc::new(AtomicBool::new(false));
        let to_guest = File::from(master.try_clone()?);
        let mut stream = Stream {
            scanner: nonce.map(FrameScanner::new),
            escapes: ends.strip_escapes.then(EscapeFilter::default),
            output: ends.output,
        };
        let out_thread = std::thread::Builder::new()
            .name("console-relay".into())
            .spawn(move || pump_output(&master, &mut stream, &sink))?;
        let on_detach = ends.on_detach;
        let in_thread = match ends.input {
            Some(input) => {
                let stop = stop.clone();
                Some(
                    std::thread::Builder::new()
                        .name("console-input".into())
                        .spawn(move || pump_input(&input, to_guest, &stop, on_detach))?,
                )
            }
            None => None,
        };
        Ok(ConsoleRelay {
            stop,
            output: Some(out_thread),
            input: in_thread,
        })
    }

    /// Waits (bounded) for the output to drain once the hypervisor is gone, and stops the
    /// input side.
    pub fn finish(&mut self, timeout: std::time::Duration) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(i) = self.input.take() {
            let _ = i.join();
        }
        let end = std::time::Instant::now() + timeout;
        if let Some(o) = self.output.take() {
            while !o.is_finished() && std::time::Instant::now() < end {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            if o.is_finished() {
                let _ = o.join();
            }
        }
    }
}

impl Drop for ConsoleRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The output side: scanner, escape filter, writer.
struct Stream {
    scanner: Option<FrameScanner>,
    escapes: Option<EscapeFilter>,
    output: Box<dyn Write + Send>,
}

impl Stream {
    /// Passes `data` on (`None`: the stream paused or ended: show what was held back).
    fn push(&mut self, data: Option<&[u8]>, sink: &dyn Fn(ChannelEvent)) {
        let mut shown = Vec::new();
        let mut events = Vec::new();
        match (&mut self.scanner, data) {
            (Some(s), Some(d)) => s.feed(d, &mut shown, &mut events),
            (Some(s), None) => s.flush(&mut shown),
            (None, Some(d)) => shown.extend_from_slice(d),
            (None, None) => {}
        }
        if let Some(f) = &mut self.escapes {
            let mut kept = Vec::with_capacity(shown.len());
            f.filter(&shown, &mut kept);
            shown = kept;
        }
        if !shown.is_empty() {
            let _ = self.output.write_all(&shown);
            let _ = self.output.flush();
        }
        for e in events {
            sink(e);
        }
    }
}

/// Copies the console through `stream` until every slave is closed.
fn pump_output(master: &OwnedFd, stream: &mut Stream, sink: &dyn Fn(ChannelEvent)) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let hold = Timespec {
        tv_sec: 0,
        tv_nsec: i64::from(HOLD_MS) * 1_000_000,
    };
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(master, PollFlags::IN)];
        match poll(&mut fds, Some(&hold)) {
            Ok(0) => {
                stream.push(None, sink);
                continue;
            }
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
        match rustix::io::read(master.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => stream.push(Some(&buf[..n]), sink),
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
            // EIO: every slave descriptor is closed (the hypervisor is gone).
            Err(_) => break,
        }
    }
    stream.push(None, sink);
}

/// Copies the user's input to the guest until EOF or `stop`.
fn pump_input(
    input: &OwnedFd,
    mut to_guest: File,
    stop: &AtomicBool,
    on_detach: Option<Box<dyn Fn() + Send>>,
) {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let tick = Timespec {
        tv_sec: 0,
        tv_nsec: 100_000_000,
    };
    let mut buf = [0u8; 1024];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(input, PollFlags::IN)];
        match poll(&mut fds, Some(&tick)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        match rustix::io::read(input.as_fd(), &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let data = &buf[..n];
                let cut = on_detach
                    .as_ref()
                    .and_then(|_| data.iter().position(|b| *b == crate::console::DETACH_BYTE));
                if to_guest.write_all(&data[..cut.unwrap_or(n)]).is_err() {
                    return;
                }
                if let (Some(_), Some(f)) = (cut, &on_detach) {
                    f();
                }
            }
            Err(rustix::io::Errno::INTR) | Err(rustix::io::Errno::AGAIN) => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
#[path = "console_channel_tests.rs"]
mod tests;
