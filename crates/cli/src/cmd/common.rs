//! Shared by the verbs: loading a definition (printing its diagnostics) and host facts.

use microvm_spec::types::{Hypervisor, VmName};
use microvm_spec::{LoadOptions, Loaded};

use crate::cli::DefinitionArgs;
use crate::exit::{Reported, Usage, INVALID};

/// Loads the definition; on failure prints every diagnostic and fails with exit code 3.
/// Warnings are printed to stderr unless `quiet`. A definition file that cannot be read
/// at all is an operational error (exit code 1), not an invalid definition.
pub fn load(def: &DefinitionArgs, quiet: bool) -> anyhow::Result<Loaded> {
    readable(&def.file)?;
    let name = def
        .name
        .as_deref()
        .map(|n| {
            n.parse::<VmName>()
                .map_err(|e| anyhow::Error::new(Usage(format!("--name: {e}"))))
        })
        .transpose()?;
    let options = LoadOptions { name, arch: None };
    match microvm_spec::load_with(&def.file, &options) {
        Ok(loaded) => {
            if !quiet && !loaded.warnings.is_empty() {
                eprint!("{}", loaded.sources.render(&loaded.warnings));
            }
            Ok(loaded)
        }
        Err(failure) => {
            if !quiet {
                eprint!("{}", failure.render());
                eprintln!("error: {}: {failure}", def.file.display());
            }
            Err(Reported(INVALID).into())
        }
    }
}

/// [`load`], and every input the definition names (kernel, initrd, root sources, a
/// prebuilt store disk) must be there: what `check`, `build` and `run` need.
pub fn load_with_inputs(def: &DefinitionArgs, quiet: bool) -> anyhow::Result<Loaded> {
    let loaded = load(def, quiet)?;
    let missing = loaded.missing_inputs();
    if missing.is_empty() {
        return Ok(loaded);
    }
    if !quiet {
        eprint!("{}", loaded.sources.render(&missing));
        let n = missing.len();
        eprintln!(
            "error: {}: {n} input{} cannot be used",
            def.file.display(),
            if n == 1 { "" } else { "s" }
        );
    }
    Err(Reported(INVALID).into())
}

/// `--refresh`: the image library's fetchers read `MICROVM_REFRESH` (set before any
/// thread starts).
pub fn refresh(requested: bool) {
    if requested {
        std::env::set_var("MICROVM_REFRESH", "1");
    }
}

/// Fails (exit code 1) when the definition file itself cannot be read.
pub fn readable(file: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(file)
        .map(drop)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))
}

pub fn parse_hypervisor(name: Option<&str>) -> anyhow::Result<Option<Hypervisor>> {
    name.map(|n| {
        n.parse::<Hypervisor>()
            .map_err(|e| anyhow::Error::new(Usage(format!("--hypervisor: {e}"))))
    })
    .transpose()
}

/// Probes the facts of this host that plans depend on.
pub fn host_facts() -> anyhow::Result<microvm_runner::HostFacts> {
    Ok(probe_host().0)
}

/// The host facts, and the KVM probe they came from (for its reason).
pub fn probe_host() -> (microvm_runner::HostFacts, microvm_host::kvm::KvmProbe) {
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let kvm = microvm_host::kvm::probe_cached(&kvm_cache_file());
    let facts = microvm_runner::HostFacts {
        nproc,
        // Only consumer: virtiofsd's `--rlimit-nofile 1048576`, which root without
        // CAP_SYS_RESOURCE (a container) cannot set: virtiofsd would exit at start.
        is_root: std::env::var_os("MICROVM_ASSUME_ROOT").is_some()
            || (is_root() && can_raise_nofile()),
        kvm: kvm.status.is_usable(),
        tsc_khz: microvm_host::kvm::tsc_khz(),
        versions: Vec::new(),
    };
    (facts, kvm)
}

/// Detects which version of `hypervisor` a plan is for (its configured `version`, or its
/// binary's `--version`, cached), and records it in `host` for the planner.
pub fn detect_version(
    hypervisor: Hypervisor,
    config: &microvm_spec::config::Config,
    host: &mut microvm_runner::HostFacts,
) -> microvm_runner::detect::Detection {
    let detection =
        microvm_runner::detect::detect(hypervisor, config, version_cache_file().as_deref());
    host.versions.retain(|(h, _)| *h != hypervisor);
    if let Some(v) = detection.version() {
        host.versions.push((hypervisor, v));
    }
    detection
}

/// `$XDG_CACHE_HOME/microvm/hypervisor-versions.json`; without `XDG_CACHE_HOME`,
/// `/var/cache/microvm/…` for root and `~/.cache/microvm/…` for others; `None` (no cache)
/// when none is known.
fn version_cache_file() -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let dir = match std::env::var_os("XDG_CACHE_HOME") {
        Some(d) => PathBuf::from(d),
        None if is_root() => PathBuf::from("/var/cache"),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".cache"),
    };
    Some(dir.join("microvm/hypervisor-versions.json"))
}

/// Whether this process may raise its open-files limit to 1048576 (virtiofsd's
/// `--rlimit-nofile`): the hard limit allows it already, or it has CAP_SYS_RESOURCE.
fn can_raise_nofile() -> bool {
    const WANTED: u64 = 1_048_576;
    const CAP_SYS_RESOURCE: u32 = 24;
    let hard_ok = std::fs::read_to_string("/proc/self/limits").is_ok_and(|limits| {
        limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
            .is_some_and(|hard| {
                hard == "unlimited" || hard.parse::<u64>().is_ok_and(|h| h >= WANTED)
            })
    });
    let has_cap = std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
            .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0)
    });
    hard_ok || has_cap
}

/// Where the KVM probe's verdict is kept for the rest of this boot: `/run/microvm` as
/// root, `$XDG_RUNTIME_DIR/microvm` otherwise (both are cleared at reboot).
fn kvm_cache_file() -> std::path::PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !is_root() => std::path::PathBuf::from(d).join("microvm"),
        _ if is_root() => std::path::PathBuf::from("/run/microvm"),
        _ => std::env::temp_dir().join(format!("microvm-{}", std::process::id())),
    };
    dir.join("kvm-probe.json")
}

/// Whether microvm runs as root.
pub fn is_root() -> bool {
    std::env::var_os("MICROVM_ASSUME_ROOT").is_some()
        || std::fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false)
}

/// Creates every missing volume exactly as microvm.nix's `microvm-run` does (inventory
/// §3.6): a sparse file, mkfs with the label; an existing image is never resized,
/// reformatted or relabelled. Relative images resolve in `workdir`. Returns each image's
/// absolute path, for the caller to hand over to the hypervisor's user.
pub fn ensure_volumes(
    name: &str,
    volumes: &[microvm_spec::config::Volume],
    workdir: &std::path::Path,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    use anyhow::Context as _;
    use microvm_image::volume::{ensure_volume, VolumeOutcome, VolumeSpec};
    let mut images = Vec::new();
    for v in volumes {
        let spec = VolumeSpec {
            image: workdir.join(&v.image),
            size_mib: v.size,
            fs_type: v.fs_type.clone(),
            label: v.label.clone(),
            mkfs_extra_args: v.mkfs_extra_args.clone(),
            auto_create: v.auto_create,
        };
        let outcome = ensure_volume(&spec).with_context(|| format!("volume {}", v.image))?;
        if let VolumeOutcome::Created { .. } = outcome {
            eprintln!(
                "microvm: {name}: created volume {} ({} MiB, {})",
                spec.image.display(),
                v.size.unwrap_or(0),
                v.fs_type
            );
        }
        images.push(spec.image);
    }
    Ok(images)
}
