use super::*;
use crate::channel::GuestEvent;

const NONCE: &str = "0123456789abcdef0123456789abcdef";

fn scan(chunks: &[&[u8]]) -> (String, Vec<ChannelEvent>) {
    let mut s = FrameScanner::new(NONCE);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    for c in chunks {
        s.feed(c, &mut out, &mut ev);
    }
    s.flush(&mut out);
    (String::from_utf8(out).expect("utf-8"), ev)
}

#[test]
fn framed_lines_become_events_and_leave_the_output() {
    let text = format!(
        "[    1.0] booting\r\n\r\n{NONCE} READY 0.500 1.250\r\nhello\r\n\n{NONCE} EXIT 3\r\n"
    );
    let (out, ev) = scan(&[text.as_bytes()]);
    assert_eq!(out, "[    1.0] booting\r\n\r\nhello\r\n\n");
    assert_eq!(
        ev,
        vec![
            ChannelEvent::Guest(GuestEvent::Ready {
                init_start: 0.5,
                ready: 1.25
            }),
            ChannelEvent::Guest(GuestEvent::Exit(3)),
        ]
    );
}

#[test]
fn a_frame_split_across_reads_is_found() {
    let text = format!("x\n{NONCE} FAIL no root disk\r\ny");
    let bytes = text.as_bytes();
    let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
    let (out, ev) = scan(&chunks);
    assert_eq!(out, "x\ny");
    assert_eq!(
        ev,
        vec![ChannelEvent::Guest(GuestEvent::Fail("no root disk".into()))]
    );
}

/// What guest programs can print without the nonce never counts, and is shown as is.
#[test]
fn guest_output_cannot_forge_a_frame() {
    let wrong = "fedcba9876543210fedcba9876543210";
    let text = format!(
        "EXIT 0\nREADY 1 2\n{wrong} EXIT 0\n0123 EXIT 0\nmicrovm.nonce={NONCE} quiet\n\
         echo {NONCE} EXIT 0\n{NONCE}EXIT 0\n"
    );
    let (out, ev) = scan(&[text.as_bytes()]);
    assert_eq!(out, text, "everything is shown unchanged");
    assert!(ev.is_empty(), "no event from forged lines: {ev:?}");
}

#[test]
fn a_bad_or_overlong_frame_is_noise() {
    let long = "A".repeat(MAX_FRAME + 10);
    let text = format!("{NONCE} EXIT nope\n{NONCE} FAIL {long}\n");
    let (out, ev) = scan(&[text.as_bytes()]);
    assert_eq!(out, "");
    assert_eq!(ev[0], ChannelEvent::Malformed("EXIT nope".into()));
    match &ev[1] {
        ChannelEvent::Guest(GuestEvent::Fail(m)) => assert!(m.len() < MAX_FRAME),
        other => panic!("{other:?}"),
    }
}

/// A line that starts like the nonce is held back only until it diverges or the stream
/// goes quiet ([`FrameScanner::flush`]).
#[test]
fn a_held_prefix_is_shown_when_the_stream_pauses() {
    let mut s = FrameScanner::new(NONCE);
    let (mut out, mut ev) = (Vec::new(), Vec::new());
    s.feed(b"# ls\n0123", &mut out, &mut ev);
    assert_eq!(out, b"# ls\n");
    s.flush(&mut out);
    assert_eq!(out, b"# ls\n0123");
    s.feed(b"45 more\n", &mut out, &mut ev);
    assert_eq!(out, b"# ls\n012345 more\n");
    assert!(ev.is_empty());
}

#[test]
fn nonces_are_fresh_hex() {
    let a = new_nonce().expect("nonce");
    let b = new_nonce().expect("nonce");
    assert_eq!(a.len(), 32);
    assert!(a
        .bytes()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_ne!(a, b);
}

/// The relay over a real pty: a guest stand-in on the slave writes output and a frame;
/// the output (without the frame) reaches the writer, the frame the sink, input the guest.
#[test]
fn the_relay_splits_a_pty_stream() {
    use std::sync::mpsc;
    let pty = crate::console::open_pty().expect("pty");
    let (tx, rx) = mpsc::channel();
    let shared = Arc::new(std::sync::Mutex::new(Vec::new()));
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let (r, w) = rustix::pipe::pipe().expect("pipe");
    let detached = Arc::new(AtomicBool::new(false));
    let d2 = detached.clone();
    let ends = RelayEnds {
        output: Box::new(Sink(shared.clone())),
        input: Some(r),
        strip_escapes: true,
        on_detach: Some(Box::new(move || d2.store(true, Ordering::SeqCst))),
    };
    let mut relay = ConsoleRelay::start(pty.master, ends, Some(NONCE), move |e| {
        let _ = tx.send(e);
    })
    .expect("relay");
    let mut guest = File::from(pty.slave);
    File::from(w).write_all(b"typed\n\x1drest").expect("type");
    let mut got = [0u8; 6];
    guest.read_exact(&mut got).expect("guest reads");
    assert_eq!(&got, b"typed\n");
    write!(guest, "\x1bc\x1b[?7lboot\n{NONCE} EXIT 7\nbye\n").expect("guest writes");
    let ev = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("event");
    assert_eq!(ev, ChannelEvent::Guest(GuestEvent::Exit(7)));
    drop(guest);
    relay.finish(std::time::Duration::from_secs(5));
    assert_eq!(&*shared.lock().expect("lock"), b"boot\nbye\n");
    assert!(
        detached.load(Ordering::SeqCst),
        "Ctrl-] reached the callback"
    );
}

#[test]
fn escape_sequences_are_stripped() {
    let mut f = EscapeFilter::default();
    let mut out = Vec::new();
    // SeaBIOS's preamble, colours, a title (OSC with BEL and with ST), split mid-sequence.
    f.filter(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\n\x1b[1;3", &mut out);
    f.filter(b"1mred\x1b[0m \x1b]0;t\x07\x1b]2;t\x1b\\ok", &mut out);
    assert_eq!(out, b"SeaBIOS\r\nred ok");
    let mut out = Vec::new();
    f.filter(b"a\r\r\nb\r", &mut out);
    f.filter(b"\r\nc\rd", &mut out);
    assert_eq!(out, b"a\r\nb\r\nc\rd");
}
