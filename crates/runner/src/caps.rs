//! Placeholder until the capability table is written.

use microvm_spec::config::Config;
use microvm_spec::types::Hypervisor;

use crate::PlanError;

pub fn check(_hypervisor: Hypervisor, _config: &Config) -> Result<(), PlanError> {
    Ok(())
}
