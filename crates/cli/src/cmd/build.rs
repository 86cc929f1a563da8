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
    let loaded = common::load(&args.def, false)?;
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
    Store::open(&root).with_context(|| format!("opening the store {}", root.display()))
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
    // The root's own kernel parameters (`regInfo=` of a Nix closure) follow the
    // definition's, as in microvm.nix.
    let extended;
    let config = if built.kernel_params.is_empty() {
        config
    } else {
        let mut c = config.clone();
        c.kernel_params.extend(built.kernel_params.iter().cloned());
        extended = c;
        &extended
    };
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
        for (name, target) in [
            ("kernel", Some(&built.kernel)),
            ("vmlinux", built.vmlinux.as_ref()),
            ("initrd", Some(&built.initrd)),
            ("store-disk", built.store_disk.as_ref()),
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
