//! Building a VM's guest artifacts into the store: the kernel (and its uncompressed ELF),
//! the root/store disk, and the initrd with the guest init, its plan and the modules the
//! VM needs. Each artifact is cached under the hash of its inputs; a rebuild with nothing
//! changed only hashes (stat-cached) inputs and finds everything in place.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microvm_init::plan::GuestPlan;
use microvm_spec::config::{Config, KernelRef, RootSource, StoreDiskType};

use crate::disk::{self, DiskOptions, DiskType};
use crate::kernel::{Availability, FsCompression, KernelFeature, KernelInfo};
use crate::modules::ModuleIndex;
use crate::store::{combine, Store};
use crate::tools::{Toolbox, Version};
use crate::{fetch, guest, guest_init, initrd, kernel, modules, rootfs, store};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("no kernel is configured; set `kernel` to a bzImage/vmlinux/.deb path, or `kernel = {{ package = \"linux-image-cloud-amd64\" }}`")]
    NoKernel,
    #[error("no guest root is configured; add a `[[root]]` source (a directory or a tarball), or set `storeDisk` to a prebuilt image")]
    NoRoot,
    #[error("root source `{0}` is not supported by this version of microvm yet")]
    UnsupportedSource(&'static str),
    #[error("root source {path} must land at `/` (target {target} is not supported yet)")]
    Target { path: PathBuf, target: String },
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    #[error(transparent)]
    KernelBuild(#[from] kernel::build::KernelBuildError),
    #[error(transparent)]
    Modules(#[from] modules::ModulesError),
    #[error(transparent)]
    Initrd(#[from] initrd::InitrdError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Oci(#[from] rootfs::oci::OciError),
    #[error(transparent)]
    Nix(#[from] rootfs::nix::NixError),
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Fetch(#[from] fetch::FetchError),
    #[error(transparent)]
    Debian(#[from] rootfs::debian::DebianError),
    #[error("ssh.authorizedKeyFiles: {}: {reason}", path.display())]
    KeyFile { path: PathBuf, reason: String },
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct Built {
    pub kernel: PathBuf,
    pub vmlinux: Option<PathBuf>,
    pub kernel_version: Option<String>,
    pub initrd: PathBuf,
    pub store_disk: Option<PathBuf>,
    /// What `microvm build --list-root` prints: each path of the root and its source
    /// (`PATH<TAB>SOURCE` lines), beside a disk microvm built.
    pub root_manifest: Option<PathBuf>,
    /// Kernel parameters the root needs (`regInfo=…` for a Nix closure).
    pub kernel_params: Vec<String>,
    pub plan: GuestPlan,
    /// Hash of every input of the artifacts.
    pub hash: String,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub name: &'static str,
    pub duration: Duration,
    /// Found in the store, not rebuilt.
    pub cached: bool,
    pub detail: String,
}

/// The kernel build a definition's `kernel = { build = … }` asks for.
pub fn build_request(build: &microvm_spec::config::KernelBuild) -> kernel::build::BuildRequest {
    use microvm_spec::config::KernelBuildSource as S;
    kernel::build::BuildRequest {
        source: match &build.source {
            S::Package(name) => kernel::build::SourceRef::Package(name.clone()),
            S::Path(path) => kernel::build::SourceRef::Path(path.clone()),
        },
        fragments: build.fragments.clone(),
        jobs: None,
    }
}

/// Builds (or finds) the artifacts of `config` in `store`. `progress` is told about
/// each step as it starts.
pub fn build(
    config: &Config,
    store: &Store,
    progress: &mut dyn FnMut(&str),
) -> Result<Built, BuildError> {
    let mut steps = Vec::new();
    let kernel = kernel_step(config, store, progress, &mut steps)?;
    let disk = disk_step(config, store, &kernel, progress, &mut steps)?;
    let initrd = initrd_step(config, store, &kernel, &disk.defaults, progress, &mut steps)?;
    let _ = store.save();
    let hash = combine(&[
        ("kernel", &kernel.hash),
        ("initrd", &initrd.hash),
        (
            "disk",
            &disk
                .path
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
        ),
    ]);
    Ok(Built {
        kernel: kernel.info.image.clone(),
        vmlinux: kernel.vmlinux,
        kernel_version: kernel.info.version.clone(),
        initrd: initrd.path,
        store_disk: disk.path,
        root_manifest: disk.manifest,
        kernel_params: disk.defaults.kernel_params(),
        plan: initrd.plan,
        hash,
        steps,
    })
}

/// The kernel as the build found it: its files, content hash and extraction cache.
struct KernelStep {
    info: KernelInfo,
    hash: String,
    cache: PathBuf,
    vmlinux: Option<PathBuf>,
}

impl KernelStep {
    fn version(&self) -> Option<Version> {
        self.info.version.as_deref().and_then(|v| v.parse().ok())
    }
}

/// Step 1: the kernel (fetched or built when the definition says so), extracted into the
/// store's kernel cache, with its uncompressed vmlinux where one can be had.
fn kernel_step(
    config: &Config,
    store: &Store,
    progress: &mut dyn FnMut(&str),
    steps: &mut Vec<Step>,
) -> Result<KernelStep, BuildError> {
    let t = Instant::now();
    let source = kernel_source(config, store, progress)?;
    let hash = store.hash_path(&source)?;
    let cache = store.root().join(".cache/kernels").join(&hash[..32]);
    let mut info = KernelInfo::from_path(&source, &cache)?;
    let vmlinux = match info.ensure_vmlinux(&cache) {
        Ok(p) => Some(p.to_path_buf()),
        Err(e) => {
            tracing::warn!("no uncompressed kernel: {e}");
            None
        }
    };
    steps.push(Step {
        name: "kernel",
        duration: t.elapsed(),
        cached: false,
        detail: info.version.clone().unwrap_or_default(),
    });
    Ok(KernelStep {
        info,
        hash,
        cache,
        vmlinux,
    })
}

/// The root/store disk: prebuilt, none, or built from the root sources.
struct DiskStep {
    path: Option<PathBuf>,
    manifest: Option<PathBuf>,
    defaults: rootfs::defaults::RootDefaults,
}

/// Step 2: the root/store disk.
fn disk_step(
    config: &Config,
    store: &Store,
    kernel: &KernelStep,
    progress: &mut dyn FnMut(&str),
    steps: &mut Vec<Step>,
) -> Result<DiskStep, BuildError> {
    let t = Instant::now();
    let mut disk = DiskStep {
        path: config.store_disk.clone(),
        manifest: None,
        defaults: rootfs::defaults::RootDefaults::default(),
    };
    let mut cached = true;
    if config.store_disk.is_none() && config.store_on_disk {
        let built = root_disk(config, store, kernel.version(), progress)?;
        cached = built.cached;
        disk = DiskStep {
            path: Some(built.path),
            manifest: Some(built.manifest),
            defaults: built.defaults,
        };
    }
    steps.push(Step {
        name: "root disk",
        duration: t.elapsed(),
        cached,
        detail: String::new(),
    });
    Ok(disk)
}

/// The initrd in the store and the guest plan inside it.
struct InitrdStep {
    path: PathBuf,
    hash: String,
    plan: GuestPlan,
}

/// Step 3: the initrd (guest init, plan, the modules the kernel lacks), in the store by
/// the hash of everything it is made of; a cached one gives back the plan it holds.
fn initrd_step(
    config: &Config,
    store: &Store,
    kernel: &KernelStep,
    root_defaults: &rootfs::defaults::RootDefaults,
    progress: &mut dyn FnMut(&str),
    steps: &mut Vec<Step>,
) -> Result<InitrdStep, BuildError> {
    let t = Instant::now();
    let mut plan = guest::plan(config);
    add_key_files(&config.guest.ssh, &mut plan.authorized_keys)?;
    root_defaults.apply(config, &mut plan);
    let compression = match config.store_disk_type {
        StoreDiskType::Erofs => Some(FsCompression::Lz4),
        StoreDiskType::Squashfs => None,
    };
    let features = guest::kernel_features(config, compression);
    let init = guest_init::guest_init_binary();
    let hash = combine(&[
        ("init", &blake3::hash(init).to_hex()),
        ("kernel", &kernel.hash),
        ("plan", &plan.to_json()),
        ("features", &format!("{features:?}")),
    ]);
    let dir = store.path(&hash, "initrd");
    let path = dir.join("initrd");
    let cached = path.exists();
    if !cached {
        progress("assembling initrd");
        let initrd = Initrd {
            init,
            kernel: &kernel.info,
            kernel_cache: &kernel.cache,
            features: &features,
        };
        write_initrd(store, &dir, &initrd, &mut plan)?;
    } else if let Ok(text) = std::fs::read_to_string(dir.join("plan.json")) {
        if let Ok(stored) = GuestPlan::from_json(&text) {
            plan = stored;
        }
    }
    steps.push(Step {
        name: "initrd",
        duration: t.elapsed(),
        cached,
        detail: String::new(),
    });
    Ok(InitrdStep { path, hash, plan })
}

/// Adds the lines of each `ssh.authorizedKeyFiles` file to the guest root's authorized
/// keys (checked, and bounded like the inline ones).
fn add_key_files(
    ssh: &microvm_spec::config::Ssh,
    keys: &mut Vec<String>,
) -> Result<(), BuildError> {
    use microvm_spec::ssh_key::{check_line, file_lines, MAX_FILE, MAX_KEYS};
    use std::io::Read as _;
    for path in &ssh.authorized_key_files {
        let bad = |reason: String| BuildError::KeyFile {
            path: path.clone(),
            reason,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_FILE + 1).read_to_string(&mut text))
            .map_err(|e| bad(e.to_string()))?;
        if text.len() as u64 > MAX_FILE {
            return Err(bad(format!("larger than {MAX_FILE} bytes")));
        }
        for line in file_lines(&text) {
            check_line(line).map_err(bad)?;
            keys.push(line.to_owned());
        }
        if keys.len() > MAX_KEYS {
            return Err(bad(format!("more than {MAX_KEYS} authorized keys in all")));
        }
    }
    Ok(())
}

/// Where the kernel comes from: a path, a fetched Debian package, or a build.
fn kernel_source(
    config: &Config,
    store: &Store,
    progress: &mut dyn FnMut(&str),
) -> Result<PathBuf, BuildError> {
    Ok(match &config.kernel {
        Some(KernelRef::Path(p)) => p.clone(),
        Some(KernelRef::Package(name)) => {
            progress(&format!("fetching kernel package {name}"));
            fetch::debian_kernel(name, &store.root().join(".cache/debs"))?
        }
        Some(KernelRef::Build(build)) => {
            kernel::build::build(&build_request(build), store, progress)?.dir
        }
        None => return Err(BuildError::NoKernel),
    })
}

/// What goes into an initrd besides the plan.
struct Initrd<'a> {
    init: &'a [u8],
    kernel: &'a KernelInfo,
    kernel_cache: &'a Path,
    features: &'a [KernelFeature],
}

/// Assembles the initrd (init, the modules `features` need, the plan, which learns the
/// modules' load order) and publishes it with `plan.json` as `initrd_dir`.
fn write_initrd(
    store: &Store,
    initrd_dir: &Path,
    initrd: &Initrd<'_>,
    plan: &mut GuestPlan,
) -> Result<(), BuildError> {
    let modules = required_modules(initrd.kernel, initrd.features, initrd.kernel_cache)?;
    let mut builder = initrd::InitrdBuilder::new();
    builder.init(initrd.init.to_vec())?;
    let index = match &initrd.kernel.modules_dir {
        Some(dir) if !modules.is_empty() => Some(ModuleIndex::open(dir, initrd.kernel_cache)?),
        _ => None,
    };
    if let Some(index) = index {
        let resolved = index.resolve(&modules)?;
        plan.modules = builder.add_modules(&resolved)?;
    }
    builder.plan(plan)?;
    let scratch = store.scratch("initrd")?;
    let tmp = scratch.join("out");
    std::fs::create_dir_all(&tmp).map_err(|source| store::StoreError::Io {
        op: "creating",
        path: tmp.clone(),
        source,
    })?;
    builder.write_to(&tmp.join("initrd"))?;
    std::fs::write(tmp.join("plan.json"), plan.to_json()).map_err(|source| {
        store::StoreError::Io {
            op: "writing",
            path: tmp.clone(),
            source,
        }
    })?;
    store.publish(&tmp, initrd_dir)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(())
}

/// The modules to load for `features`; a missing feature is an error naming the kernel.
fn required_modules(
    kernel: &KernelInfo,
    features: &[KernelFeature],
    _cache: &Path,
) -> Result<Vec<String>, BuildError> {
    let mut names = Vec::new();
    for f in features {
        let optional = matches!(f, KernelFeature::VirtioMmio | KernelFeature::VirtioPci);
        let wanted: Vec<String> = match kernel.supports(*f) {
            Availability::Builtin => Vec::new(),
            Availability::Module(m) => m,
            Availability::Missing { .. } if optional => Vec::new(),
            Availability::Missing { .. } => {
                kernel.require(*f)?;
                Vec::new()
            }
            // No configuration: load the modules when the kernel ships them.
            Availability::Unknown => f.module_names().into_iter().map(str::to_owned).collect(),
        };
        for m in wanted {
            if !names.contains(&m) {
                names.push(m);
            }
        }
    }
    if kernel.config.is_none() {
        // Without a configuration we cannot tell built-ins from missing modules: keep the
        // ones the kernel ships and let the guest report what is absent.
        if let Some(dir) = &kernel.modules_dir {
            if let Ok(index) = ModuleIndex::open(dir, _cache) {
                names.retain(|n| index.has_module(n) || index.is_builtin(n));
            }
        } else {
            names.clear();
        }
    }
    Ok(names)
}

/// A root disk in the store, with its `--list-root` manifest and the root's defaults.
struct RootDisk {
    path: PathBuf,
    cached: bool,
    manifest: PathBuf,
    defaults: rootfs::defaults::RootDefaults,
}

fn root_disk(
    config: &Config,
    store: &Store,
    kernel_version: Option<Version>,
    progress: &mut dyn FnMut(&str),
) -> Result<RootDisk, BuildError> {
    if config.guest.root.is_empty() {
        return Err(BuildError::NoRoot);
    }
    let sources = RootSources::open(config, store, progress)?;
    let (disk_type, name, flags) = match config.store_disk_type {
        StoreDiskType::Erofs => (
            DiskType::Erofs,
            "root.erofs",
            config.store_disk_erofs_flags.clone(),
        ),
        StoreDiskType::Squashfs => (
            DiskType::Squashfs,
            "root.squashfs",
            config.store_disk_squashfs_flags.clone(),
        ),
    };
    let hash = combine(&[
        ("sources", &sources.parts.join("\n")),
        ("type", name),
        ("flags", &format!("{flags:?}")),
        ("kernel", &format!("{kernel_version:?}")),
        ("layout", "manifest+defaults"),
    ]);
    let out = store.path(&hash, name);
    let manifest = PathBuf::from(format!("{}.manifest", out.display()));
    let defaults_path = PathBuf::from(format!("{}.defaults.json", out.display()));
    // A disk whose manifest or defaults went missing (an old gc) is built again rather
    // than used without the image's default command.
    if out.exists() && manifest.exists() && defaults_path.exists() {
        return Ok(RootDisk {
            defaults: rootfs::defaults::RootDefaults::read(&defaults_path).unwrap_or_default(),
            path: out,
            cached: true,
            manifest,
        });
    }
    progress("staging the guest root");
    let scratch = store.scratch("root")?;
    let staged = rootfs::stage(&sources.sources, &scratch.join("tree"))?;
    warn_skipped(&staged.skipped);
    let defaults = root_defaults(config, &sources, &staged)?;
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| store::StoreError::Io {
            op: "writing",
            path,
            source,
        }
    };
    let manifest_tmp = scratch.join("manifest");
    staged.write_manifest(&manifest_tmp)?;
    let defaults_tmp = scratch.join("defaults.json");
    std::fs::write(&defaults_tmp, defaults.to_json()).map_err(io(&defaults_tmp))?;
    progress(&format!("building the {name} image"));
    let opts = DiskOptions {
        extra_flags: flags,
        kernel_version,
        ..root_disk_options(disk_type, &sources, &staged)
    };
    let tmp = scratch.join(name);
    disk::build_disk(&staged.root, &tmp, &opts)?;
    // The disk last: its presence means the manifest and defaults are there too.
    store.publish(&manifest_tmp, &manifest)?;
    store.publish(&defaults_tmp, &defaults_path)?;
    store.publish(&tmp, &out)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(RootDisk {
        path: out,
        cached: false,
        manifest,
        defaults,
    })
}

/// The guest root's sources, opened in order, with what names each for the cache.
struct RootSources {
    sources: Vec<rootfs::RootSource>,
    /// One line per source: what the root disk's hash covers.
    parts: Vec<String>,
    /// The closure of a Nix root (then the only source).
    nix: Option<rootfs::nix::Closure>,
    /// The last OCI image, whose default command the root takes.
    last_oci: Option<usize>,
}

impl RootSources {
    fn open(
        config: &Config,
        store: &Store,
        progress: &mut dyn FnMut(&str),
    ) -> Result<Self, BuildError> {
        let mut out = RootSources {
            sources: Vec::new(),
            parts: Vec::new(),
            nix: None,
            last_oci: None,
        };
        for s in &config.guest.root {
            match s {
                RootSource::Directory { path, target } => {
                    let src = rootfs::RootSource::Directory(path.clone());
                    out.add_at_root(store, src, path, target)?;
                }
                RootSource::Tarball { path, target } => {
                    let src = rootfs::RootSource::Tarball(path.clone());
                    out.add_at_root(store, src, path, target)?;
                }
                RootSource::Oci {
                    path,
                    reference,
                    target,
                } => {
                    let arch = rootfs::oci::oci_arch(config.arch.name());
                    let image = rootfs::oci::OciImage::open(path, reference.as_deref(), arch)?;
                    out.last_oci = Some(out.sources.len());
                    let src = rootfs::RootSource::Oci(Box::new(image));
                    out.add_at_root(store, src, path, target)?;
                }
                RootSource::Debian {
                    suite,
                    packages,
                    mirror,
                    variant,
                } => {
                    let debian = rootfs::debian::DebianRoot {
                        suite: suite.clone(),
                        packages: packages.clone(),
                        mirror: mirror.clone(),
                        variant: variant.clone(),
                    };
                    let (tar, _) = rootfs::debian::ensure(&debian, store)?;
                    out.parts.push(format!("debian:{}", store.hash_path(&tar)?));
                    out.sources.push(rootfs::RootSource::Tarball(tar));
                }
                RootSource::Nix { path } => {
                    if config.guest.root.len() != 1 {
                        return Err(rootfs::nix::NixError::NotAlone.into());
                    }
                    out.add_nix(path, progress)?;
                }
            }
        }
        Ok(out)
    }

    /// A source the definition names by a host path, which must land at `/`.
    fn add_at_root(
        &mut self,
        store: &Store,
        src: rootfs::RootSource,
        path: &Path,
        target: &str,
    ) -> Result<(), BuildError> {
        if target != "/" {
            return Err(BuildError::Target {
                path: path.to_owned(),
                target: target.to_owned(),
            });
        }
        // An OCI image is named by its manifest digest (which names every layer).
        let key = match &src {
            rootfs::RootSource::Oci(image) => image.manifest_digest.clone(),
            _ => store.hash_path(path)?,
        };
        self.parts.push(format!("{}:{key}", path.display()));
        self.sources.push(src);
        Ok(())
    }

    /// A Nix store path: its closure, named by every path and the registration.
    fn add_nix(&mut self, path: &Path, progress: &mut dyn FnMut(&str)) -> Result<(), BuildError> {
        progress(&format!("querying the closure of {}", path.display()));
        let closure = rootfs::nix::Closure::query(&Toolbox::from_env(), path)?;
        let listed: Vec<String> = closure
            .paths
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        self.parts.push(format!(
            "nix:{}:{}:{}",
            path.display(),
            listed.join(" "),
            blake3::hash(&closure.registration).to_hex()
        ));
        self.sources
            .push(rootfs::RootSource::NixStorePaths(closure.paths.clone()));
        self.nix = Some(closure);
        Ok(())
    }
}

/// What the staged root boots by default: a Nix system (whose info it gets written
/// into the root) or the last OCI image's command.
fn root_defaults(
    config: &Config,
    sources: &RootSources,
    staged: &rootfs::StagedRoot,
) -> Result<rootfs::defaults::RootDefaults, BuildError> {
    let mut defaults = rootfs::defaults::RootDefaults {
        ssh_host_keys: rootfs::defaults::ssh_host_keys(&staged.root),
        ..Default::default()
    };
    if let Some(closure) = &sources.nix {
        closure.write_info(staged)?;
        defaults.nix = Some(closure.boot());
    }
    let last_oci = sources.last_oci.and_then(|i| sources.sources.get(i));
    if let Some(rootfs::RootSource::Oci(image)) = last_oci {
        defaults.command = match image.default_command(&staged.root) {
            Ok(command) => command,
            // The definition's own command or init does not need the image's.
            Err(e) if config.guest.command.is_some() || config.guest.init.is_some() => {
                tracing::warn!("{e}");
                None
            }
            Err(e) => return Err(e.into()),
        };
    }
    Ok(defaults)
}

/// The root disk's label, mount point and ownership, which a Nix store sets.
fn root_disk_options(
    disk_type: DiskType,
    sources: &RootSources,
    staged: &rootfs::StagedRoot,
) -> DiskOptions {
    let (label, mount_point) = match &sources.nix {
        Some(_) => (
            Some(rootfs::nix::STORE_LABEL.to_owned()),
            Some(rootfs::nix::STORE_DIR.to_owned()),
        ),
        None => (None, None),
    };
    // A root staged as root keeps its owners (an OCI image's or a tarball's); a Nix
    // store is root's, as microvm.nix's `--all-root`.
    let ownership = if staged.ownership_preserved && sources.nix.is_none() {
        disk::Ownership::Preserve
    } else {
        disk::Ownership::AllRoot
    };
    DiskOptions {
        disk_type,
        label,
        mount_point,
        ownership,
        ..Default::default()
    }
}

/// One warning for what staging had to leave out (device nodes and xattrs an unprivileged
/// build cannot create): the first few paths, and how to see them all.
fn warn_skipped(skipped: &[rootfs::Skipped]) {
    const SHOWN: usize = 5;
    if skipped.is_empty() {
        return;
    }
    let mut list: Vec<String> = skipped
        .iter()
        .take(SHOWN)
        .map(|s| format!("{} ({})", s.path.display(), s.reason))
        .collect();
    if skipped.len() > SHOWN {
        list.push(format!(
            "and {} more (RUST_LOG=debug lists them)",
            skipped.len() - SHOWN
        ));
    }
    tracing::warn!(
        "the guest root lacks {} entr{} this build could not create (build as root to keep them): {}",
        skipped.len(),
        if skipped.len() == 1 { "y" } else { "ies" },
        list.join(", ")
    );
}
