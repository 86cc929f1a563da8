//! Managed VMs in the state directory: create, update, list, remove, gc, host apply.
//! (Being written.)

use std::path::Path;

use crate::cli::{CreateArgs, GcArgs, HostApplyArgs, ListArgs, RemoveArgs, UpdateArgs};

pub fn create(_state: &Path, _args: &CreateArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm create` is not available yet")
}
pub fn update(_state: &Path, _args: &UpdateArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm update` is not available yet")
}
pub fn list(_state: &Path, _args: &ListArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm list` is not available yet")
}
pub fn remove(_state: &Path, _args: &RemoveArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm remove` is not available yet")
}
pub fn gc(_state: &Path, _args: &GcArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm gc` is not available yet")
}
pub fn host_apply(_state: &Path, _args: &HostApplyArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm host apply` is not available yet")
}
