//! `status.json`: the supervisor's last known state of a VM.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// What `status.json` holds. The supervisor writes it at every transition; readers should
/// use [`Status::checked`] (or `VmDir::live_status`) so a supervisor that died without
/// writing reads as failed.
///
/// JSON: `{"state": "running", "supervisorPid": 12, "hypervisorPid": 13, "since": 1700000000,
/// "runner": "/var/lib/microvms/.store/…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(flatten)]
    pub state: VmState,
    /// The runner directory this state refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<PathBuf>,
}

/// A VM's lifecycle state. Times are seconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "state",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum VmState {
    /// The supervisor is setting up or the guest has not reported ready yet.
    Starting { supervisor_pid: u32, since: u64 },
    /// The hypervisor runs (and the guest reported ready, where it can).
    Running {
        supervisor_pid: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hypervisor_pid: Option<u32>,
        since: u64,
    },
    /// A graceful shutdown is in progress.
    Stopping { supervisor_pid: u32, since: u64 },
    /// Stopped on request or by a guest poweroff.
    Stopped {
        since: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
    },
    /// Ended abnormally (hypervisor crash, helper failure, supervisor gone).
    Failed {
        since: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        reason: String,
    },
}

impl VmState {
    /// The short name used in JSON and in listings: "starting", "running", …
    pub fn name(&self) -> &'static str {
        match self {
            VmState::Starting { .. } => "starting",
            VmState::Running { .. } => "running",
            VmState::Stopping { .. } => "stopping",
            VmState::Stopped { .. } => "stopped",
            VmState::Failed { .. } => "failed",
        }
    }

    /// The supervisor process of a live state.
    pub fn supervisor_pid(&self) -> Option<u32> {
        match self {
            VmState::Starting { supervisor_pid, .. }
            | VmState::Running { supervisor_pid, .. }
            | VmState::Stopping { supervisor_pid, .. } => Some(*supervisor_pid),
            VmState::Stopped { .. } | VmState::Failed { .. } => None,
        }
    }

    /// Whether a supervisor is (supposed to be) alive.
    pub fn is_live(&self) -> bool {
        self.supervisor_pid().is_some()
    }

    /// Whether `start` may start the VM from this state.
    pub fn can_start(&self) -> bool {
        !self.is_live()
    }

    /// Whether `stop` has something to stop.
    pub fn can_stop(&self) -> bool {
        self.is_live()
    }

    pub fn since(&self) -> u64 {
        match self {
            VmState::Starting { since, .. }
            | VmState::Running { since, .. }
            | VmState::Stopping { since, .. }
            | VmState::Stopped { since, .. }
            | VmState::Failed { since, .. } => *since,
        }
    }
}

impl Status {
    pub fn new(state: VmState) -> Status {
        Status {
            state,
            runner: None,
        }
    }

    /// This status, with a live state whose supervisor process no longer exists turned into
    /// `Failed { reason: "supervisor (pid N) is gone" }`.
    pub fn checked(self) -> Status {
        match self.state.supervisor_pid() {
            Some(pid) if !pid_alive(pid) => Status {
                state: VmState::Failed {
                    since: self.state.since(),
                    exit_code: None,
                    reason: format!(
                        "supervisor (pid {pid}) is gone; it was {}",
                        self.state.name()
                    ),
                },
                runner: self.runner,
            },
            _ => self,
        }
    }
}

/// Whether a process with this pid exists (kill(pid, 0); EPERM counts as alive).
pub fn pid_alive(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return false;
    };
    match rustix::process::test_kill_process(pid) {
        Ok(()) => true,
        Err(e) => e == rustix::io::Errno::PERM,
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
