//! `microvm remove NAME [--keep-volumes]`: stop the VM, then remove its directory.
//!
//! The directory is first renamed to `<state>/.tmp-removing-<name>-<pid>`, so the VM
//! disappears atomically and commands waiting for its lock see it gone. With
//! `--keep-volumes`, the volume images inside the directory (the `volumes` of its
//! `current` runner's config.json, relative paths) are moved to
//! `<state>/.tmp-volumes-<name>-<pid>` first and moved back into a fresh `<state>/<name>/`
//! (a directory without `current`, which `create` reuses). If anything fails, the images
//! stay where they are and the error says where: user data is never deleted by a failed
//! removal. Volume images outside the VM directory are never touched.

use std::fs;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _};
use microvm_host::state::VmDir;
use microvm_spec::types::VmName;

use super::{services, Ctx, LOCK_TIMEOUT};
use crate::cli::RemoveArgs;
use crate::exit::OK;

pub fn remove(state_root: &Path, args: &RemoveArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(state_root)?;
    let name = super::parse_name(&args.name)?;
    let kept = remove_vm(&ctx, &name, args.keep_volumes)?;
    println!("Removed MicroVM {name}.");
    if !kept.is_empty() {
        let list: Vec<String> = kept.iter().map(|p| p.display().to_string()).collect();
        println!("Kept volumes: {}", list.join(", "));
    }
    Ok(OK)
}

/// Stops and removes one VM; returns the volume images kept (absolute paths).
pub(super) fn remove_vm(
    ctx: &Ctx,
    name: &VmName,
    keep_volumes: bool,
) -> anyhow::Result<Vec<PathBuf>> {
    let vm = super::existing(ctx, name)?;
    if super::is_running(&vm) || vm.booted().is_some() {
        services::stop(&ctx.state, name).with_context(|| format!("removing {name}"))?;
    }
    let lock = vm.lock(LOCK_TIMEOUT)?;
    if super::is_running(&vm) {
        bail!("MicroVM {name} is running (it was started again); stop it first");
    }
    let volumes = if keep_volumes {
        volume_images(&vm)
    } else {
        Vec::new()
    };
    let pid = std::process::id();
    let aside = ctx.state.root().join(format!(".tmp-volumes-{name}-{pid}"));
    for rel in &volumes {
        let (from, to) = (vm.path().join(rel), aside.join(rel));
        let moved = to
            .parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(&from, &to));
        if let Err(e) = moved {
            put_back(&aside, vm.path(), &volumes);
            return Err(e).with_context(|| {
                format!(
                    "moving the volume {} aside; nothing removed",
                    from.display()
                )
            });
        }
    }
    let doomed = ctx.state.root().join(format!(".tmp-removing-{name}-{pid}"));
    if let Err(e) = fs::rename(vm.path(), &doomed) {
        put_back(&aside, vm.path(), &volumes);
        return Err(e).with_context(|| format!("removing {}", vm.path().display()));
    }
    drop(lock);
    let _ = remove_autostart(ctx, name);
    if let Err(e) = fs::remove_dir_all(&doomed) {
        eprintln!(
            "microvm: {name}: could not delete {} ({e}); `microvm gc` removes it later",
            doomed.display()
        );
    }
    if volumes.is_empty() {
        return Ok(Vec::new());
    }
    fs::create_dir_all(vm.path()).with_context(|| {
        format!(
            "recreating {}; the volumes are in {}",
            vm.path().display(),
            aside.display()
        )
    })?;
    let mut kept = Vec::new();
    for rel in &volumes {
        let (from, to) = (aside.join(rel), vm.path().join(rel));
        to.parent()
            .map_or(Ok(()), fs::create_dir_all)
            .and_then(|()| fs::rename(&from, &to))
            .with_context(|| {
                format!(
                    "moving {} back to {}; the volumes are in {}",
                    from.display(),
                    to.display(),
                    aside.display()
                )
            })?;
        kept.push(to);
    }
    let _ = fs::remove_dir_all(&aside);
    Ok(kept)
}

fn put_back(aside: &Path, dir: &Path, volumes: &[PathBuf]) {
    for rel in volumes {
        let from = aside.join(rel);
        if from.exists() {
            let _ = fs::rename(&from, dir.join(rel));
        }
    }
    let _ = fs::remove_dir_all(aside);
}

/// The volume images inside the VM directory: relative `image` paths of the volumes in the
/// current runner's config.json that exist (no `..`, no absolute paths).
pub(super) fn volume_images(vm: &VmDir) -> Vec<PathBuf> {
    let Some(current) = vm.current() else {
        return Vec::new();
    };
    let config: serde_json::Value = fs::read(current.join("share/microvm/config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let mut out = Vec::new();
    for v in config["volumes"].as_array().into_iter().flatten() {
        let Some(image) = v["image"].as_str() else {
            continue;
        };
        let rel = PathBuf::from(image);
        let inside = rel.components().all(|c| matches!(c, Component::Normal(_)));
        if inside && vm.path().join(&rel).exists() && !out.contains(&rel) {
            out.push(rel);
        }
    }
    out
}

fn remove_autostart(ctx: &Ctx, name: &VmName) -> anyhow::Result<()> {
    let names = ctx.state.autostart()?;
    if names.contains(name) {
        let rest: Vec<VmName> = names.into_iter().filter(|n| n != name).collect();
        ctx.state.write_autostart(&rest)?;
    }
    Ok(())
}
