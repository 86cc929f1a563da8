//! `microvm check`: validity, warnings, and which hypervisors can run the VM.

use microvm_runner::caps;
use microvm_spec::types::Hypervisor;
use serde::Serialize;

use super::common;
use crate::cli::CheckArgs;
use crate::exit::{Reported, INVALID, OK, UNSUPPORTED};

#[derive(Serialize)]
struct Report {
    file: String,
    valid: bool,
    diagnostics: Vec<microvm_spec::diag::DiagnosticJson>,
    hypervisors: Vec<HypervisorReport>,
}

#[derive(Serialize)]
struct HypervisorReport {
    hypervisor: Hypervisor,
    supported: bool,
    /// Which version the plan is for, and where that came from.
    version: String,
    errors: Vec<String>,
    warnings: Vec<String>,
}

pub fn run(args: &CheckArgs) -> anyhow::Result<i32> {
    let wanted = common::parse_hypervisor(args.hypervisor.as_deref())?;
    if args.json {
        return json(args, wanted);
    }
    let loaded = common::load_with_inputs(&args.def, false)?;
    let config = &loaded.config;
    let targets: Vec<Hypervisor> = if args.all {
        Hypervisor::LINUX.to_vec()
    } else {
        vec![wanted.unwrap_or(config.hypervisor)]
    };
    println!(
        "{}: valid ({} warning{})",
        args.def.file.display(),
        loaded.warnings.len(),
        plural(loaded.warnings.len())
    );
    let mut all_ok = true;
    for h in &targets {
        let report = hypervisor_report(*h, config);
        if report.supported {
            println!("  {:<16} yes", h.name());
        } else {
            all_ok = false;
            println!("  {:<16} no", h.name());
        }
        println!("    version: {}", report.version);
        for e in &report.errors {
            println!("    - {e}");
        }
        for w in &report.warnings {
            println!("    warning: {w}");
        }
    }
    // With --all, the VM is fine if its own hypervisor can run it.
    let decisive = if args.all {
        hypervisor_report(wanted.unwrap_or(config.hypervisor), config).supported
    } else {
        all_ok
    };
    Ok(if decisive { OK } else { UNSUPPORTED })
}

fn hypervisor_report(h: Hypervisor, config: &microvm_spec::config::Config) -> HypervisorReport {
    let mut errors: Vec<String> = caps::check_all(h, config)
        .iter()
        .map(ToString::to_string)
        .collect();
    let mut warnings = Vec::new();
    let mut host = microvm_runner::HostFacts::reference();
    let version = common::detect_version(h, config, &mut host).describe(h);
    if errors.is_empty() {
        // The planner knows a few more rules than the table (e.g. a missing socket).
        match microvm_runner::plan_for(h, config, &microvm_runner::Artifacts::placeholders(), &host)
        {
            Ok(inv) => warnings = inv.warnings,
            Err(e) => errors.push(e.to_string()),
        }
    }
    HypervisorReport {
        hypervisor: h,
        supported: errors.is_empty(),
        version,
        errors,
        warnings,
    }
}

fn json(args: &CheckArgs, wanted: Option<Hypervisor>) -> anyhow::Result<i32> {
    let name = args
        .def
        .name
        .as_deref()
        .map(str::parse)
        .transpose()
        .ok()
        .flatten();
    common::readable(&args.def.file)?;
    let options = microvm_spec::LoadOptions { name, arch: None };
    let (report, code) = match microvm_spec::load_with(&args.def.file, &options) {
        Ok(loaded) => {
            let missing = loaded.missing_inputs();
            if missing.is_empty() {
                valid_report(args, wanted, &loaded)
            } else {
                let all: Vec<_> = loaded.warnings.iter().chain(&missing).cloned().collect();
                (invalid_report(args, &loaded.sources, &all), INVALID)
            }
        }
        Err(failure) => (
            invalid_report(args, &failure.sources, &failure.diagnostics),
            INVALID,
        ),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if code == OK {
        Ok(OK)
    } else {
        Err(Reported(code).into())
    }
}

fn valid_report(
    args: &CheckArgs,
    wanted: Option<Hypervisor>,
    loaded: &microvm_spec::Loaded,
) -> (Report, i32) {
    let config = &loaded.config;
    let targets: Vec<Hypervisor> = if args.all {
        Hypervisor::LINUX.to_vec()
    } else {
        vec![wanted.unwrap_or(config.hypervisor)]
    };
    let hypervisors: Vec<HypervisorReport> = targets
        .iter()
        .map(|h| hypervisor_report(*h, config))
        .collect();
    let own = wanted.unwrap_or(config.hypervisor);
    let ok = if args.all {
        hypervisor_report(own, config).supported
    } else {
        hypervisors.iter().all(|h| h.supported)
    };
    let diagnostics = loaded
        .warnings
        .iter()
        .map(|d| loaded.sources.to_json(d))
        .collect();
    let report = Report {
        file: args.def.file.display().to_string(),
        valid: true,
        diagnostics,
        hypervisors,
    };
    (report, if ok { OK } else { UNSUPPORTED })
}

fn invalid_report(
    args: &CheckArgs,
    sources: &microvm_spec::source::SourceMap,
    diagnostics: &[microvm_spec::diag::Diagnostic],
) -> Report {
    Report {
        file: args.def.file.display().to_string(),
        valid: false,
        diagnostics: diagnostics.iter().map(|d| sources.to_json(d)).collect(),
        hypervisors: Vec::new(),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
