//! `microvm create NAME --from FILE | --runner DIR`.
//!
//! Unlike the original (inventory §5.1), the name is checked before anything is built, and
//! the VM directory appears atomically: it is filled under `<state>/.tmp-<name>-<pid>` and
//! renamed into place with RENAME_NOREPLACE, so a concurrent `create` of the same name
//! fails cleanly and a crash leaves only a `.tmp-` directory (removed by `gc`). A directory
//! without `current` (volumes kept by `remove --keep-volumes`) is reused.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use microvm_host::state::VmDir;
use microvm_spec::types::VmName;
use serde::Serialize;

use super::{fingerprint, Ctx, Paint, LOCK_TIMEOUT};
use crate::cli::CreateArgs;
use crate::exit::{FAILURE, OK};

#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    dir: &'a Path,
    current: &'a Path,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a Path>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adopted: Option<&'a Path>,
}

pub fn create(state_root: &Path, args: &CreateArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(state_root)?;
    let name = super::parse_name(&args.name)?;
    let vm = ctx.state.vm(&name);
    if vm.exists() || (vm.path().exists() && !vm.path().is_dir()) {
        eprintln!("error: {} already exists.", vm.path().display());
        return Ok(FAILURE);
    }
    let _host = ctx.state.lock_shared(LOCK_TIMEOUT)?;
    let (runner, source, fp) = match (&args.from, &args.runner) {
        (Some(file), _) => {
            let file = microvm_host::state::absolute(file)?;
            let (runner, fp) = build_from(&ctx, &name, &file)?;
            (runner, Some(file), Some(fp))
        }
        (None, Some(dir)) => (adopt(dir)?, None, None),
        (None, None) => bail!("give --from FILE or --runner DIR"),
    };
    install(
        &ctx,
        &name,
        &runner,
        source.as_deref(),
        fp.as_deref(),
        args.runner.is_some(),
    )?;
    let adopted_dir = args.runner.is_some().then_some(runner.as_path());
    if args.json {
        let report = Report {
            name: name.as_str(),
            dir: vm.path(),
            current: &runner,
            source: source.as_deref(),
            adopted: adopted_dir,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let paint = Paint::stdout();
        println!("{}", paint.green(&format!("Created MicroVM {name}.")));
        println!(
            "{}",
            paint.cyan(&format!("Start with: microvm start {name}"))
        );
    }
    Ok(OK)
}

/// Loads and builds the definition for VM `name`; returns the runner and its fingerprint.
/// The caller holds the shared state lock from before the build until the runner is
/// linked, so `gc` cannot remove what was just built.
pub(super) fn build_from(
    ctx: &Ctx,
    name: &VmName,
    file: &Path,
) -> anyhow::Result<(PathBuf, String)> {
    let loaded = super::load_definition(file, name, false)?;
    let store = ctx.open_store()?;
    let host = super::host_facts()?;
    let built = super::build_vm(&loaded, &store, &host)?;
    Ok((built.runner, built.fingerprint))
}

/// Validates a runner directory built elsewhere (a microvm.nix runner works: only
/// `bin/microvm-run` is required). It is linked as is, not copied into the store, so `gc`
/// never touches it; keeping it alive is the caller's business (a Nix gcroot, say).
fn adopt(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = microvm_host::state::absolute(dir)?;
    let run = dir.join("bin/microvm-run");
    if !run.is_file() {
        bail!(
            "{} is not a runner directory: it has no bin/microvm-run",
            dir.display()
        );
    }
    Ok(dir)
}

/// Fills a temporary VM directory and renames it into place (never over an existing one).
/// A directory without `current` (the volumes kept by `remove --keep-volumes`) is reused
/// instead: there the VM appears when `current` is linked, last.
pub(super) fn install(
    ctx: &Ctx,
    name: &VmName,
    runner: &Path,
    source: Option<&Path>,
    fingerprint: Option<&str>,
    adopted: bool,
) -> anyhow::Result<()> {
    let dest = ctx.state.vm(name);
    if dest.path().is_dir() {
        let _lock = dest.lock(LOCK_TIMEOUT)?;
        if dest.exists() {
            bail!("{} already exists.", dest.path().display());
        }
        if let Some(src) = source {
            dest.set_source(src)?;
        }
        if adopted {
            dest.set_runner_source(runner)?;
        }
        if let Some(fp) = fingerprint {
            fingerprint::write(&dest, runner, fp)?;
        }
        dest.set_current(runner)?;
        return Ok(());
    }
    let tmp_path = ctx
        .state
        .root()
        .join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp_path);
    fs::create_dir_all(&tmp_path).with_context(|| format!("creating {}", tmp_path.display()))?;
    let result = (|| -> anyhow::Result<()> {
        let tmp = VmDir::at(name, &tmp_path);
        tmp.set_current(runner)?;
        if let Some(src) = source {
            tmp.set_source(src)?;
        }
        if adopted {
            tmp.set_runner_source(runner)?;
        }
        if let Some(fp) = fingerprint {
            fingerprint::write(&tmp, runner, fp)?;
        }
        rename_noreplace(&tmp_path, dest.path())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp_path);
    }
    result
}

fn rename_noreplace(from: &Path, to: &Path) -> anyhow::Result<()> {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    match renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::EXIST) => bail!("{} already exists.", to.display()),
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOSYS) => {
            // A filesystem without RENAME_NOREPLACE: check, then rename (which still
            // refuses a non-empty directory).
            if fs::symlink_metadata(to).is_ok() {
                bail!("{} already exists.", to.display());
            }
            fs::rename(from, to)
                .with_context(|| format!("renaming {} to {}", from.display(), to.display()))
        }
        Err(e) => Err(std::io::Error::from(e))
            .with_context(|| format!("renaming {} to {}", from.display(), to.display())),
    }
}
