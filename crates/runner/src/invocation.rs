//! What a planner produces.

use std::path::PathBuf;

use microvm_spec::types::Hypervisor;
use serde::{Deserialize, Serialize};

use crate::version::Version;

/// Paths of the guest artifacts the invocation refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Artifacts {
    /// Compressed kernel (`bzImage` on x86_64, `Image` on aarch64).
    pub kernel: PathBuf,
    /// Uncompressed ELF kernel with a PVH note (firecracker, cloud-hypervisor, crosvm on
    /// x86_64; qemu prefers it under TCG). `None` when it could not be produced.
    pub vmlinux: Option<PathBuf>,
    pub initrd: PathBuf,
    /// The read-only root/store disk, when `storeOnDisk`.
    pub store_disk: Option<PathBuf>,
}

impl Artifacts {
    /// Placeholder paths, for plans shown before anything is built.
    pub fn placeholders() -> Self {
        Artifacts {
            kernel: PathBuf::from("$KERNEL/bzImage"),
            vmlinux: Some(PathBuf::from("$KERNEL/vmlinux")),
            initrd: PathBuf::from("$INITRD"),
            store_disk: Some(PathBuf::from("$STORE")),
        }
    }
}

/// Facts about the host the plan depends on. Tests fix them; `microvm` probes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostFacts {
    /// Number of host CPUs (virtiofsd's default thread pool, the original's "`nproc`").
    pub nproc: u32,
    /// Whether microvm runs as root (virtiofsd `--rlimit-nofile`).
    pub is_root: bool,
    /// Whether hardware virtualisation works (qemu falls back to TCG when not).
    pub kvm: bool,
    /// TSC frequency in kHz, passed as `tsc_early_khz=` to guests under TCG (qemu's
    /// microvm machine has no HPET/PM timer to calibrate against).
    pub tsc_khz: Option<u64>,
    /// Detected or configured versions of the hypervisor binaries.
    pub versions: Vec<(Hypervisor, Version)>,
}

impl HostFacts {
    pub fn version_of(&self, hypervisor: Hypervisor) -> Option<&Version> {
        self.versions
            .iter()
            .find(|(h, _)| *h == hypervisor)
            .map(|(_, v)| v)
    }

    /// The facts golden files are written with: a 4-CPU root host with working KVM.
    pub fn reference() -> Self {
        HostFacts {
            nproc: 4,
            is_root: true,
            kvm: true,
            tsc_khz: None,
            versions: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Invocation {
    pub hypervisor: Hypervisor,
    /// The binary: a configured `package` path or the name looked up on PATH.
    pub program: String,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// `argv[0]` to run under (`microvm@<name>` when `prettyProcnames`).
    pub process_name: Option<String>,
    /// Extra environment (e.g. `HOME` for kvmtool).
    pub env: Vec<(String, String)>,
    /// Files written before start, relative to the working directory.
    pub files: Vec<GeneratedFile>,
    /// Daemons started before the hypervisor (virtiofsd per share, GPU device).
    pub helpers: Vec<Helper>,
    /// Steps before start (the original's preStart, as data).
    pub pre_start: Vec<PreStart>,
    /// The hypervisor's control socket.
    pub control_socket: Option<String>,
    /// How to ask the guest to power off.
    pub shutdown: Shutdown,
    /// The readiness / exit-status channel with microvm's guest init, if any.
    pub control_channel: Option<ControlChannel>,
    /// Tap interfaces the host must create before start (the original's `tap-up`).
    pub taps: Vec<TapSetup>,
    /// macvtap fds the hypervisor expects to inherit (§2.0: fd = 3 + iface*queues + queue).
    pub macvtap_fds: Vec<MacvtapFd>,
    /// The kernel command line as passed.
    pub kernel_cmdline: String,
    pub capabilities: Capabilities,
    /// Warnings the original prints (ignored options and the like).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GeneratedFile {
    pub path: String,
    pub contents: String,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Helper {
    pub name: String,
    pub kind: HelperKind,
    pub program: String,
    pub args: Vec<String>,
    /// Socket the helper creates; the hypervisor starts once it exists.
    pub socket: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum HelperKind {
    Virtiofsd { tag: String },
    GpuDevice,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", content = "path")]
pub enum PreStart {
    /// Remove a stale socket or file (`rm -f`).
    RemoveFile(String),
    /// Move an existing file aside (`mv SOCK SOCK.old`).
    MoveAside(String),
    /// Create a directory (`mkdir -p`).
    CreateDir(String),
    /// The definition's `preStart`: shell lines (here in `path`) run with `bash -eu` in
    /// the working directory; a failure stops the start.
    Shell(String),
    /// The definition's `extraArgsScript`: a command run with `sh -c` in the working
    /// directory; the words of its output are appended to the hypervisor's arguments.
    ExtraArgs(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Shutdown {
    /// QMP on the control socket: `qmp_capabilities`, then `command` (`system_powerdown`).
    Qmp { socket: String, command: String },
    /// An HTTP request over the API socket (cloud-hypervisor, firecracker).
    Http {
        socket: String,
        method: String,
        path: String,
        body: Option<String>,
    },
    /// `crosvm powerbtn <socket>`.
    CrosvmPowerButton { socket: String },
    /// No graceful way: the process gets SIGTERM (the original's `canShutdown = false`).
    Signal { signal: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum ControlChannel {
    /// A unix socket the hypervisor serves for a virtio-serial port named `port`.
    VirtioSerial { socket: String, port: String },
    /// Hybrid vsock: the guest connects to CID 2 `port`; the host listens on
    /// `<socket>_<port>` (cloud-hypervisor, firecracker).
    HybridVsock { socket: String, port: u32 },
    /// The serial console: the guest init frames its lines with a per-boot nonce, passed
    /// as kernel parameter `param`. The plan carries [`NONCE_PLACEHOLDER`] in its place;
    /// the supervisor puts a fresh nonce there in the argv and generated files
    /// ([`Invocation::with_nonce`]) and reads the hypervisor's console output.
    Console { param: String },
}

/// What stands for the console channel's nonce in a plan (not a valid nonce: a copied
/// plan boots without the channel).
pub const NONCE_PLACEHOLDER: &str = "@MICROVM_NONCE@";

impl Invocation {
    /// This plan with `nonce` in place of [`NONCE_PLACEHOLDER`] (argv, generated files,
    /// the displayed kernel command line).
    pub fn with_nonce(&self, nonce: &str) -> Invocation {
        let mut inv = self.clone();
        let put = |s: &mut String| {
            if s.contains(NONCE_PLACEHOLDER) {
                *s = s.replace(NONCE_PLACEHOLDER, nonce);
            }
        };
        inv.args.iter_mut().for_each(put);
        inv.files.iter_mut().for_each(|f| put(&mut f.contents));
        put(&mut inv.kernel_cmdline);
        inv
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapSetup {
    pub name: String,
    pub vnet_hdr: bool,
    pub multi_queue: bool,
    pub bridge: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MacvtapFd {
    pub interface: String,
    pub queue: u32,
    pub fd: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub can_shutdown: bool,
    pub supports_notify_socket: bool,
    pub tap_multi_queue: bool,
    /// Whether the guest can report readiness on a channel the host reads.
    pub readiness: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{hypervisor} does not support {feature}: {reason}")]
    Unsupported {
        hypervisor: Hypervisor,
        feature: String,
        reason: String,
    },
    #[error("{hypervisor}: {message}")]
    Invalid {
        hypervisor: Hypervisor,
        message: String,
    },
}
