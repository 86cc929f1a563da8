//! Running managed VMs as services: start, stop, restart, shutdown, status, logs,
//! console, the supervisor, and `host install`. (Being written.)

use std::path::Path;

use crate::cli::{HostInstallArgs, LogsArgs, NameArgs, NamesArgs, SuperviseArgs};

pub fn start(_state: &Path, _args: &NamesArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm start` is not available yet")
}
pub fn stop(_state: &Path, _args: &NamesArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm stop` is not available yet")
}
pub fn restart(_state: &Path, _args: &NamesArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm restart` is not available yet")
}
pub fn shutdown(_state: &Path, _args: &NamesArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm shutdown` is not available yet")
}
pub fn status(_state: &Path, _args: &NameArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm status` is not available yet")
}
pub fn logs(_state: &Path, _args: &LogsArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm logs` is not available yet")
}
pub fn console(_state: &Path, _args: &NameArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm console` is not available yet")
}
pub fn supervise(_state: &Path, _args: &SuperviseArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm supervise` is not available yet")
}
pub fn host_install(_state: &Path, _args: &HostInstallArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm host install` is not available yet")
}
