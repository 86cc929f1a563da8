//! A minimal synchronous QMP client: greeting, `qmp_capabilities`, then commands whose
//! replies are matched by `id`; asynchronous events in between are collected, not lost.

use std::io::{BufRead, BufReader, Read as _, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The longest QMP message line read (qemu's replies are a few KiB).
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {}", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("QMP socket {}: no reply within {timeout:?}", path.display())]
    Timeout { path: PathBuf, timeout: Duration },
    #[error("QMP socket {}: the connection closed", path.display())]
    Closed { path: PathBuf },
    #[error("QMP socket {}: unexpected message {message}", path.display())]
    Protocol { path: PathBuf, message: String },
    #[error("QMP command {command} failed: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

/// An asynchronous QMP event (`SHUTDOWN`, `POWERDOWN`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub event: String,
    pub data: Value,
}

/// A connected QMP session in command mode.
#[derive(Debug)]
pub struct QmpClient {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    timeout: Duration,
    next_id: u64,
    /// The greeting's `QMP.version` object.
    pub version: Value,
    /// Events seen while waiting for replies, oldest first.
    pub events: Vec<QmpEvent>,
}

/// Default time to wait for the greeting or a reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl QmpClient {
    /// Connects, reads the greeting and negotiates capabilities (command mode).
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QmpError> {
        let stream = crate::unixpath::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_owned(),
            source,
        })?;
        let io = |source| QmpError::Io {
            path: path.to_owned(),
            source,
        };
        let writer = stream.try_clone().map_err(io)?;
        let mut client = QmpClient {
            path: path.to_owned(),
            reader: BufReader::new(stream),
            writer,
            timeout,
            next_id: 0,
            version: Value::Null,
            events: Vec::new(),
        };
        let deadline = Instant::now() + timeout;
        let greeting = client.read_message(deadline)?;
        match greeting.get("QMP") {
            Some(qmp) => client.version = qmp.get("version").cloned().unwrap_or(Value::Null),
            None => return Err(client.protocol(&greeting)),
        }
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// Runs `command` with optional `arguments` and returns its `return` value. Events
    /// that arrive first are kept in [`QmpClient::events`].
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            request["arguments"] = args;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QmpError::Io {
                path: self.path.clone(),
                source,
            })?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let msg = self.read_message(deadline)?;
            if msg.get("event").is_some() {
                continue; // recorded in self.events
            }
            if msg.get("id").and_then(Value::as_u64) != Some(id) {
                return Err(self.protocol(&msg));
            }
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(&msg));
        }
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// `quit`: qemu exits at once. A connection closed before the reply counts as done.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until an event named `name` arrives (or was already seen).
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent, QmpError> {
        if let Some(i) = self.events.iter().position(|e| e.event == name) {
            return Ok(self.events.remove(i));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let msg = self.read_message(deadline)?;
            if msg.get("event").and_then(Value::as_str) == Some(name) {
                if let Some(e) = self.events.pop() {
                    return Ok(e);
                }
            }
        }
    }

    /// Reads one JSON message; events are recorded and also returned.
    fn read_message(&mut self, deadline: Instant) -> Result<Value, QmpError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    timeout: self.timeout,
                });
            }
            self.reader
                .get_ref()
                .set_read_timeout(Some(left))
                .map_err(|source| QmpError::Io {
                    path: self.path.clone(),
                    source,
                })?;
            let mut line = String::new();
            // Bounded: a hypervisor that never ends its line cannot grow our memory.
            match (&mut self.reader).take(MAX_LINE + 1).read_line(&mut line) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(QmpError::Timeout {
                        path: self.path.clone(),
                        timeout: self.timeout,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                    })
                }
                Err(source) => {
                    return Err(QmpError::Io {
                        path: self.path.clone(),
                        source,
                    })
                }
            }
            if line.len() as u64 > MAX_LINE {
                return Err(QmpError::Protocol {
                    path: self.path.clone(),
                    message: format!("(a reply line longer than {} KiB)", MAX_LINE >> 10),
                });
            }
            if line.trim().is_empty() {
                continue;
            }
            let msg: Value = serde_json::from_str(line.trim()).map_err(|_| QmpError::Protocol {
                path: self.path.clone(),
                message: line.trim().to_string(),
            })?;
            if let Some(event) = msg.get("event").and_then(Value::as_str) {
                let data = msg.get("data").cloned().unwrap_or(Value::Null);
                self.events.push(QmpEvent {
                    event: event.to_string(),
                    data,
                });
            }
            return Ok(msg);
        }
    }

    fn protocol(&self, msg: &Value) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            message: msg.to_string(),
        }
    }
}

#[cfg(test)]
#[path = "qmp_tests.rs"]
mod tests;
