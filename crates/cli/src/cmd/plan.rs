//! `microvm plan`: the exact invocation, copy-pasteable, or as JSON. When this definition
//! was built, the plan names the real store paths of its kernel, initrd and root disk;
//! otherwise `$KERNEL`, `$INITRD` and `$STORE` stand for them, and the text says so.

use std::path::Path;

use anyhow::Context as _;
use microvm_runner::{render, Artifacts, HostFacts};

use super::{build, built, common};
use crate::cli::PlanArgs;
use crate::exit::OK;

const PLACEHOLDERS: &str =
    "# $KERNEL, $INITRD and $STORE stand for the kernel directory, the initrd and the
# root disk in the store, not built yet for this definition: `microvm build` builds
# them, and `microvm plan` then shows their paths.
";

pub fn run(args: &PlanArgs, state_dir: &Path) -> anyhow::Result<i32> {
    let loaded = common::load(&args.def, args.json)?;
    let hypervisor =
        common::parse_hypervisor(args.hypervisor.as_deref())?.unwrap_or(loaded.config.hypervisor);
    let host = if args.reference_host {
        HostFacts::reference()
    } else {
        common::host_facts()?
    };
    let found = build::store_root(args.store.as_deref(), state_dir)
        .ok()
        .and_then(|root| built::lookup(&root, &loaded));
    let mut config = loaded.config.clone();
    let artifacts = match found {
        Some((artifacts, params)) => {
            config.kernel_params.extend(params);
            artifacts
        }
        None => Artifacts::placeholders(),
    };
    let inv = microvm_runner::plan_for(hypervisor, &config, &artifacts, &host)
        .with_context(|| format!("planning {} for {hypervisor}", config.name))?;
    if args.json {
        println!("{}", render::to_json(&inv)?);
    } else {
        let text = render::render(&inv);
        print!("{text}");
        if ["$KERNEL", "$INITRD", "$STORE"]
            .iter()
            .any(|p| text.contains(p))
        {
            print!("{PLACEHOLDERS}");
        }
    }
    Ok(OK)
}
