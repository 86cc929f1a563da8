//! The resolved configuration: every default filled in, every cross-field rule checked.
//! Hypervisor backends only ever see this form.
//!
//! Paths follow microvm.nix: runtime paths (volume images, sockets, share sources,
//! overlay paths) are kept as written and resolve against the VM's working directory
//! (`/var/lib/microvms/<name>` under the host units, the current directory for
//! `microvm run FILE`); file inputs of the definition (kernel, root sources,
//! credential files, imports, a prebuilt initrd or store disk) are made absolute against
//! the directory of the file that names them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

pub use crate::schema::{
    ControlChannelMode, DeviceBus, DriveIoEngine, ForwardFrom, ForwardProto, GraphicsBackend,
    ImageType, InodeFileHandles, InterfaceType, KvmMode, MacvtapMode, SecurityModel, ShareCache,
    ShareProto, StoreDiskType,
};
use crate::types::{Hypervisor, IfName, MacAddr, VmName, VsockCid};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// `hostName`; also the VM's name.
    pub name: VmName,
    pub hypervisor: Hypervisor,
    pub arch: Arch,

    pub vcpu: u32,
    /// MiB.
    pub mem: u64,
    pub hugepage_mem: bool,
    pub hotplug_mem: u64,
    pub hotplugged_mem: u64,
    pub balloon: bool,
    pub initial_balloon_mem: u64,
    pub deflate_on_oom: bool,

    pub kernel: Option<KernelRef>,
    /// A prebuilt initrd (e.g. a NixOS one); `None`: microvm generates its own.
    pub initrd_path: Option<PathBuf>,
    pub kernel_params: Vec<String>,
    pub cpu: Option<String>,
    pub kvm: KvmMode,
    pub control_channel: ControlChannelMode,

    pub store_on_disk: bool,
    /// A prebuilt root/store image; `None`: microvm builds it.
    pub store_disk: Option<PathBuf>,
    pub store_disk_type: StoreDiskType,
    /// `None`: chosen from the mkfs.erofs and kernel versions at build time.
    pub store_disk_erofs_flags: Option<Vec<String>>,
    pub store_disk_squashfs_flags: Option<Vec<String>>,
    pub writable_store_overlay: Option<String>,
    pub system_symlink: bool,

    pub volumes: Vec<Volume>,
    pub shares: Vec<Share>,
    pub interfaces: Vec<Interface>,
    pub forward_ports: Vec<ForwardPort>,
    pub devices: Vec<Device>,
    pub vsock: Vsock,
    pub graphics: Graphics,

    pub qemu: Qemu,
    pub cloud_hypervisor: CloudHypervisor,
    pub crosvm: Crosvm,
    pub firecracker: Firecracker,
    pub kvmtool: PackageOnly,
    pub stratovirt: PackageOnly,
    pub alioth: PackageOnly,
    pub user: Option<String>,
    pub virtiofsd: Virtiofsd,

    pub credential_files: BTreeMap<String, PathBuf>,
    pub pre_start: String,
    /// Control socket (QMP, API, crosvm control), relative to the working directory.
    pub socket: Option<String>,
    pub pretty_procnames: bool,
    pub bin_scripts: BTreeMap<String, String>,
    pub extra_args_script: Option<String>,
    pub register_with_machined: bool,
    /// UUID-shaped, derived from the name unless set.
    pub machine_id: String,
    pub register_closure: bool,
    pub optimize: bool,

    pub guest: Guest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum KernelRef {
    /// Absolute path to a bzImage, vmlinux, kernel package directory or `.deb`.
    Path(PathBuf),
    /// A Debian package name, fetched with `apt-get download`.
    Package(String),
    /// microvm's guest kernel, built from a Linux source.
    Build(KernelBuild),
}

/// `kernel = { build = "microvm", source = …, fragments = [ … ] }`, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KernelBuild {
    /// A Debian `linux-source-X.Y` package name, or an absolute tarball or tree path.
    pub source: KernelBuildSource,
    /// Absolute paths of Kconfig fragments merged after the project's configuration.
    pub fragments: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "value")]
pub enum KernelBuildSource {
    Package(String),
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    pub image: String,
    pub serial: Option<String>,
    pub direct: bool,
    pub read_only: bool,
    pub label: Option<String>,
    pub mount_point: Option<String>,
    /// MiB; required when `auto_create`.
    pub size: Option<u64>,
    pub auto_create: bool,
    pub mkfs_extra_args: Vec<String>,
    pub fs_type: String,
    pub image_type: ImageType,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Share {
    pub tag: String,
    /// virtiofsd socket; always set for virtiofs shares.
    pub socket: Option<String>,
    pub source: String,
    pub security_model: SecurityModel,
    pub mount_point: String,
    pub proto: ShareProto,
    pub read_only: bool,
    pub cache: ShareCache,
    pub posix_acl: bool,
    pub extra_args: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Interface {
    pub kind: InterfaceType,
    pub id: IfName,
    pub mac: MacAddr,
    pub macvtap: Option<Macvtap>,
    pub bridge: Option<String>,
    pub vhost: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Macvtap {
    pub link: String,
    pub mode: MacvtapMode,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardPort {
    pub from: ForwardFrom,
    pub proto: ForwardProto,
    pub host_address: String,
    pub host_port: u16,
    pub guest_address: String,
    pub guest_port: u16,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub bus: DeviceBus,
    pub path: String,
    pub qemu_device_extra_args: Option<String>,
    pub qemu_id: Option<String>,
    pub qemu_bus: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Vsock {
    pub cid: Option<VsockCid>,
    pub ssh: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Graphics {
    pub enable: bool,
    pub socket: String,
    pub backend: GraphicsBackend,
    pub vulkan: Option<String>,
    pub hostmem: String,
    pub crosvm_package: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Qemu {
    pub machine: String,
    pub machine_opts: Option<BTreeMap<String, String>>,
    pub extra_args: Vec<String>,
    pub serial_console: bool,
    pub pcie_root_ports: Vec<PcieRootPort>,
    pub package: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PcieRootPort {
    pub id: String,
    pub bus: Option<String>,
    pub chassis: Option<u64>,
    pub slot: Option<u64>,
    pub addr: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudHypervisor {
    pub extra_args: Vec<String>,
    pub platform_oem_strings: Vec<String>,
    pub package: Option<PathBuf>,
    /// Configured version (`None`: detected at run time, or the newest syntax).
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Crosvm {
    pub extra_args: Vec<String>,
    pub pivot_root: Option<String>,
    pub package: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Firecracker {
    pub cpu: Option<serde_json::Value>,
    pub drive_io_engine: DriveIoEngine,
    pub extra_args: Vec<String>,
    pub extra_config: Option<serde_json::Value>,
    pub package: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageOnly {
    pub package: Option<PathBuf>,
    pub version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Virtiofsd {
    pub inode_file_handles: Option<InodeFileHandles>,
    pub thread_pool_size: ThreadPool,
    pub extra_args: Vec<String>,
    /// `--socket-group`; `None` omits the flag.
    pub group: Option<String>,
    pub package: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ThreadPool {
    /// The number of host CPUs (the original's "`nproc`").
    Nproc,
    Count(u64),
}

/// What the guest runs and how its root is made (the part NixOS used to provide).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Guest {
    pub root: Vec<RootSource>,
    /// The guest's init to hand over to, as the definition set it; `None`: the root's
    /// default applies (an OCI image's command, a Nix system's `init`, else
    /// [`DEFAULT_INIT`]); see [`Guest::init_path`].
    pub init: Option<String>,
    /// Single-command mode.
    pub command: Option<Vec<String>>,
    pub working_directory: Option<String>,
    pub environment: BTreeMap<String, String>,
    pub network: Vec<StaticNetwork>,
    pub ssh: Ssh,
}

/// The guest root's authorized keys (`ssh.*`), written by the guest init.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ssh {
    /// authorized_keys lines, each checked by [`crate::ssh_key::check_line`].
    pub authorized_keys: Vec<String>,
    /// Absolute paths of files of such lines, read at build time.
    pub authorized_key_files: Vec<PathBuf>,
}

impl Ssh {
    pub fn is_empty(&self) -> bool {
        self.authorized_keys.is_empty() && self.authorized_key_files.is_empty()
    }
}

/// The init handed over to when neither the definition nor the root says otherwise.
pub const DEFAULT_INIT: &str = "/sbin/init";

impl Guest {
    /// The init to hand over to: the definition's `init`, else [`DEFAULT_INIT`].
    pub fn init_path(&self) -> &str {
        self.init.as_deref().unwrap_or(DEFAULT_INIT)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum RootSource {
    Directory {
        path: PathBuf,
        target: String,
    },
    Tarball {
        path: PathBuf,
        target: String,
    },
    Oci {
        path: PathBuf,
        reference: Option<String>,
        target: String,
    },
    Debian {
        suite: String,
        packages: Vec<String>,
        mirror: Option<String>,
        variant: Option<String>,
    },
    Nix {
        path: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticNetwork {
    pub mac: MacAddr,
    pub addresses: Vec<String>,
    pub gateways: Vec<String>,
    pub dns: Vec<String>,
    pub mtu: Option<u32>,
    /// Configure the interface by DHCP (the guest init's client, or networkd).
    pub dhcp: bool,
}

impl Config {
    /// Whether the guest boots microvm's own initrd (and so speaks its control protocol).
    pub fn uses_own_initrd(&self) -> bool {
        self.initrd_path.is_none()
    }

    /// The control socket, when one is configured.
    pub fn socket(&self) -> Option<&str> {
        self.socket.as_deref()
    }

    /// Which channel carries the guest init's `READY`/`EXIT`/`FAIL` (one place for the
    /// image's guest plan and the runner's invocation to agree on).
    pub fn control_transport(&self) -> ControlTransport {
        use crate::types::Hypervisor as H;
        if !self.uses_own_initrd() {
            return ControlTransport::None;
        }
        if self.control_channel == ControlChannelMode::Console {
            return ControlTransport::Console;
        }
        match self.hypervisor {
            H::Qemu => ControlTransport::VirtioSerial,
            H::CloudHypervisor | H::Firecracker if self.vsock.cid.is_some() => {
                ControlTransport::Vsock
            }
            _ => ControlTransport::Console,
        }
    }

    /// Name of the readiness/exit-status channel socket (see `microvm_init::plan`).
    pub fn control_channel_socket(&self) -> String {
        format!("{}-ctl.sock", self.name)
    }
}

/// The kernel parameter that carries the console channel's per-boot nonce.
pub const CONSOLE_NONCE_PARAM: &str = "microvm.nonce";

/// The channel of the guest init's control protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ControlTransport {
    /// A virtio-serial port (qemu).
    VirtioSerial,
    /// Hybrid vsock (cloud-hypervisor, firecracker with `vsock.cid`).
    Vsock,
    /// Lines framed by a per-boot nonce on the serial console (every other case).
    Console,
    /// A foreign initrd: no protocol.
    None,
}
