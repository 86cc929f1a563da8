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
    let host = if args.reference_host {
        HostFacts::reference()
    } else {
        let mut host = common::host_facts()?;
        let detection = common::detect_version(hypervisor, &loaded.config, &mut host);
        eprintln!("microvm: version: {}", detection.describe(hypervisor));
        host
    };
    let inv = microvm_runner::plan_for(
        hypervisor,
        &loaded.config,
        &Artifacts::placeholders(),
        &host,
    )
    .with_context(|| format!("planning {} for {hypervisor}", loaded.config.name))?;
    if args.json {
        println!("{}", render::to_json(&inv)?);
    } else {
        print!("{}", render::render(&inv));
    }
    Ok(OK)
}
