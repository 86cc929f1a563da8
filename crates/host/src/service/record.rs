//! `run.json`: the details of the supervisor's current (or last) run, next to helper A's
//! `status.json` (which holds only the lifecycle state): pids, readiness, helpers, taps,
//! restarts, the last exit. Written atomically at every change.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{write_atomic, StateError, VmDir};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunRecord {
    pub supervisor_pid: u32,
    /// 1 for the first start; restarts by the supervisor's own policy count up.
    pub attempt: u32,
    /// When this attempt started (seconds since the epoch).
    pub started: u64,
    pub runner: Option<PathBuf>,
    pub hypervisor: String,
    pub hypervisor_pid: Option<u32>,
    /// The user the hypervisor runs as.
    pub user: String,
    /// When the guest reported ready, and how long after the hypervisor started.
    pub ready: Option<u64>,
    pub ready_after_ms: Option<u64>,
    pub helpers: Vec<HelperRecord>,
    pub interfaces: Vec<String>,
    pub last_exit: Option<ExitRecord>,
    /// When the supervisor will start the VM again (restart policy), if it will.
    pub next_restart: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HelperRecord {
    pub name: String,
    pub pid: u32,
    pub restarts: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    pub code: i32,
    pub reason: String,
    pub at: u64,
    /// Set when the start was refused for a reason waiting cannot change: the supervisor
    /// did not start the VM again ([`super::refusal`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<super::refusal::Refusal>,
}

pub fn path(vm: &VmDir) -> PathBuf {
    vm.path().join("run.json")
}

pub fn read(vm: &VmDir) -> Option<RunRecord> {
    read_path(&path(vm))
}

fn read_path(p: &Path) -> Option<RunRecord> {
    // Only root's own record, bounded: the directory is writable by the hypervisors' group.
    let bytes = crate::trust::read_owned(p, 1 << 20).ok()??;
    serde_json::from_slice(&bytes).ok()
}

pub fn write(vm: &VmDir, r: &RunRecord) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(r).unwrap_or_default();
    bytes.push(b'\n');
    write_atomic(&path(vm), &bytes)
}
