//! Placeholder until this planner is written.

use microvm_spec::config::Config;

use crate::{Artifacts, HostFacts, Invocation, PlanError};

pub(crate) fn plan(config: &Config, _artifacts: &Artifacts, _host: &HostFacts) -> Result<Invocation, PlanError> {
    Err(PlanError::Invalid { hypervisor: config.hypervisor, message: "planner not written yet".into() })
}
