//! Hypervisor knowledge. [`plan`] is a pure function from a resolved configuration, the
//! paths of the built artifacts and a few host facts to an [`Invocation`]: the program
//! and argv (never a shell string), generated files, helper daemons, the control socket
//! and how to shut the guest down. Unsupported features are typed errors raised here,
//! before anything starts.
//!
//! Each planner renders one device kind per function (`store_disk`, `volumes`, `shares`,
//! `interfaces`, `vsock`, `balloon`, `passthrough`, …) into an `argv::Out`, and `plan`
//! only calls them in the order the hypervisor wants. A new device kind is a row in
//! [`caps::TABLE`] (refused or ignored where a hypervisor lacks it) and one function per
//! planner that has it; a new hypervisor is a column in that table, a module with its
//! `plan`, an arm in [`plan_for`], and its binary and version argument in [`detect`].
//! Hypervisor versions are host facts ([`HostFacts::versions`]): [`detect`] finds them at
//! the edge, so planning stays pure.
#![forbid(unsafe_code)]

pub mod caps;
pub mod detect;
pub mod host_scripts;
pub mod invocation;
pub mod kv;
pub mod package;
pub mod quote;
pub mod render;
pub mod version;

mod alioth;
mod argv;
mod cloud_hypervisor;
mod common;
mod crosvm;
mod firecracker;
mod kvmtool;
mod qemu;
mod stratovirt;
#[cfg(test)]
mod tap_bridge_tests;
#[cfg(test)]
mod testutil;
mod virtiofsd;

pub use common::NOTIFY_VSOCK;
pub use invocation::*;

use microvm_spec::config::Config;
use microvm_spec::types::Hypervisor;

/// Plans how `config.hypervisor` runs this VM.
pub fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    plan_for(config.hypervisor, config, artifacts, host)
}

/// Plans how a given hypervisor would run this VM (the original's `runner.<hv>`).
pub fn plan_for(
    hypervisor: Hypervisor,
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    caps::check(hypervisor, config)?;
    // Only qemu can run without KVM (TCG); the others would fail at start.
    if !host.kvm && hypervisor != Hypervisor::Qemu && hypervisor != Hypervisor::Vfkit {
        return Err(PlanError::Unsupported {
            hypervisor,
            feature: "running without KVM".into(),
            reason: "KVM is not usable on this host; only qemu can run without it (TCG)".into(),
        });
    }
    let mut invocation = match hypervisor {
        Hypervisor::Qemu => qemu::plan(config, artifacts, host),
        Hypervisor::CloudHypervisor => cloud_hypervisor::plan(config, artifacts, host),
        Hypervisor::Firecracker => firecracker::plan(config, artifacts, host),
        Hypervisor::Crosvm => crosvm::plan(config, artifacts, host),
        Hypervisor::Kvmtool => kvmtool::plan(config, artifacts, host),
        Hypervisor::Stratovirt => stratovirt::plan(config, artifacts, host),
        Hypervisor::Alioth => alioth::plan(config, artifacts, host),
        Hypervisor::Vfkit => Err(PlanError::Unsupported {
            hypervisor,
            feature: "Linux hosts".into(),
            reason: "vfkit runs on macOS only".into(),
        }),
    }?;
    common::console_channel(config, &mut invocation);
    // The capability table's warnings (ignored features) come first, then the planner's
    // own; a planner may repeat one of the table's without it appearing twice.
    let mut warnings = caps::warnings(hypervisor, config);
    for w in std::mem::take(&mut invocation.warnings) {
        if !warnings.contains(&w) {
            warnings.push(w);
        }
    }
    invocation.warnings = warnings;
    // The definition's own steps: `preStart` before the planner's (as `microvm-run`
    // always ran it), `extraArgsScript` last, right before the hypervisor starts.
    if !config.pre_start.is_empty() {
        let script = config.pre_start.clone();
        invocation.pre_start.insert(0, PreStart::Shell(script));
    }
    if let Some(cmd) = &config.extra_args_script {
        invocation.pre_start.push(PreStart::ExtraArgs(cmd.clone()));
    }
    Ok(invocation)
}
