use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::thread;

use super::*;

/// A fake qemu: sends the greeting, then answers each request line with `respond`
/// (which may emit events first). Returns the requests it saw.
fn fake_server(
    path: &Path,
    respond: impl Fn(&Value) -> Vec<String> + Send + 'static,
) -> thread::JoinHandle<Vec<Value>> {
    let listener = UnixListener::bind(path).expect("bind");
    thread::spawn(move || {
        let (stream, _) = listener.accept().expect("accept");
        let mut out = stream.try_clone().expect("clone");
        out.write_all(
            b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\r\n",
        )
        .expect("greeting");
        let mut seen = Vec::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let req: Value = serde_json::from_str(&line).expect("request is json");
            for reply in respond(&req) {
                if reply == "CLOSE" {
                    seen.push(req);
                    return seen;
                }
                out.write_all(reply.as_bytes()).expect("reply");
                out.write_all(b"\r\n").expect("crlf");
            }
            seen.push(req);
        }
        seen
    })
}

fn ok_reply(req: &Value) -> String {
    json!({ "return": {}, "id": req["id"] }).to_string()
}

#[test]
fn negotiates_and_skips_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("qmp.sock");
    let server = fake_server(&sock, |req| match req["execute"].as_str() {
        Some("system_powerdown") => vec![
            r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "POWERDOWN"}"#.into(),
            ok_reply(req),
        ],
        Some("query-status") => {
            vec![
                json!({"return": {"status": "running", "running": true}, "id": req["id"]})
                    .to_string(),
            ]
        }
        _ => vec![ok_reply(req)],
    });
    let mut c = QmpClient::connect(&sock, DEFAULT_TIMEOUT).expect("connect");
    assert_eq!(c.version["qemu"]["major"], 10);
    c.system_powerdown().expect("powerdown");
    assert_eq!(c.events.len(), 1);
    assert_eq!(
        c.wait_event("POWERDOWN", Duration::from_millis(10))
            .expect("event")
            .event,
        "POWERDOWN"
    );
    let status = c.execute("query-status", None).expect("status");
    assert_eq!(status["running"], true);
    drop(c);
    let seen = server.join().expect("server");
    let cmds: Vec<_> = seen
        .iter()
        .map(|r| r["execute"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        cmds,
        ["qmp_capabilities", "system_powerdown", "query-status"]
    );
}

#[test]
fn command_errors_are_typed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("qmp.sock");
    let _server = fake_server(&sock, |req| {
        match req["execute"].as_str() {
        Some("qmp_capabilities") => vec![ok_reply(req)],
        _ => vec![json!({"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": req["id"]}).to_string()],
    }
    });
    let mut c = QmpClient::connect(&sock, DEFAULT_TIMEOUT).expect("connect");
    let err = c
        .execute("nope", Some(json!({"a": 1})))
        .expect_err("must fail");
    assert!(matches!(err, QmpError::Command { ref class, .. } if class == "CommandNotFound"));
    assert_eq!(
        err.to_string(),
        "QMP command nope failed: CommandNotFound: The command nope has not been found"
    );
}

#[test]
fn quit_accepts_a_closed_connection_and_silence_times_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("qmp.sock");
    let _server = fake_server(&sock, |req| match req["execute"].as_str() {
        Some("qmp_capabilities") => vec![ok_reply(req)],
        Some("quit") => vec!["CLOSE".into()],
        _ => vec![],
    });
    let mut c = QmpClient::connect(&sock, Duration::from_millis(300)).expect("connect");
    let t = Instant::now();
    let err = c.execute("query-status", None).expect_err("no reply");
    assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(2));
    c.quit().expect("quit");
}

#[test]
fn connect_errors_name_the_socket() {
    let err = QmpClient::connect(Path::new("/nonexistent/q.sock"), DEFAULT_TIMEOUT)
        .expect_err("no socket");
    assert!(err.to_string().contains("/nonexistent/q.sock"), "{err}");
}

/// One real qemu (TCG, no kernel: it sits in firmware): the client handles the real
/// greeting, `query-status`, and `quit` ends the process.
#[test]
fn real_qemu_quit() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: qemu-system-x86_64 not found on PATH");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("q.sock");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-M",
            "microvm,pic=off,pit=off",
            "-nodefaults",
        ])
        .args([
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "none",
            "-m",
            "64",
            "-qmp",
        ])
        .arg(format!("unix:{},server,nowait", sock.display()))
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn qemu");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
    let mut c = QmpClient::connect(&sock, DEFAULT_TIMEOUT).expect("connect to qemu");
    assert!(c.version["qemu"]["major"].as_u64().is_some());
    let status = c.execute("query-status", None).expect("query-status");
    assert_eq!(status["running"], true);
    c.system_powerdown()
        .expect("powerdown is accepted (nothing handles it without a guest)");
    let t = Instant::now();
    c.quit().expect("quit");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("qemu did not exit after quit");
        }
        thread::sleep(Duration::from_millis(10));
    };
    eprintln!(
        "qemu exited {status} {:?} after quit; events {:?}",
        t.elapsed(),
        c.events
    );
    assert!(status.success());
}

/// A reply line without an end is read up to 1 MiB, then refused: it cannot grow the
/// supervisor's memory without bound.
#[test]
fn endless_reply_lines_are_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("qmp.sock");
    let _server = fake_server(&sock, |req| match req["execute"].as_str() {
        Some("query-status") => vec!["x".repeat(3 << 20)],
        _ => vec![ok_reply(req)],
    });
    let mut c = QmpClient::connect(&sock, DEFAULT_TIMEOUT).expect("connect");
    let err = c.execute("query-status", None).expect_err("too long");
    assert!(
        err.to_string()
            .contains("a reply line longer than 1024 KiB"),
        "{err}"
    );
}
