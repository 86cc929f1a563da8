//! From what the user wrote ([`Spec`]) to what will run ([`Config`]): defaults (including
//! the computed ones of microvm.nix), absolute paths, and every check of the inventory's
//! §1.17, all reported at once with the key path and span they concern.

mod guest;
mod net;
mod ssh;
mod storage;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::*;
use crate::diag::Diagnostic;
use crate::node::{KeyPath, Node};
use crate::schema::{Spec, ThreadPoolSize};
use crate::source::{SourceMap, Span};
use crate::types::{Hypervisor, VmName};

#[derive(Debug)]
pub struct Context<'a> {
    pub tree: &'a Node,
    pub sources: &'a SourceMap,
    pub file: &'a Path,
    pub name: Option<VmName>,
    pub arch: Arch,
}

pub(crate) struct Resolver<'a> {
    ctx: &'a Context<'a>,
    diags: Vec<Diagnostic>,
    /// Every file or directory of the host that the definition names.
    inputs: std::cell::RefCell<Vec<Input>>,
    /// The VM name for messages ("MicroVM <n>: …").
    vm: String,
}

impl<'a> Resolver<'a> {
    fn span(&self, path: &KeyPath) -> Span {
        self.ctx.tree.span_of(path).clone()
    }

    pub(crate) fn error(&mut self, path: KeyPath, message: impl Into<String>) {
        let span = self.span(&path);
        self.diags.push(Diagnostic::error(message).at(path, span));
    }

    pub(crate) fn warn(&mut self, path: KeyPath, message: impl Into<String>) {
        let span = self.span(&path);
        self.diags.push(Diagnostic::warning(message).at(path, span));
    }

    /// A required value: reports "missing required key" at the enclosing table.
    pub(crate) fn required<T: Clone>(&mut self, value: &Option<T>, path: KeyPath) -> Option<T> {
        if value.is_none() {
            let key = match path.0.last() {
                Some(crate::node::Seg::Key(k)) => k.clone(),
                _ => path.to_string(),
            };
            let parent = KeyPath(path.0[..path.0.len().saturating_sub(1)].to_vec());
            let span = self.span(&parent);
            self.diags
                .push(Diagnostic::error(format!("missing required key `{key}`")).at(path, span));
        }
        value.clone()
    }

    /// A path naming a file input of the definition: relative to the file that wrote it.
    /// It is recorded as an input that must exist (a file, or a directory for
    /// `InputKind::Directory`).
    pub(crate) fn file_input(&self, path: &KeyPath, value: &str) -> PathBuf {
        self.input(path, value, InputKind::File)
    }

    pub(crate) fn input(&self, path: &KeyPath, value: &str, kind: InputKind) -> PathBuf {
        let file = self.input_path(path, value);
        self.inputs.borrow_mut().push(Input {
            key: path.clone(),
            path: file.clone(),
            kind,
        });
        file
    }

    /// A host path of the definition, relative to the file that wrote it.
    pub(crate) fn input_path(&self, path: &KeyPath, value: &str) -> PathBuf {
        let p = Path::new(value);
        if p.is_absolute() {
            return p.to_path_buf();
        }
        let span = self.span(path);
        let file = &self.ctx.sources.file(span.file).path;
        let dir = file.parent().map(Path::to_path_buf).unwrap_or_default();
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        let joined = dir.join(p);
        std::path::absolute(&joined).unwrap_or(joined)
    }

    pub(crate) fn absolute_guest_path(&mut self, path: KeyPath, value: &str) -> bool {
        if value.starts_with('/') && !value.split('/').any(|c| c == "..") {
            true
        } else {
            self.error(
                path,
                format!(
                    "{value:?} must be an absolute path in the guest (starting with /, without ..)"
                ),
            );
            false
        }
    }
}

/// A file or directory of the host that the definition names, which the build reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    /// Where the definition names it.
    pub key: KeyPath,
    /// The absolute path.
    pub path: PathBuf,
    pub kind: InputKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    File,
    Directory,
    /// A file or a directory (an OCI layout or archive, a Nix store path).
    Any,
}

/// Resolves a spec; returns the config (when every required piece was there), all
/// diagnostics found, and the host paths the definition names (for
/// [`crate::Loaded::missing_inputs`]).
pub fn resolve(spec: &Spec, ctx: &Context<'_>) -> (Option<Config>, Vec<Diagnostic>, Vec<Input>) {
    let mut r = Resolver {
        ctx,
        inputs: Default::default(),
        diags: Vec::new(),
        vm: String::new(),
    };

    let name = resolve_name(&mut r, spec);
    r.vm = vm_label(name.as_ref(), spec, ctx.file);
    let hypervisor = spec.hypervisor.unwrap_or(Hypervisor::Qemu);
    let sizing = resolve_sizing(&mut r, spec, hypervisor);
    let storage = storage::resolve(&mut r, spec);
    let net = net::resolve(&mut r, spec, hypervisor);
    let guest = guest::resolve(&mut r, spec, &net.interfaces);
    let qemu = hypervisor == Hypervisor::Qemu;
    let fwd =
        crate::forward::tap_forwards(qemu, &net.interfaces, &guest.network, &net.forward_ports);
    if let Err(e) = fwd {
        r.error(
            KeyPath::root().key("forwardPorts"),
            format!("MicroVM {}: {e}", r.vm),
        );
    }
    let kernel = resolve_kernel(&r, spec);
    let initrd_path = spec
        .initrd_path
        .as_ref()
        .map(|p| r.file_input(&KeyPath::root().key("initrdPath"), p));
    check_vsock(&mut r, spec);
    let machine_id = resolve_machine_id(&mut r, spec, name.as_ref());
    let credential_files = resolve_credential_files(&r, spec);
    let virtiofsd = resolve_virtiofsd(&mut r, spec);
    check_extra_args(&mut r, spec);
    check_bin_scripts(&mut r, spec);
    warn_without_effect(&mut r, spec);

    let parts = Parts {
        hypervisor,
        sizing,
        storage,
        net,
        guest,
        kernel,
        initrd_path,
        machine_id,
        credential_files,
        virtiofsd,
    };
    let config = name.map(|name| build_config(&r, spec, name, parts));
    (config, r.diags, r.inputs.into_inner())
}

/// The VM as messages name it: without a valid name, as the user wrote it.
fn vm_label(name: Option<&VmName>, spec: &Spec, file: &Path) -> String {
    match (name, &spec.host_name) {
        (Some(n), _) => n.to_string(),
        (None, Some(h)) => h.clone(),
        (None, None) => file.file_stem().map_or_else(
            || file.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        ),
    }
}

/// vCPUs and memory sizes, each checked against its range (an out-of-range value is
/// reported and replaced by its default).
struct Sizing {
    vcpu: u32,
    mem: u64,
    hotplug_mem: u64,
    hotplugged_mem: u64,
    initial_balloon_mem: u64,
}

fn resolve_sizing(r: &mut Resolver<'_>, spec: &Spec, hypervisor: Hypervisor) -> Sizing {
    let root = KeyPath::root();
    if spec.balloon_mem.is_some() {
        r.error(
            root.key("balloonMem"),
            "The balloonMem option has been removed and replaced by the boolean option balloon",
        );
    }
    for (path, message) in crate::ranges::check(spec, hypervisor) {
        r.error(path, message);
    }
    let in_range = |key, v: &Option<u64>| v.filter(|&v| crate::ranges::within(key, hypervisor, v));
    let mem = in_range("mem", &spec.mem).unwrap_or(512);
    if mem < 32 {
        r.warn(
            root.key("mem"),
            format!("MicroVM {}: {mem} MB of RAM is uncomfortably narrow.", r.vm),
        );
    }
    let hotplug_mem = in_range("hotplugMem", &spec.hotplug_mem).unwrap_or(0);
    Sizing {
        vcpu: in_range("vcpu", &spec.vcpu).map_or(1, |v| v as u32),
        mem,
        hotplug_mem,
        hotplugged_mem: in_range("hotpluggedMem", &spec.hotplugged_mem).unwrap_or(hotplug_mem),
        initial_balloon_mem: in_range("initialBalloonMem", &spec.initial_balloon_mem).unwrap_or(0),
    }
}

fn resolve_kernel(r: &Resolver<'_>, spec: &Spec) -> Option<KernelRef> {
    let key = KeyPath::root().key("kernel");
    spec.kernel.as_ref().map(|k| match k {
        // A bzImage, vmlinux or .deb, or a package directory.
        crate::schema::KernelSpec::Path(p) => KernelRef::Path(r.input(&key, p, InputKind::Any)),
        crate::schema::KernelSpec::Package(p) => KernelRef::Package(p.clone()),
        crate::schema::KernelSpec::Build {
            source, fragments, ..
        } => guest::kernel_build(r, &key, source.as_deref(), fragments),
    })
}

fn check_vsock(r: &mut Resolver<'_>, spec: &Spec) {
    if spec.vsock.ssh.enable == Some(true) && spec.vsock.cid.is_none() {
        r.error(
            KeyPath::root().key("vsock").key("ssh").key("enable"),
            format!(
                "MicroVM {}: vsock.ssh.enable needs vsock.cid to be set",
                r.vm
            ),
        );
    }
}

fn resolve_credential_files(
    r: &Resolver<'_>,
    spec: &Spec,
) -> std::collections::BTreeMap<String, PathBuf> {
    let key = KeyPath::root().key("credentialFiles");
    spec.credential_files
        .iter()
        // Read when the VM starts, not at build: they may not be there yet.
        .map(|(k, v)| (k.clone(), r.input_path(&key.key(k), v)))
        .collect()
}

/// What the checks resolved, waiting for a valid name to become a [`Config`].
struct Parts {
    hypervisor: Hypervisor,
    sizing: Sizing,
    storage: storage::Storage,
    net: net::Net,
    guest: Guest,
    kernel: Option<KernelRef>,
    initrd_path: Option<PathBuf>,
    machine_id: String,
    credential_files: std::collections::BTreeMap<String, PathBuf>,
    virtiofsd: Virtiofsd,
}

fn build_config(r: &Resolver<'_>, spec: &Spec, name: VmName, parts: Parts) -> Config {
    let n = name.to_string();
    Config {
        hypervisor: parts.hypervisor,
        arch: r.ctx.arch,
        vcpu: parts.sizing.vcpu,
        mem: parts.sizing.mem,
        hugepage_mem: spec.hugepage_mem.unwrap_or(false),
        hotplug_mem: parts.sizing.hotplug_mem,
        hotplugged_mem: parts.sizing.hotplugged_mem,
        balloon: spec.balloon.unwrap_or(false),
        initial_balloon_mem: parts.sizing.initial_balloon_mem,
        deflate_on_oom: spec.deflate_on_oom.unwrap_or(true),
        kernel: parts.kernel,
        initrd_path: parts.initrd_path,
        // NixOS's boot.consoleLogLevel default, which microvm.nix's kernelParams carry.
        kernel_params: spec
            .kernel_params
            .clone()
            .unwrap_or_else(|| vec!["loglevel=4".into()]),
        cpu: spec.cpu.clone(),
        kvm: spec.kvm.unwrap_or(KvmMode::Auto),
        control_channel: spec.control_channel.unwrap_or(ControlChannelMode::Auto),
        store_on_disk: parts.storage.store_on_disk,
        store_disk: spec
            .store_disk
            .as_ref()
            .map(|p| r.file_input(&KeyPath::root().key("storeDisk"), p)),
        store_disk_type: spec.store_disk_type.unwrap_or(StoreDiskType::Erofs),
        store_disk_erofs_flags: spec.store_disk_erofs_flags.clone(),
        store_disk_squashfs_flags: spec.store_disk_squashfs_flags.clone(),
        writable_store_overlay: spec.writable_store_overlay.clone(),
        system_symlink: spec.system_symlink.unwrap_or(!parts.storage.store_on_disk),
        volumes: parts.storage.volumes,
        shares: parts
            .storage
            .shares
            .into_iter()
            .map(|s| s.with_default_socket(&n))
            .collect(),
        interfaces: parts.net.interfaces,
        forward_ports: parts.net.forward_ports,
        devices: parts.net.devices,
        vsock: Vsock {
            cid: spec.vsock.cid,
            ssh: spec.vsock.ssh.enable.unwrap_or(false),
        },
        graphics: graphics(spec, &n),
        qemu: qemu(spec, r.ctx.arch, parts.net.pcie_root_ports),
        cloud_hypervisor: cloud_hypervisor(spec),
        crosvm: crosvm(spec),
        firecracker: firecracker(spec),
        kvmtool: package_only(&spec.kvmtool),
        stratovirt: package_only(&spec.stratovirt),
        alioth: package_only(&spec.alioth),
        user: spec.user.clone(),
        virtiofsd: parts.virtiofsd,
        credential_files: parts.credential_files,
        pre_start: spec.pre_start.clone().unwrap_or_default(),
        socket: match &spec.socket {
            None => Some(format!("{n}.sock")),
            Some(s) => s.clone(),
        },
        pretty_procnames: spec.pretty_procnames.unwrap_or(true),
        bin_scripts: spec.bin_scripts.clone(),
        extra_args_script: spec.extra_args_script.clone(),
        register_with_machined: spec.register_with_machined.unwrap_or(false),
        machine_id: parts.machine_id,
        register_closure: spec
            .register_closure
            .unwrap_or(spec.guest.enable.unwrap_or(true)),
        optimize: spec.optimize.enable.unwrap_or(true),
        guest: parts.guest,
        name,
    }
}

/// `n` is the VM name, which the default socket carries.
fn graphics(spec: &Spec, n: &str) -> Graphics {
    Graphics {
        enable: spec.graphics.enable.unwrap_or(false),
        socket: spec
            .graphics
            .socket
            .clone()
            .unwrap_or_else(|| format!("{n}-gpu.sock")),
        backend: spec.graphics.backend.unwrap_or(GraphicsBackend::Gtk),
        vulkan: spec.graphics.vulkan.clone(),
        hostmem: spec
            .graphics
            .hostmem
            .clone()
            .unwrap_or_else(|| "256M".into()),
        crosvm_package: spec.graphics.crosvm_package.as_ref().map(PathBuf::from),
    }
}

fn qemu(spec: &Spec, arch: Arch, pcie_root_ports: Vec<PcieRootPort>) -> Qemu {
    Qemu {
        machine: spec.qemu.machine.clone().unwrap_or_else(|| {
            match arch {
                Arch::X86_64 => "microvm",
                Arch::Aarch64 => "virt",
            }
            .into()
        }),
        machine_opts: spec.qemu.machine_opts.clone(),
        extra_args: spec.qemu.extra_args.clone().unwrap_or_default(),
        serial_console: spec.qemu.serial_console.unwrap_or(true),
        pcie_root_ports,
        package: spec.qemu.package.as_ref().map(PathBuf::from),
    }
}

fn cloud_hypervisor(spec: &Spec) -> CloudHypervisor {
    let ch = &spec.cloud_hypervisor;
    CloudHypervisor {
        extra_args: ch.extra_args.clone().unwrap_or_default(),
        platform_oem_strings: ch.platform_oem_strings.clone().unwrap_or_default(),
        package: ch.package.as_ref().map(PathBuf::from),
        version: ch.version.clone(),
    }
}

fn crosvm(spec: &Spec) -> Crosvm {
    Crosvm {
        extra_args: spec.crosvm.extra_args.clone().unwrap_or_default(),
        pivot_root: spec.crosvm.pivot_root.clone(),
        package: spec.crosvm.package.as_ref().map(PathBuf::from),
        version: spec.crosvm.version.clone(),
    }
}

fn firecracker(spec: &Spec) -> Firecracker {
    let fc = &spec.firecracker;
    Firecracker {
        cpu: fc.cpu.clone(),
        drive_io_engine: fc.drive_io_engine.unwrap_or(DriveIoEngine::Async),
        extra_args: fc.extra_args.clone().unwrap_or_default(),
        extra_config: fc.extra_config.clone(),
        package: fc.package.as_ref().map(PathBuf::from),
        version: fc.version.clone(),
    }
}

fn package_only(spec: &crate::schema::PackageOnlySpec) -> PackageOnly {
    PackageOnly {
        package: spec.package.as_ref().map(PathBuf::from),
        version: spec.version.clone(),
    }
}

fn resolve_name(r: &mut Resolver<'_>, spec: &Spec) -> Option<VmName> {
    if let Some(h) = &spec.host_name {
        return match h.parse::<VmName>() {
            Ok(n) => Some(n),
            Err(e) => {
                r.error(KeyPath::root().key("hostName"), e.0);
                None
            }
        };
    }
    if let Some(n) = &r.ctx.name {
        return Some(n.clone());
    }
    let stem = r.ctx.file.file_stem();
    let why = match stem.map(|s| s.to_str().map(str::parse::<VmName>)) {
        Some(Some(Ok(n))) => return Some(n),
        Some(Some(Err(e))) => e.0,
        Some(None) => "its name is not valid UTF-8".to_owned(),
        None => "it has no name".to_owned(),
    };
    r.error(
        KeyPath::root(),
        format!(
            "cannot name the VM after the file {:?} ({why}); set `hostName`",
            r.ctx.file.to_string_lossy()
        ),
    );
    None
}

/// `machineId`: as given (validated), else derived like later microvm.nix: the first 16
/// bytes of sha256("microvm.nix:<hostName>"), formatted as a UUID.
fn resolve_machine_id(r: &mut Resolver<'_>, spec: &Spec, name: Option<&VmName>) -> String {
    if let Some(id) = &spec.machine_id {
        let hex: String = id.chars().filter(|c| *c != '-').collect();
        if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            r.error(
                KeyPath::root().key("machineId"),
                format!("{id:?} is not a machine id (32 hex digits, dashes allowed)"),
            );
        }
        return id.to_lowercase();
    }
    let digest = Sha256::digest(format!("microvm.nix:{}", name.map_or("", |n| n.as_str())));
    let h: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn resolve_virtiofsd(r: &mut Resolver<'_>, spec: &Spec) -> Virtiofsd {
    let path = KeyPath::root().key("virtiofsd").key("threadPoolSize");
    let thread_pool_size = match &spec.virtiofsd.thread_pool_size {
        None => ThreadPool::Nproc,
        Some(ThreadPoolSize::Count(n)) => ThreadPool::Count(*n),
        Some(ThreadPoolSize::Expr(s)) if s.trim() == "`nproc`" || s.trim() == "nproc" => {
            ThreadPool::Nproc
        }
        Some(ThreadPoolSize::Expr(s)) => match s.trim().parse() {
            Ok(n) => match crate::ranges::range("virtiofsd.threadPoolSize")
                .complaint(Hypervisor::Qemu, n)
            {
                None => ThreadPool::Count(n),
                Some(message) => {
                    r.error(path, message);
                    ThreadPool::Nproc
                }
            },
            Err(_) => {
                r.error(path, format!("{s:?} is neither a number nor \"`nproc`\""));
                ThreadPool::Nproc
            }
        },
    };
    Virtiofsd {
        inode_file_handles: Some(
            spec.virtiofsd
                .inode_file_handles
                .unwrap_or(InodeFileHandles::Prefer),
        ),
        thread_pool_size,
        extra_args: spec.virtiofsd.extra_args.clone().unwrap_or_default(),
        group: match &spec.virtiofsd.group {
            None => Some("kvm".into()),
            Some(g) => g.clone(),
        },
        package: spec.virtiofsd.package.as_ref().map(PathBuf::from),
    }
}

fn check_extra_args(r: &mut Resolver<'_>, spec: &Spec) {
    if let Some(args) = &spec.cloud_hypervisor.extra_args {
        if let Some(i) = args.iter().position(|a| a.contains("oem_strings")) {
            r.error(
                KeyPath::root().key("cloud-hypervisor").key("extraArgs").index(i),
                format!("MicroVM {}: use cloud-hypervisor.platformOEMStrings instead of oem_strings in extraArgs", r.vm),
            );
        }
    }
    // The original asserts this only when cloud-hypervisor is the VM's hypervisor; the
    // value means nothing to the others, so it is checked for every VM here.
    if let Some(strings) = &spec.cloud_hypervisor.platform_oem_strings {
        if let Some(i) = strings.iter().position(|s| s.contains("oem_strings")) {
            r.error(
                KeyPath::root()
                    .key("cloud-hypervisor")
                    .key("platformOEMStrings")
                    .index(i),
                format!("MicroVM {}: `config.microvm.cloud-hypervisor.platformOEMStrings` items must not contain `oem_strings`", r.vm),
            );
        }
    }
}

/// `binScripts` names are file names of the runner's `bin/`; the two scripts that start
/// and stop the VM are microvm's own (`preStart` and `extraArgsScript` add to the start).
fn check_bin_scripts(r: &mut Resolver<'_>, spec: &Spec) {
    for name in spec.bin_scripts.keys() {
        let p = KeyPath::root().key("binScripts").key(name);
        let plain = !name.is_empty()
            && name != "."
            && name != ".."
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
        if !plain {
            r.error(
                p,
                format!("{name:?} is not a script name (letters, digits, `-`, `_`, `.`, `+`)"),
            );
        } else if name == "microvm-run" || name == "microvm-shutdown" {
            r.error(
                p,
                format!("bin/{name} is generated by microvm; use `preStart` or `extraArgsScript` to add to the start"),
            );
        }
    }
}

/// Options of microvm.nix that have nothing to act on here: a warning when they are set
/// to what would need it (docs/schema.md lists them).
fn warn_without_effect(r: &mut Resolver<'_>, spec: &Spec) {
    let root = KeyPath::root();
    if spec.guest.enable == Some(false) {
        r.warn(
            root.key("guest").key("enable"),
            "guest.enable = false has no effect: the guest is always microvm's own (kernel, initrd with its init, root disk); only its default for `registerClosure` follows",
        );
    }
    if spec.optimize.enable == Some(false) {
        r.warn(
            root.key("optimize").key("enable"),
            "optimize.enable = false has no effect: the NixOS defaults it turns off (documentation, tpm2, swraid, …) are not in microvm's guest",
        );
    }
    if spec.register_with_machined == Some(true) {
        r.warn(
            root.key("registerWithMachined"),
            "registerWithMachined registers the VM with systemd-machined (`machinectl list`) only where it runs as the `microvm@` unit of `microvm host install` on a host where systemd-machined runs; elsewhere it has no effect",
        );
    }
    if spec.vsock.ssh.enable == Some(true) {
        r.warn(
            root.key("vsock").key("ssh").key("enable"),
            "vsock.ssh.enable makes `microvm ssh` connect over vsock port 22; the guest must listen there itself (systemd 256's sshd-vsock generator, or socat from VSOCK-LISTEN:22 to sshd): microvm's init starts no such listener",
        );
    }
}
