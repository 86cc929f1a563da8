//! `microvm plan`: the exact invocation, copy-pasteable, or as JSON.

use anyhow::Context as _;
use microvm_runner::{render, Artifacts, HostFacts};

use super::common;
use crate::cli::PlanArgs;
use crate::exit::OK;

pub fn run(args: &PlanArgs) -> anyhow::Result<i32> {
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
    let inv = microvm_runner::plan_for(
        hypervisor,
        &loaded.config,
        &Artifacts::placeholders(),
        &host,
    )
    .with_context(|| format!("planning {} for {hypervisor}", loaded.config.name))?;
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
        print!("{}", render::render(&inv));
    }
    Ok(OK)
}
