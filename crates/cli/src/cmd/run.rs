//! `microvm run` (being written).

use crate::cli::RunArgs;

pub fn run(_args: &RunArgs) -> anyhow::Result<i32> {
    anyhow::bail!("`microvm run` is not available yet")
}
