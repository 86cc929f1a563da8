//! `microvm build`: the guest artifacts and the runner directory, in the store.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context as _;
use microvm_image::pipeline::{self, Built};
use microvm_image::store::{combine, Store};
use microvm_runner::{package, Artifacts, HostFacts, Invocation};
use microvm_spec::Loaded;
use serde::Serialize;

use super::common;
use crate::cli::BuildArgs;
use crate::exit::OK;

/// A built runner directory and what it contains.
pub struct Runner {
    pub dir: PathBuf,
    pub invocation: Invocation,
    pub built: Built,
    pub cached: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    runner: &'a Path,
    cached: bool,
    kernel: &'a Path,
    initrd: &'a Path,
    store_disk: Option<&'a Path>,
    seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    root: Option<Vec<RootEntry>>,
}

#[derive(Serialize)]
struct RootEntry {
    path: String,
    source: String,
}

/// The `--list-root` manifest stored beside the root disk, as (path, source) pairs.
fn root_manifest(built: &Built) -> anyhow::Result<Vec<RootEntry>> {
    let path = built.root_manifest.as_ref().context(
        "--list-root needs a root disk that microvm builds (not a prebuilt `storeDisk`, nor `storeOnDisk = false`)",
    )?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the root manifest {}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(p, s)| RootEntry {
            path: p.to_owned(),
            source: s.to_owned(),
        })
        .collect())
}

pub fn run(args: &BuildArgs, state_dir: &Path) -> anyhow::Result<i32> {
    common::refresh(args.refresh);
    let loaded = common::load_with_inputs(&args.def, false)?;
    let start = Instant::now();
    let store = open_store(args.store.as_deref(), state_dir)?;
    let host = common::host_facts()?;
    let runner = build_runner(&loaded, &store, &host)?;
    if args.json {
        let report = Report {
            runner: &runner.dir,
            cached: runner.cached,
            kernel: &runner.built.kernel,
            initrd: &runner.built.initrd,
            store_disk: runner.built.store_disk.as_deref(),
            seconds: start.elapsed().as_secs_f64(),
            root: match args.list_root {
                true => Some(root_manifest(&runner.built)?),
                false => None,
            },
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.list_root {
        let mut out = String::new();
        for e in root_manifest(&runner.built)? {
            out.push_str(&format!("{}\t{}\n", e.path, e.source));
        }
        print!("{out}");
    } else {
        println!("{}", runner.dir.display());
    }
    Ok(OK)
}

/// The store: `--store`, `$MICROVM_STORE`, `<state-dir>/.store` as root (the store of
/// managed VMs, `/var/lib/microvms/.store` by default), else `$XDG_CACHE_HOME/microvm/store`
/// (or `~/.cache/microvm/store`).
pub fn open_store(flag: Option<&Path>, state_dir: &Path) -> anyhow::Result<Store> {
    let root = store_root(flag, state_dir)?;
    Store::open(&root).with_context(|| format!("opening the store {}", root.display()))
}

/// Where the store is (see [`open_store`]), without creating it.
pub fn store_root(flag: Option<&Path>, state_dir: &Path) -> anyhow::Result<PathBuf> {
    // Absolute: the store's paths go into plans that run in other directories.
    let root = match (flag, std::env::var_os("MICROVM_STORE")) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) if common::is_root() => state_dir.join(".store"),
        (None, None) => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .context("neither XDG_CACHE_HOME nor HOME is set; pass --store")?;
            cache.join("microvm/store")
        }
    };
    std::path::absolute(&root).with_context(|| format!("the store path {}", root.display()))
}

/// Builds (or finds) the artifacts and the runner directory of a loaded definition.
pub fn build_runner(loaded: &Loaded, store: &Store, host: &HostFacts) -> anyhow::Result<Runner> {
    let config = &loaded.config;
    let verbose = std::io::stderr().is_terminal();
    let mut progress = |step: &str| {
        if verbose {
            eprintln!("microvm: {}: {step}", config.name);
        }
    };
    let built = pipeline::build(config, store, &mut progress)
        .with_context(|| format!("building {}", config.name))?;
    let extended = with_root_params(config, &built.kernel_params);
    let config = extended.as_ref().unwrap_or(config);
    let artifacts = Artifacts {
        kernel: built.kernel.clone(),
        vmlinux: built.vmlinux.clone(),
        initrd: built.initrd.clone(),
        store_disk: built.store_disk.clone(),
    };
    let mut host = host.clone();
    let detection = common::detect_version(config.hypervisor, config, &mut host);
    progress(&format!(
        "version: {}",
        detection.describe(config.hypervisor)
    ));
    let added = match &extended {
        Some(_) => &built.kernel_params[..],
        None => &[],
    };
    super::built::record(store.root(), loaded, &artifacts, added);
    let invocation = microvm_runner::plan(config, &artifacts, &host)
        .with_context(|| format!("planning {} for {}", config.name, config.hypervisor))?;
    let files = package::files(config, &invocation);
    let parts: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.path.clone(), f.contents.clone()))
        .collect();
    let refs: Vec<(&str, &str)> = parts
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let hash = combine(&refs);
    let dir = store.path(
        &hash,
        &format!("microvm-{}-{}", config.hypervisor, config.name),
    );
    let cached = dir.exists();
    if !cached {
        let scratch = store.scratch("runner")?;
        let tmp = scratch.join("out");
        package::write(&tmp, &files).with_context(|| format!("writing {}", tmp.display()))?;
        let share = tmp.join("share/microvm");
        let system = system_target(config, &built);
        for (name, target) in [
            ("kernel", Some(&built.kernel)),
            ("vmlinux", built.vmlinux.as_ref()),
            ("initrd", Some(&built.initrd)),
            ("store-disk", built.store_disk.as_ref()),
            ("system", system.as_ref()),
        ] {
            if let Some(target) = target {
                std::os::unix::fs::symlink(target, share.join(name))
                    .with_context(|| format!("linking {name} in {}", share.display()))?;
            }
        }
        store.publish(&tmp, &dir)?;
        let _ = std::fs::remove_dir_all(&scratch);
    }
    Ok(Runner {
        dir,
        invocation,
        built,
        cached,
    })
}

/// What `share/microvm/system` points at with `systemSymlink` (microvm.nix: the guest's
/// toplevel, which `microvm -l` compares with the booted one): the Nix root's store path,
/// else the root disk built for the guest.
fn system_target(config: &microvm_spec::config::Config, built: &Built) -> Option<PathBuf> {
    use microvm_spec::config::RootSource;
    if !config.system_symlink {
        return None;
    }
    let nix = config.guest.root.iter().rev().find_map(|s| match s {
        RootSource::Nix { path } => Some(path.clone()),
        _ => None,
    });
    nix.or_else(|| built.store_disk.clone())
}

/// The config with the root's own kernel parameters (`regInfo=` of a Nix closure) after
/// the definition's, as in microvm.nix; `None` when there are none to add, or when
/// `registerClosure = false` leaves `regInfo=` out (the guest then does not load the
/// closure's registration into its Nix database).
fn with_root_params(
    config: &microvm_spec::config::Config,
    params: &[String],
) -> Option<microvm_spec::config::Config> {
    if params.is_empty() || !config.register_closure {
        return None;
    }
    let mut c = config.clone();
    c.kernel_params.extend(params.iter().cloned());
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> microvm_spec::config::Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm1.toml");
        std::fs::write(&path, text).expect("write");
        microvm_spec::load_file(&path).expect("loads").config
    }

    #[test]
    fn register_closure_gates_reg_info() {
        let reg = ["regInfo=/nix/store/x-closure-info/registration".to_owned()];
        let on = with_root_params(&config("vcpu = 1\n"), &reg).expect("added");
        assert_eq!(on.kernel_params.last(), Some(&reg[0]));
        assert!(with_root_params(&config("registerClosure = false\n"), &reg).is_none());
        // guest.enable = false turns registerClosure's default off, as in microvm.nix.
        let off = config("[guest]\nenable = false\n");
        assert!(with_root_params(&off, &reg).is_none());
    }

    #[test]
    fn a_relative_store_is_made_absolute() {
        let root = store_root(Some(Path::new("st")), Path::new("/var/lib/microvms")).expect("root");
        assert_eq!(root, std::env::current_dir().expect("cwd").join("st"));
    }
}
