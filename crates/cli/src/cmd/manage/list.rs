//! `microvm list [--json]`: each VM's `current` against a fresh evaluation of its
//! definition (by fingerprint, see `fingerprint.rs`: nothing is built or written), its
//! `booted` runner, and the supervisor's status.

use std::path::{Path, PathBuf};

use microvm_host::network::{Networks, Tools};
use microvm_host::state::{Status, VmDir};
use serde::Serialize;

use super::{fingerprint, Ctx, Paint};
use crate::cli::ListArgs;
use crate::exit::OK;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    name: String,
    /// "outdated", "current", "stale" or "notBooted" (the original's four states).
    state: &'static str,
    current: Option<PathBuf>,
    booted: Option<PathBuf>,
    /// Whether `current` was built from the definition as it is now (`null`: unknown, for an
    /// adopted runner or a definition that does not load).
    up_to_date: Option<bool>,
    /// The supervisor's state ("running", "failed", …), corrected by a liveness check.
    status: Option<Status>,
    source: Option<PathBuf>,
    adopted: Option<PathBuf>,
    managed_by: Option<PathBuf>,
    /// Static addresses, `ADDRESS (static)`, and leases on microvm networks,
    /// `ADDRESS (NETWORK)` (docs/network.md), as `status` shows them.
    addresses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub fn list(state_root: &Path, args: &ListArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(state_root)?;
    let names = ctx.state.list()?;
    let store = if names.is_empty() {
        None
    } else {
        Some(ctx.open_store()?)
    };
    let host = super::host_facts()?;
    let leases = Networks::new(state_root, Tools::system())
        .all_leases()
        .unwrap_or_default();
    let mut entries = Vec::new();
    for name in &names {
        let vm = ctx.state.vm(name);
        let (up_to_date, error) = match (&store, vm.source()) {
            (Some(store), Some(_)) if vm.runner_source().is_none() => {
                match evaluate(&vm, store, &host) {
                    Ok(same) => (Some(same), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                }
            }
            _ => (None, None),
        };
        let current = vm.current();
        let booted = vm.booted();
        let state = if up_to_date == Some(false) || error.is_some() {
            "outdated"
        } else {
            match &booted {
                Some(b) if Some(b) == current.as_ref() => "current",
                Some(_) => "stale",
                None => "notBooted",
            }
        };
        let addresses = current
            .as_deref()
            .map(|r| crate::cmd::ssh::addresses(r, &leases))
            .unwrap_or_default();
        entries.push(Entry {
            name: name.to_string(),
            state,
            current,
            booted,
            up_to_date,
            status: vm.live_status().ok().flatten(),
            source: vm.source(),
            adopted: vm.runner_source(),
            managed_by: vm.managed_by(),
            addresses,
            error,
        });
    }
    if let Some(store) = &store {
        let _ = store.save();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(OK);
    }
    let paint = Paint::stdout();
    for e in &entries {
        println!("{}", line(e, paint));
    }
    Ok(OK)
}

/// Whether `current` was built from the definition as it is now.
fn evaluate(
    vm: &VmDir,
    store: &microvm_image::store::Store,
    host: &microvm_runner::HostFacts,
) -> anyhow::Result<bool> {
    let Some(source) = vm.source() else {
        return Ok(true);
    };
    let loaded = super::load_definition(&source, vm.name(), true)
        .map_err(|_| anyhow::anyhow!("{} does not load", source.display()))?;
    let now = fingerprint::compute(&loaded, host, store)?;
    Ok(match fingerprint::read(vm) {
        Some(rec) => rec.fingerprint == now && Some(rec.runner) == vm.current(),
        None => false,
    })
}

fn line(e: &Entry, paint: Paint) -> String {
    let name = &e.name;
    let live = e.status.as_ref().is_some_and(|s| s.state.is_live());
    let coloured = if live {
        paint.bold_green(name)
    } else if e.booted.is_some() {
        paint.bold_yellow(name)
    } else {
        paint.bold_red(name)
    };
    let short = |p: &Option<PathBuf>| p.as_deref().map(super::short).unwrap_or_default();
    let cur = short(&e.current);
    let mut text = match e.state {
        "outdated" if e.error.is_some() => {
            format!("outdated({cur}), rebuild(error) and reboot: microvm update -R {name}")
        }
        "outdated" => format!("outdated({cur}), rebuild and reboot: microvm update -R {name}"),
        "current" => format!("current({})", short(&e.booted)),
        "stale" => format!(
            "stale({}), reboot({cur}): microvm restart {name}",
            short(&e.booted)
        ),
        _ => format!("current({cur}), not booted: microvm start {name}"),
    };
    if let Some(st) = &e.status {
        match &st.state {
            microvm_host::state::VmState::Failed { reason, .. } => {
                text.push_str(&format!(" [failed: {reason}]"));
            }
            s if s.is_live() => text.push_str(&format!(" [{}]", s.name())),
            _ => {}
        }
    }
    if !e.addresses.is_empty() {
        text.push_str(&format!(" {}", e.addresses.join(", ")));
    }
    if let Some(err) = &e.error {
        text.push_str(&format!("\n  {err}"));
    }
    format!("{coloured}: {text}")
}

/// Whether `current` was built from the definition as it is now (for `host apply --dry-run`).
pub(super) fn up_to_date(ctx: &Ctx, vm: &VmDir) -> anyhow::Result<bool> {
    let store = ctx.open_store()?;
    let host = super::host_facts()?;
    let same = evaluate(vm, &store, &host)?;
    let _ = store.save();
    Ok(same)
}
