//! placeholder
use crate::cli::HostApplyArgs;
use std::path::Path;
pub fn host_apply(_state: &Path, _args: &HostApplyArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm host apply` is not available yet")
}
