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
    let (host, version) = if args.reference_host {
        (HostFacts::reference(), None)
    } else {
        let mut host = common::host_facts()?;
        let detection = common::detect_version(hypervisor, &loaded.config, &mut host);
        if !args.json {
            eprintln!("microvm: version: {}", detection.describe(hypervisor));
        }
        (host, Some(detection))
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
        // The invocation, and which hypervisor version it is for.
        let mut json = serde_json::to_value(&inv)?;
        json["version"] = serde_json::json!({
            "version": version.as_ref().and_then(|d| d.version()).map(|v| v.to_string()),
            "source": version.as_ref().map_or_else(
                || "reference host: the newest syntax".to_owned(),
                |d| d.describe(hypervisor),
            ),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
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
