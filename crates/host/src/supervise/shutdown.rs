//! Asking the guest to power off, per [`Shutdown`] method. Runs on its own thread so a
//! hypervisor that does not answer never delays a forced stop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use microvm_runner::Shutdown;

use crate::{api, qmp};

/// How long one graceful request (connect + reply) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What the supervisor must do itself after the request (a signal to the hypervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The request was delivered; wait for the hypervisor to exit.
    Requested,
    /// Send this signal to the hypervisor.
    Signal(i32),
}

/// A short description for progress messages.
pub(crate) fn describe(method: &Shutdown) -> String {
    match method {
        Shutdown::Qmp { command, .. } => format!("QMP {command}"),
        Shutdown::Http { method, path, .. } => format!("{method} {path}"),
        Shutdown::CrosvmPowerButton { .. } => "crosvm powerbtn".into(),
        Shutdown::Signal { signal } => signal.clone(),
    }
}

/// Performs the graceful request. `Err` carries a message; the caller falls back to
/// SIGTERM on the hypervisor.
pub fn request(method: &Shutdown, workdir: &Path, program: &str) -> Result<Action, String> {
    match method {
        Shutdown::Qmp { socket, command } => {
            let path = workdir.join(socket);
            let mut c = qmp::QmpClient::connect(&path, REQUEST_TIMEOUT)
                .map_err(|e| crate::error_chain(&e))?;
            if command == "quit" {
                c.quit().map_err(|e| crate::error_chain(&e))?;
            } else {
                c.execute(command, None)
                    .map_err(|e| crate::error_chain(&e))?;
            }
            Ok(Action::Requested)
        }
        Shutdown::Http {
            socket,
            method,
            path,
            body,
        } => {
            let sock = workdir.join(socket);
            api::request(&sock, method, path, body.as_deref(), REQUEST_TIMEOUT)
                .map_err(|e| crate::error_chain(&e))?;
            Ok(Action::Requested)
        }
        Shutdown::CrosvmPowerButton { socket } => {
            crosvm_powerbtn(program, &workdir.join(socket))?;
            Ok(Action::Requested)
        }
        Shutdown::Signal { signal } => super::prepare::parse_signal(signal)
            .map(Action::Signal)
            .ok_or_else(|| format!("unknown signal {signal:?}")),
    }
}

/// `crosvm powerbtn SOCKET`, bounded by [`REQUEST_TIMEOUT`].
fn crosvm_powerbtn(program: &str, socket: &PathBuf) -> Result<(), String> {
    let mut child = Command::new(program)
        .arg("powerbtn")
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program} powerbtn: {e}"))?;
    let end = Instant::now() + REQUEST_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(format!(
                    "{program} powerbtn exited with {s}: {}",
                    err.trim()
                ));
            }
            Ok(None) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} powerbtn did not finish in {REQUEST_TIMEOUT:?}"
                ));
            }
        }
    }
}
