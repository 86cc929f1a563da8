//! How a supervised run ended, in words and as an exit code (the supervisor's log lines,
//! `status`, and the process's own exit status).

use std::process::ExitStatus;

use crate::supervise::RunOutcome;

/// 128 + signal, or the exit code.
pub fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

pub(super) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!(
            "signal {s} ({})",
            signal_hook::low_level::signal_name(s).unwrap_or("?")
        ),
        _ => status.to_string(),
    }
}

pub(super) fn describe(o: &RunOutcome) -> String {
    if let Some(h) = &o.helper_failure {
        return h.clone();
    }
    if let Some(m) = &o.guest_failure {
        return format!("the guest init failed: {m}");
    }
    if let Some(n) = o.guest_exit {
        return format!("the guest command exited with {n}");
    }
    if o.forced {
        return "the hypervisor did not stop in time and was killed".into();
    }
    if o.shutdown_requested {
        return "stopped on request".into();
    }
    if o.hypervisor_status.success() {
        return "the guest powered off".into();
    }
    format!(
        "the hypervisor ended with {}",
        describe_status(o.hypervisor_status)
    )
}
