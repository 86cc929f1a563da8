//! `microvm update NAME… [--restart]`: rebuild from the recorded definition, swap
//! `current` (keeping `old`) when the runner changed, and say whether a reboot is needed,
//! with the original's messages (inventory §5.1). Names are processed in order; the first
//! failure stops the command, as in the original.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use microvm_spec::types::VmName;
use serde::Serialize;

use super::diff::{self, Change};
use super::{create, fingerprint, services, Ctx, LOCK_TIMEOUT};
use crate::cli::UpdateArgs;
use crate::exit::OK;

/// What `update` did to one VM.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub name: String,
    pub old: Option<PathBuf>,
    pub current: PathBuf,
    pub changed: bool,
    pub booted: Option<PathBuf>,
    /// "none" (no reboot required), "reboot" (required, not done), "restarted", "started".
    pub action: &'static str,
    pub changes: Vec<Change>,
}

pub fn update(state_root: &Path, args: &UpdateArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(state_root)?;
    let names = args
        .names
        .iter()
        .map(|n| super::parse_name(n))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut outcomes = Vec::new();
    for name in &names {
        let outcome = {
            let _host = ctx.state.lock_shared(LOCK_TIMEOUT)?;
            rebuild(&ctx, name)?
        };
        let outcome = settle(&ctx, outcome, args.restart, !args.json)?;
        outcomes.push(outcome);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    }
    Ok(OK)
}

/// Rebuilds one VM under its lock and links the new runner. The caller holds the shared
/// state lock.
pub(super) fn rebuild(ctx: &Ctx, name: &VmName) -> anyhow::Result<Outcome> {
    let vm = super::existing(ctx, name)?;
    let _lock = vm.lock(LOCK_TIMEOUT)?;
    if let Some(dir) = vm.runner_source() {
        bail!(
            "MicroVM {name} runs an adopted runner ({}) and has no definition to rebuild from; \
             adopt the new runner with `microvm remove {name} --keep-volumes` and `microvm create {name} --runner DIR`, \
             or create it from a definition",
            dir.display()
        );
    }
    let Some(source) = vm.source() else {
        bail!(
            "MicroVM {name} has no recorded definition ({} is missing)",
            vm.path().join("source").display()
        );
    };
    let (runner, fp) = create::build_from(ctx, name, &source)
        .with_context(|| format!("updating {name} from {}", source.display()))?;
    let previous = vm.current();
    let changed = previous.as_deref() != Some(runner.as_path());
    if changed {
        vm.set_current(&runner)?;
    }
    fingerprint::write(&vm, &runner, &fp)?;
    let changes = match &previous {
        Some(old) if changed => diff::diff(old, &runner),
        _ => Vec::new(),
    };
    Ok(Outcome {
        name: name.to_string(),
        old: if changed { previous } else { vm.old() },
        current: runner,
        changed,
        booted: vm.booted(),
        action: "none",
        changes,
    })
}

/// Prints the outcome and restarts or starts the VM when asked (without holding its lock).
pub(super) fn settle(
    ctx: &Ctx,
    mut outcome: Outcome,
    restart: bool,
    human: bool,
) -> anyhow::Result<Outcome> {
    let name = super::parse_name(&outcome.name)?;
    if human {
        diff::print(&outcome.name, &outcome.changes);
    }
    let say = |s: String| {
        if human {
            println!("{s}");
        }
    };
    match &outcome.booted {
        Some(booted) if *booted == outcome.current => {
            say(format!("No reboot of MicroVM {name} required."));
        }
        Some(_) if restart => {
            say(format!("Rebooting MicroVM {name}"));
            services::restart(&ctx.state, &name)?;
            outcome.action = "restarted";
        }
        Some(_) => {
            say(format!(
                "Reboot MicroVM {name} for the new profile: microvm restart {name}"
            ));
            outcome.action = "reboot";
        }
        None if restart => {
            say(format!("Booting MicroVM {name}"));
            services::restart(&ctx.state, &name)?;
            outcome.action = "started";
        }
        None => {
            // Not booted: the next start uses the new runner.
            say(format!("No reboot of MicroVM {name} required."));
        }
    }
    Ok(outcome)
}
