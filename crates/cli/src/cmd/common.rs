//! Shared by the verbs: loading a definition (printing its diagnostics) and host facts.

use anyhow::anyhow;
use microvm_spec::types::{Hypervisor, VmName};
use microvm_spec::{LoadOptions, Loaded};

use crate::cli::DefinitionArgs;
use crate::exit::{Reported, INVALID};

/// Loads the definition; on failure prints every diagnostic and fails with exit code 3.
/// Warnings are printed to stderr unless `quiet`.
pub fn load(def: &DefinitionArgs, quiet: bool) -> anyhow::Result<Loaded> {
    let name = def
        .name
        .as_deref()
        .map(|n| n.parse::<VmName>().map_err(|e| anyhow!("--name: {e}")))
        .transpose()?;
    let options = LoadOptions { name, arch: None };
    match microvm_spec::load_with(&def.file, &options) {
        Ok(loaded) => {
            if !quiet && !loaded.warnings.is_empty() {
                eprint!("{}", loaded.sources.render(&loaded.warnings));
            }
            Ok(loaded)
        }
        Err(failure) => {
            if !quiet {
                eprint!("{}", failure.render());
                eprintln!("error: {}: {failure}", def.file.display());
            }
            Err(Reported(INVALID).into())
        }
    }
}

pub fn parse_hypervisor(name: Option<&str>) -> anyhow::Result<Option<Hypervisor>> {
    name.map(|n| {
        n.parse::<Hypervisor>()
            .map_err(|e| anyhow!("--hypervisor: {e}"))
    })
    .transpose()
}

/// Probes the facts of this host that plans depend on.
pub fn host_facts() -> anyhow::Result<microvm_runner::HostFacts> {
    Ok(probe_host().0)
}

/// The host facts, and the KVM probe they came from (for its reason).
pub fn probe_host() -> (microvm_runner::HostFacts, microvm_host::kvm::KvmProbe) {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let kvm = microvm_host::kvm::probe();
    let facts = microvm_runner::HostFacts {
        nproc,
        is_root: is_root(),
        kvm: kvm.status.is_usable(),
        tsc_khz: microvm_host::kvm::tsc_khz(),
        versions: Vec::new(),
    };
    (facts, kvm)
}

/// Whether microvm runs as root.
pub fn is_root() -> bool {
    std::env::var_os("MICROVM_ASSUME_ROOT").is_some()
        || std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
}
