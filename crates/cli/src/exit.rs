//! Exit codes, documented in docs/cli.md and the man page:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (for `run`: the guest's command exited 0, or the guest powered off cleanly) |
//! | 1 | an operational error (a file, tool or process failed) |
//! | 2 | bad command-line usage (from clap) |
//! | 3 | the definition is invalid |
//! | 4 | the definition is valid but the hypervisor cannot run it (unsupported feature, KVM required) |
//! | 78 | `supervise`, `run NAME`: the start was refused for a reason waiting cannot change |
//! | 121 | `run`: the guest init failed (it reported what failed and powered off) |
//! | 122 | `run`: the hypervisor did not stop within the shutdown timeout and was killed |
//!
//! `microvm run` in single-command mode exits with the guest command's own status.

/// The exit-code table, for `--help` and the man pages.
pub const EXIT_CODES_HELP: &str = "Exit codes:
  0    success; for `run`: the guest's command exited 0, or the guest powered off cleanly
  1    an operational error: a file (the definition file included), a tool or a process failed
  2    bad command-line usage
  3    the definition is invalid (every problem is printed), or an input it names is missing
  4    the definition is valid but the hypervisor cannot run it (an unsupported feature, or
       KVM required but unusable)
  78   `supervise`, `run NAME`: the start was refused for a reason waiting cannot change
       (an image locked by another VM, a port or interface taken); not started again
  121  `run`: the guest init failed (it printed what failed and powered off)
  122  `run`: the hypervisor did not stop within the shutdown timeout and was killed

`microvm run` in single-command mode exits with the guest command's own status.";

pub const OK: i32 = 0;
pub const FAILURE: i32 = 1;
pub const INVALID: i32 = 3;
pub const UNSUPPORTED: i32 = 4;

/// An error that carries its own exit code and has already been printed in full.
#[derive(Debug)]
pub struct Reported(pub i32);

impl std::fmt::Display for Reported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Reported {}

/// An unsupported-feature error (exit code 4).
#[derive(Debug)]
pub struct Unsupported(pub String);

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsupported {}

/// A bad command-line value found after parsing (exit code 2, like clap's own errors).
#[derive(Debug)]
pub struct Usage(pub String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub const USAGE: i32 = 2;

/// The error chain on one line, `outer: cause: root cause`, leaving out a cause that the
/// message before it already ends with (an error that prints its source itself).
pub fn chain_message(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain().map(ToString::to_string) {
        if out.is_empty() {
            out = cause;
        } else if !out.ends_with(&cause) {
            out = format!("{out}: {cause}");
        }
    }
    out
}

/// Prints an error chain once (`error: outer: cause: root cause`) and returns its code.
pub fn report(err: &anyhow::Error) -> i32 {
    if let Some(Reported(code)) = err.downcast_ref::<Reported>() {
        return *code;
    }
    eprintln!("error: {}", chain_message(err));
    let unsupported = |e: &(dyn std::error::Error + 'static)| {
        e.downcast_ref::<Unsupported>().is_some()
            || e.downcast_ref::<microvm_runner::PlanError>().is_some()
    };
    if err.chain().any(|e| e.downcast_ref::<Usage>().is_some()) {
        USAGE
    } else if err.chain().any(unsupported) {
        UNSUPPORTED
    } else {
        FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source itself, as thiserror's `{source}` does.
    #[derive(Debug)]
    struct Reading {
        source: std::io::Error,
    }

    impl std::fmt::Display for Reading {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "reading /k: {}", self.source)
        }
    }

    impl std::error::Error for Reading {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.source)
        }
    }

    #[test]
    fn a_cause_is_printed_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let err = anyhow::Error::new(Reading { source: io }).context("building vm1");
        let msg = chain_message(&err);
        assert_eq!(msg.matches("not found").count(), 1, "{msg}");
        assert!(msg.starts_with("building vm1: reading /k: "), "{msg}");
        let plain = anyhow::anyhow!("root cause").context("outer");
        assert_eq!(chain_message(&plain), "outer: root cause");
    }

    #[test]
    fn a_cause_is_said_once() {
        let io = std::io::Error::from_raw_os_error(28);
        let err = microvm_host::state::StateError::Io {
            op: "write",
            path: "/s/vm/status.json".into(),
            source: io,
        };
        let err = anyhow::Error::new(err).context("starting vm");
        assert_eq!(
            chain_message(&err),
            "starting vm: cannot write /s/vm/status.json: No space left on device (os error 28)"
        );
    }
}
