//! One HTTP/1.1 request over a unix socket: enough for cloud-hypervisor's
//! `PUT /api/v1/vm.power-button` and firecracker's `PUT /actions` shutdown requests.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the API socket {}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("API socket {}: malformed response {line:?}", path.display())]
    Malformed { path: PathBuf, line: String },
    #[error("{method} {uri} on {}: HTTP {status}: {body}", path.display())]
    Status {
        path: PathBuf,
        method: String,
        uri: String,
        status: u16,
        body: String,
    },
}

/// A response's status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

/// Formats a request with `Connection: close`, so the response ends at EOF.
pub fn format_request(method: &str, uri: &str, body: Option<&str>) -> String {
    let mut req = format!(
        "{method} {uri} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    match body {
        Some(b) => {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        }
        None => req.push_str("Content-Length: 0\r\n\r\n"),
    }
    req
}

/// Parses the status code and the body (everything after the blank line, up to
/// `Content-Length` when given) of a raw response.
pub fn parse_response(raw: &[u8]) -> Option<Response> {
    // Split and cut on bytes, then decode: slicing a lossily decoded string at a byte
    // count could fall inside a character and panic.
    let (head, body) = split_head(raw).unwrap_or((raw, &[]));
    let head = String::from_utf8_lossy(head);
    let status_line = head.lines().next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    let body = match content_length(&head) {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    Some(Response {
        status,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// The head and the body of a raw response, split at the first blank line.
fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&raw[..at], &raw[at + 4..]))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    })
}

/// The largest response read from a hypervisor's API socket.
const MAX_RESPONSE: usize = 4 << 20;

/// Sends one request and returns the response; a status outside 2xx is an error.
pub fn request(
    socket: &Path,
    method: &str,
    uri: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let io = |source| ApiError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = crate::unixpath::connect(socket).map_err(|source| ApiError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream
        .write_all(format_request(method, uri, body).as_bytes())
        .map_err(io)?;
    let deadline = Instant::now() + timeout;
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(resp) = complete(&raw) {
            return check(socket, method, uri, resp);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io(std::io::ErrorKind::TimedOut.into()));
        }
        stream.set_read_timeout(Some(left)).map_err(io)?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if raw.len() + n > MAX_RESPONSE => {
                return Err(ApiError::Malformed {
                    path: socket.to_owned(),
                    line: format!("(a response larger than {} MiB)", MAX_RESPONSE >> 20),
                })
            }
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(io(std::io::ErrorKind::TimedOut.into()))
            }
            Err(e) => return Err(io(e)),
        }
    }
    match parse_response(&raw) {
        Some(resp) => check(socket, method, uri, resp),
        None => Err(ApiError::Malformed {
            path: socket.to_owned(),
            line: String::from_utf8_lossy(&raw)
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        }),
    }
}

/// A response whose headers and `Content-Length` body have fully arrived (servers that
/// keep the connection open despite `Connection: close` are not waited for).
fn complete(raw: &[u8]) -> Option<Response> {
    let (head, body) = split_head(raw)?;
    let head = String::from_utf8_lossy(head);
    let len = content_length(&head);
    let status: u16 = head.split_whitespace().nth(1)?.parse().ok()?;
    // 204 and 1xx have no body.
    let len = if status == 204 || status < 200 {
        Some(0)
    } else {
        len
    };
    (body.len() >= len?).then(|| parse_response(raw)).flatten()
}

fn check(socket: &Path, method: &str, uri: &str, resp: Response) -> Result<Response, ApiError> {
    if (200..300).contains(&resp.status) {
        Ok(resp)
    } else {
        Err(ApiError::Status {
            path: socket.to_owned(),
            method: method.to_string(),
            uri: uri.to_string(),
            status: resp.status,
            body: resp.body.trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::BufRead;
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn formats_put_with_json_body() {
        let r = format_request(
            "PUT",
            "/actions",
            Some(r#"{"action_type":"SendCtrlAltDel"}"#),
        );
        assert_eq!(
            r,
            "PUT /actions HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
             Connection: close\r\nContent-Type: application/json\r\nContent-Length: 32\r\n\r\n\
             {\"action_type\":\"SendCtrlAltDel\"}"
        );
        let r = format_request("PUT", "/api/v1/vm.power-button", None);
        assert!(r.ends_with("Content-Length: 0\r\n\r\n"), "{r}");
    }

    #[test]
    fn parses_responses() {
        let r = parse_response(b"HTTP/1.1 204 No Content\r\nServer: Firecracker API\r\n\r\n");
        assert_eq!(
            r,
            Some(Response {
                status: 204,
                body: String::new()
            })
        );
        let r = parse_response(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 5\r\n\r\noops!extra");
        assert_eq!(
            r,
            Some(Response {
                status: 400,
                body: "oops!".into()
            })
        );
        assert_eq!(parse_response(b"garbage"), None);
    }

    /// A server that keeps the connection open after answering: the client returns once
    /// the response is complete, without waiting for EOF.
    /// A `Content-Length` that ends inside a multi-byte character (or invalid UTF-8) once
    /// panicked: the lossy text was sliced at a byte count.
    #[test]
    fn content_length_inside_a_character_does_not_panic() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n\xc3\xa9\xc3\xa9")
            .expect("parses");
        assert_eq!(r.body, "\u{e9}");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n\xc3\xa9")
            .expect("parses");
        assert_eq!(r.body, "\u{fffd}");
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\xff\xfeab")
            .expect("parses");
        assert_eq!(r.body, "\u{fffd}\u{fffd}a");
        assert!(complete(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n\xc3\xa9").is_some());
    }

    #[test]
    fn request_against_a_fake_server() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        let server = std::thread::spawn(move || {
            let (s, _) = listener.accept().expect("accept");
            let mut out = s.try_clone().expect("clone");
            let mut reader = std::io::BufReader::new(s);
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("read");
                if line == "\r\n" {
                    break;
                }
                head.push(line);
            }
            let mut body = [0u8; 2];
            reader.read_exact(&mut body).expect("body");
            out.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .expect("write");
            std::thread::sleep(Duration::from_millis(1200));
            (head, body)
        });
        let t = Instant::now();
        let resp = request(
            &sock,
            "PUT",
            "/vm.shutdown",
            Some("{}"),
            Duration::from_secs(5),
        )
        .expect("request");
        assert_eq!(resp.status, 204);
        assert!(t.elapsed() < Duration::from_secs(1));
        let (head, body) = server.join().expect("server");
        assert_eq!(head[0], "PUT /vm.shutdown HTTP/1.1\r\n");
        assert_eq!(&body, b"{}");
    }

    #[test]
    fn errors_carry_status_and_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("api.sock");
        let listener = UnixListener::bind(&sock).expect("bind");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ =
                s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 11\r\n\r\nnot booted\n");
        });
        let err = request(&sock, "PUT", "/x", None, Duration::from_secs(5)).expect_err("400");
        let msg = err.to_string();
        assert!(
            msg.contains("HTTP 400: not booted") && msg.contains("api.sock"),
            "{msg}"
        );
    }
}
