use std::io::Write;

use super::*;

#[test]
fn parses_protocol_lines() {
    assert_eq!(
        parse_line("READY 1.640 2.120"),
        Some(GuestEvent::Ready {
            init_start: 1.64,
            ready: 2.12
        })
    );
    assert_eq!(parse_line("EXIT 3\r\n"), Some(GuestEvent::Exit(3)));
    assert_eq!(parse_line("EXIT -1"), Some(GuestEvent::Exit(-1)));
    assert_eq!(
        parse_line("FAIL mount /dev/vda: No such device"),
        Some(GuestEvent::Fail("mount /dev/vda: No such device".into()))
    );
    assert_eq!(parse_line("FAIL"), Some(GuestEvent::Fail(String::new())));
    assert_eq!(parse_line("READY 1.0"), None);
    assert_eq!(parse_line("READY a b"), None);
    assert_eq!(parse_line("EXIT x"), None);
    assert_eq!(parse_line("hello"), None);
}

fn collect(rx: &Receiver<ChannelEvent>, n: usize) -> Vec<ChannelEvent> {
    (0..n)
        .map_while(|_| rx.recv_timeout(Duration::from_secs(5)).ok())
        .collect()
}

#[test]
fn virtio_serial_waits_for_the_socket_then_reads_split_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = ControlChannel::VirtioSerial {
        socket: "control.sock".into(),
        port: "microvm".into(),
    };
    let (mut reader, rx) =
        ControlReader::start_mpsc(&ch, dir.path(), Duration::from_secs(5)).expect("start");
    assert_eq!(reader.created_socket(), None);
    // The "hypervisor" creates its socket a little later.
    std::thread::sleep(Duration::from_millis(150));
    let listener = UnixListener::bind(dir.path().join("control.sock")).expect("bind");
    let (mut s, _) = listener.accept().expect("accept");
    s.write_all(b"READY 0.5").expect("w");
    std::thread::sleep(Duration::from_millis(120)); // across a read timeout
    s.write_all(b"0 1.25\nnoise\nEXIT 7\n").expect("w");
    let got = collect(&rx, 4);
    assert_eq!(
        got,
        [
            ChannelEvent::Connected,
            ChannelEvent::Guest(GuestEvent::Ready {
                init_start: 0.5,
                ready: 1.25
            }),
            ChannelEvent::Malformed("noise".into()),
            ChannelEvent::Guest(GuestEvent::Exit(7)),
        ]
    );
    let t = Instant::now();
    reader.stop();
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[test]
fn virtio_serial_gives_up_after_the_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ch = ControlChannel::VirtioSerial {
        socket: "never.sock".into(),
        port: "p".into(),
    };
    let (_reader, rx) =
        ControlReader::start_mpsc(&ch, dir.path(), Duration::from_millis(200)).expect("start");
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(ChannelEvent::Failed(msg)) => assert!(msg.contains("never.sock"), "{msg}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hybrid_vsock_listens_on_socket_underscore_port() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("vsock.sock_1234"), "stale").expect("stale file");
    let ch = ControlChannel::HybridVsock {
        socket: "vsock.sock".into(),
        port: 1234,
    };
    let (mut reader, rx) =
        ControlReader::start_mpsc(&ch, dir.path(), Duration::from_secs(1)).expect("start");
    let path = dir.path().join("vsock.sock_1234");
    assert_eq!(reader.created_socket(), Some(path.as_path()));
    let mut s = UnixStream::connect(&path).expect("connect");
    s.write_all(b"FAIL no root\n").expect("w");
    drop(s);
    assert_eq!(
        collect(&rx, 2),
        [
            ChannelEvent::Connected,
            ChannelEvent::Guest(GuestEvent::Fail("no root".into()))
        ]
    );
    reader.stop();
    assert!(!path.exists(), "the listener socket is removed");
}
