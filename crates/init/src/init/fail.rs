//! Failure handling: every error becomes one console line
//! `microvm-init: <what failed>: <error>`, a `FAIL` message on the control channel, and a
//! poweroff. A panic takes the same path.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use microvm_init::plan::ControlChannel;

use super::{console, control, power};

/// What failed, and why.
#[derive(Debug)]
pub struct Failure {
    what: String,
    cause: String,
}

impl Failure {
    pub fn new(what: impl Into<String>, cause: impl Into<String>) -> Failure {
        Failure {
            what: what.into(),
            cause: cause.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.cause)
    }
}

/// Attaches "what was being done" to any displayable error.
pub trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Failure>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T, Failure> {
        self.map_err(|e| Failure::new(what(), e.to_string()))
    }
}

/// The plan's control channel, kept so that a failure before the channel was opened can
/// still try to report on it.
static CONTROL: Mutex<Option<ControlChannel>> = Mutex::new(None);

pub fn remember_control(channel: Option<ControlChannel>) {
    if let Ok(mut slot) = CONTROL.lock() {
        *slot = channel;
    }
}

/// Reports `failure` everywhere it can and powers off. Never returns.
pub fn fatal(failure: &Failure) -> ! {
    report(&failure.to_string());
    power::off()
}

fn report(message: &str) {
    console::say(&format!("microvm-init: {message}"));
    if !control::is_open() {
        let spec = CONTROL.try_lock().ok().and_then(|slot| slot.clone());
        if let Some(spec) = spec {
            let _ = control::open(&spec, Duration::from_secs(1));
        }
    }
    let line: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    control::send(&format!("FAIL {line}"));
}

/// A panic in PID 1 would panic the kernel: print it, report it, power off instead.
/// No backtrace: the init is linked without unwind tables (crates/image/init-link.ld).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        report(&format!("panic: {info}"));
        power::off()
    }));
}
