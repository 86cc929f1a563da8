//! `microvm host apply FILE [--dry-run] [--json]`: reconcile the state directory with a
//! host file, the replacement of microvm.nix's `microvm.vms` and its install units,
//! without their gaps (inventory §4.4, §8: #94, #302, #508): changed VMs are rebuilt and,
//! with `restartIfChanged`, restarted; VMs dropped from the file are stopped and removed.
//!
//! ```toml
//! [vms.web]
//! definition = "web/vm.toml"   # relative to the host file
//! autostart = true             # default true: listed in <state>/autostart
//! restartIfChanged = true      # default true: restart a booted VM whose runner changed
//! keepVolumesOnRemove = true   # default true: volumes survive removal from this file
//! ```
//!
//! Ownership: a VM created by `apply` records the host file in `managed-by`; only VMs
//! managed by this very file are ever removed by it. A listed VM that already exists
//! without `managed-by` (created imperatively) is taken over only when its recorded
//! definition is the file the host file names; otherwise, and for VMs managed by another
//! host file, apply reports a conflict and leaves the VM alone (exit code 1).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use microvm_host::state::VmDir;
use microvm_spec::types::VmName;
use serde::{Deserialize, Serialize};

use super::{create, remove, services, update, Ctx, LOCK_TIMEOUT};
use crate::cli::HostApplyArgs;
use crate::exit::{FAILURE, OK};

/// One VM of the host file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    pub definition: PathBuf,
    pub autostart: bool,
    pub restart_if_changed: bool,
    pub keep_volumes_on_remove: bool,
}

/// Parses a host file; definitions are made absolute against the file's directory.
pub fn parse(text: &str, file: &Path) -> anyhow::Result<BTreeMap<VmName, Policy>> {
    let doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let base = file.parent().unwrap_or(Path::new("/"));
    let mut out = BTreeMap::new();
    for (key, item) in doc.iter() {
        if key == "networks" {
            continue; // docs/network.md, cmd/network.rs
        }
        if key != "vms" {
            bail!(
                "{}: unknown key `{key}` (a host file has the tables `vms` and `networks`)",
                file.display()
            );
        }
        let vms = item
            .as_table_like()
            .ok_or_else(|| anyhow!("{}: `vms` must be a table", file.display()))?;
        for (name, vm) in vms.iter() {
            let at = || format!("{}: vms.{name}", file.display());
            let vm_name: VmName = name.parse().map_err(|e| anyhow!("{}: {e}", at()))?;
            let table = vm
                .as_table_like()
                .ok_or_else(|| anyhow!("{}: must be a table", at()))?;
            let mut definition = None;
            let mut policy = Policy {
                definition: PathBuf::new(),
                autostart: true,
                restart_if_changed: true,
                keep_volumes_on_remove: true,
            };
            for (k, v) in table.iter() {
                let flag = || {
                    v.as_bool()
                        .ok_or_else(|| anyhow!("{}.{k}: must be true or false", at()))
                };
                match k {
                    "definition" => {
                        let s = v
                            .as_str()
                            .ok_or_else(|| anyhow!("{}.definition: must be a path", at()))?;
                        definition = Some(base.join(s));
                    }
                    "autostart" => policy.autostart = flag()?,
                    "restartIfChanged" => policy.restart_if_changed = flag()?,
                    "keepVolumesOnRemove" => policy.keep_volumes_on_remove = flag()?,
                    other => bail!(
                        "{}: unknown key `{other}` (known: definition, autostart, restartIfChanged, keepVolumesOnRemove)",
                        at()
                    ),
                }
            }
            policy.definition =
                definition.ok_or_else(|| anyhow!("{}: `definition` is required", at()))?;
            out.insert(vm_name, policy);
        }
    }
    Ok(out)
}

const POLICY_FILE: &str = "host-apply.json";

fn read_policy(vm: &VmDir) -> Option<Policy> {
    let bytes = std::fs::read(vm.path().join(POLICY_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn write_policy(vm: &VmDir, p: &Policy) -> anyhow::Result<()> {
    vm.write_file(POLICY_FILE, &serde_json::to_vec_pretty(p)?)?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct Action {
    name: String,
    /// created, updated, restarted, unchanged, removed, conflict, failed (with --dry-run:
    /// create, update, remove, unchanged, conflict).
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

pub fn host_apply(state_root: &Path, args: &HostApplyArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(state_root)?;
    let file = args
        .file
        .canonicalize()
        .with_context(|| format!("reading {}", args.file.display()))?;
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let desired = parse(&text, &file)?;
    let networks = crate::cmd::network::host_file_networks(&text, &file)?;
    let _host = ctx.state.lock(LOCK_TIMEOUT)?;
    let mut actions: Vec<Action> =
        crate::cmd::network::apply_host_networks(state_root, &file, &networks, args.dry_run)?
            .into_iter()
            .map(|(name, action, detail)| Action {
                name,
                action,
                detail,
            })
            .collect();
    for (name, policy) in &desired {
        let action = match apply_one(&ctx, &file, name, policy, args.dry_run) {
            Ok(a) => a,
            Err(e) => Action {
                name: name.to_string(),
                action: "failed",
                detail: Some(format!("{e:#}")),
            },
        };
        actions.push(action);
    }
    for name in ctx.state.list()? {
        let vm = ctx.state.vm(&name);
        if desired.contains_key(&name) || vm.managed_by().as_deref() != Some(file.as_path()) {
            continue;
        }
        let keep = read_policy(&vm).map(|p| p.keep_volumes_on_remove) != Some(false);
        let detail = Some(
            if keep {
                "volumes kept"
            } else {
                "volumes removed"
            }
            .to_owned(),
        );
        let action = if args.dry_run {
            Action {
                name: name.to_string(),
                action: "remove",
                detail,
            }
        } else {
            match remove::remove_vm(&ctx, &name, keep) {
                Ok(_) => Action {
                    name: name.to_string(),
                    action: "removed",
                    detail,
                },
                Err(e) => Action {
                    name: name.to_string(),
                    action: "failed",
                    detail: Some(format!("{e:#}")),
                },
            }
        };
        actions.push(action);
    }
    if !args.dry_run {
        write_autostart(&ctx, &file, &desired)?;
        if let Some(target) = crate::cmd::service::sync_target(&ctx.state)? {
            eprintln!("microvm: {} wants the autostart VMs", target.display());
        }
    }
    let failed = actions
        .iter()
        .any(|a| matches!(a.action, "conflict" | "failed"));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&actions)?);
    } else {
        for a in &actions {
            match &a.detail {
                Some(d) => println!("{} {}: {d}", a.action, a.name),
                None => println!("{} {}", a.action, a.name),
            }
        }
    }
    Ok(if failed { FAILURE } else { OK })
}

fn apply_one(
    ctx: &Ctx,
    file: &Path,
    name: &VmName,
    policy: &Policy,
    dry_run: bool,
) -> anyhow::Result<Action> {
    let vm = ctx.state.vm(name);
    let act = |action, detail: Option<String>| Action {
        name: name.to_string(),
        action,
        detail,
    };
    let definition = policy
        .definition
        .canonicalize()
        .with_context(|| format!("definition of {name}: {}", policy.definition.display()))?;
    if !vm.exists() {
        if dry_run {
            return Ok(act("create", None));
        }
        let (runner, fp) = create::build_from(ctx, name, &definition)?;
        create::install(ctx, name, &runner, Some(&definition), Some(&fp), false)?;
        vm.set_managed_by(file)?;
        write_policy(&vm, policy)?;
        return Ok(act("created", None));
    }
    match vm.managed_by() {
        Some(owner) if owner == file => {}
        Some(owner) => {
            return Ok(act(
                "conflict",
                Some(format!("managed by another host file, {}", owner.display())),
            ))
        }
        None if vm.source().as_deref() == Some(definition.as_path()) => {
            if !dry_run {
                vm.set_managed_by(file)?;
            }
        }
        None => {
            let from = vm
                .source()
                .or_else(|| vm.runner_source())
                .map_or_else(|| "elsewhere".to_owned(), |p| p.display().to_string());
            return Ok(act(
                "conflict",
                Some(format!(
                    "created imperatively from {from}; remove it first, or name that definition in the host file"
                )),
            ));
        }
    }
    if dry_run {
        let same = vm.source().as_deref() == Some(definition.as_path())
            && super::list::up_to_date(ctx, &vm).unwrap_or(false);
        return Ok(act(if same { "unchanged" } else { "update" }, None));
    }
    if vm.source().as_deref() != Some(definition.as_path()) {
        let _lock = vm.lock(LOCK_TIMEOUT)?;
        vm.set_source(&definition)?;
    }
    write_policy(&vm, policy)?;
    let outcome = update::rebuild(ctx, name)?;
    let booted_other = outcome
        .booted
        .as_ref()
        .is_some_and(|b| *b != outcome.current);
    if !outcome.changed && !booted_other {
        return Ok(act("unchanged", None));
    }
    let summary = outcome
        .changes
        .iter()
        .map(|c| c.what.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let summary = (!summary.is_empty()).then_some(summary);
    if booted_other && policy.restart_if_changed {
        services::restart(&ctx.state, name)?;
        return Ok(act("restarted", summary));
    }
    if booted_other {
        return Ok(act(
            "updated",
            Some(format!(
                "{}reboot for the new profile: microvm restart {name}",
                summary.map(|s| format!("{s}; ")).unwrap_or_default()
            )),
        ));
    }
    Ok(act("updated", summary))
}

/// `<state>/autostart`: this file's VMs with `autostart`, plus the entries of other VMs
/// that still exist and that this file does not manage.
fn write_autostart(
    ctx: &Ctx,
    file: &Path,
    desired: &BTreeMap<VmName, Policy>,
) -> anyhow::Result<()> {
    let mut names: Vec<VmName> = ctx
        .state
        .autostart()?
        .into_iter()
        .filter(|n| {
            let vm = ctx.state.vm(n);
            !desired.contains_key(n) && vm.exists() && vm.managed_by().as_deref() != Some(file)
        })
        .collect();
    names.extend(
        desired
            .iter()
            .filter(|(n, p)| p.autostart && ctx.state.vm(n).exists())
            .map(|(n, _)| n.clone()),
    );
    names.sort();
    names.dedup();
    ctx.state.write_autostart(&names)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_defaults_and_rejects_typos() {
        let file = Path::new("/etc/microvm/host.toml");
        let vms = parse(
            "[vms.web]\ndefinition = \"web/vm.toml\"\n[vms.db]\ndefinition = \"/srv/db.toml\"\nautostart = false\nkeepVolumesOnRemove = false\n",
            file,
        )
        .expect("parse");
        let web = &vms[&"web".parse::<VmName>().expect("name")];
        assert_eq!(web.definition, PathBuf::from("/etc/microvm/web/vm.toml"));
        assert!(web.autostart && web.restart_if_changed && web.keep_volumes_on_remove);
        let db = &vms[&"db".parse::<VmName>().expect("name")];
        assert!(!db.autostart && !db.keep_volumes_on_remove);
        let err = parse(
            "[vms.web]\ndefinition = \"a\"\nrestartIfChange = true\n",
            file,
        )
        .expect_err("typo");
        assert!(
            err.to_string().contains("unknown key `restartIfChange`"),
            "{err}"
        );
        assert!(parse("[vms.web]\nautostart = true\n", file).is_err());
        assert!(parse("[vms.\"a b\"]\ndefinition = \"x\"\n", file).is_err());
        assert!(parse("[hosts]\n", file).is_err());
    }
}
