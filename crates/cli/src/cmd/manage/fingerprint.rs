//! The fingerprint of what a runner is built from, so `list` can tell "outdated" without
//! building (which would write into the store).
//!
//! It hashes the resolved configuration (every default filled, every path absolute), the
//! host facts the plan depends on, the `microvm` binary itself (it embeds the guest init
//! and decides every generated file), and the contents of every input file or directory
//! the configuration names as build inputs: kernel, prebuilt initrd or store disk, root
//! sources; and the hypervisor version the plan is for (configured, or detected from the
//! binary, cached by its path, size and mtime), so an upgraded hypervisor makes the VM
//! outdated. Contents are hashed through the store's stat cache, so an unchanged input
//! costs one `stat`. Runtime paths (volumes, shares, sockets, devices, credential files)
//! are not inputs of the runner: a volume written by the guest must not make a VM
//! outdated.
//!
//! `create` and `update` record the fingerprint with the runner it produced in
//! `<vm>/inputs.json`; `list` recomputes it. A mismatch (or a missing record) reads as
//! "outdated", which `update` then settles by building: the build, not the fingerprint,
//! decides whether the runner changed.

use std::path::Path;

use anyhow::Context as _;
use microvm_host::state::VmDir;
use microvm_image::store::{combine, Store};
use microvm_runner::HostFacts;
use microvm_spec::config::{Config, KernelRef, RootSource};
use microvm_spec::Loaded;
use serde::{Deserialize, Serialize};

/// The host files and trees the build reads: the kernel, a prebuilt initrd or store
/// disk, and the root sources. A Nix closure is named by its immutable store path, so the
/// path itself (already in the configuration) stands for its contents.
fn input_paths(config: &Config) -> Vec<&Path> {
    let mut out: Vec<&Path> = Vec::new();
    if let Some(KernelRef::Path(p)) = &config.kernel {
        out.push(p);
    }
    out.extend(config.initrd_path.as_deref());
    out.extend(config.store_disk.as_deref());
    for root in &config.guest.root {
        match root {
            RootSource::Directory { path, .. }
            | RootSource::Tarball { path, .. }
            | RootSource::Oci { path, .. } => out.push(path),
            _ => {}
        }
    }
    out.extend(
        config
            .guest
            .ssh
            .authorized_key_files
            .iter()
            .map(std::path::PathBuf::as_path),
    );
    out
}

pub fn compute(loaded: &Loaded, host: &HostFacts, store: &Store) -> anyhow::Result<String> {
    let config = serde_json::to_string(&loaded.config).context("serialising the configuration")?;
    let mut inputs = String::new();
    for p in input_paths(&loaded.config) {
        // Follow symlinks (a kernel linked from elsewhere): the contents count.
        let real = p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let hash = match store.hash_path(&real) {
            Ok(h) => h,
            Err(e) => format!("unreadable: {e}"),
        };
        inputs.push_str(&format!("{}\t{hash}\n", p.display()));
    }
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("locating the microvm binary")?;
    let exe_hash = store
        .hash_path(&exe)
        .with_context(|| format!("hashing {}", exe.display()))?;
    // What the build plans with: the host facts with the detected version in them.
    let mut host = host.clone();
    let hypervisor = loaded.config.hypervisor;
    crate::cmd::common::detect_version(hypervisor, &loaded.config, &mut host);
    Ok(combine(&[
        ("config", &config),
        (
            "host",
            &serde_json::to_string(&host).context("serialising host facts")?,
        ),
        ("microvm", &exe_hash),
        ("inputs", &inputs),
    ]))
}

/// `<vm>/inputs.json`: the fingerprint and the runner it produced.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Recorded {
    pub runner: std::path::PathBuf,
    pub fingerprint: String,
}

const FILE: &str = "inputs.json";

pub fn read(vm: &VmDir) -> Option<Recorded> {
    let bytes = std::fs::read(vm.path().join(FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

pub fn write(vm: &VmDir, runner: &Path, fingerprint: &str) -> anyhow::Result<()> {
    let rec = Recorded {
        runner: runner.to_path_buf(),
        fingerprint: fingerprint.to_owned(),
    };
    let text = serde_json::to_vec_pretty(&rec)?;
    vm.write_file(FILE, &text)?;
    Ok(())
}
