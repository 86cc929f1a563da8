//! The guest plan: what the host-built initrd tells the guest init to do.
//!
//! It is written by `microvm-image` as JSON at [`PLAN_PATH`] inside the initrd and read
//! by the guest init at boot. Everything is resolved on the host: module paths are files
//! inside the initrd in load order, devices are named the way the guest will see them.

use serde::{Deserialize, Serialize};

/// Where the plan lives inside the initrd.
pub const PLAN_PATH: &str = "/microvm/plan.json";
/// Directory inside the initrd holding the kernel modules listed in [`GuestPlan::modules`].
pub const MODULES_DIR: &str = "/microvm/modules";
/// Version of the plan format; the init refuses plans of another version.
pub const PLAN_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestPlan {
    pub version: u32,
    /// The VM's name; used in messages.
    pub name: String,
    /// Hostname to set (`sethostname`) and write to `/etc/hostname` of the new root.
    pub hostname: Option<String>,
    /// Kernel modules to load, in order: absolute paths inside the initrd
    /// (plain `.ko`, as the host writes them, or `.ko.xz`/`.ko.zst`/`.ko.gz` which the
    /// kernel decompresses where it has `CONFIG_MODULE_DECOMPRESS`).
    pub modules: Vec<String>,
    /// How the new root is built.
    pub root: RootPlan,
    /// Mounts made after the root exists, in order; `target` is an absolute path in the
    /// new root (created when missing).
    pub mounts: Vec<MountPlan>,
    /// Static network configuration.
    pub network: Vec<NetPlan>,
    /// `/etc/machine-id` content (32 lowercase hex digits), written into the new root.
    pub machine_id: Option<String>,
    /// Host channel for the readiness and exit-status protocol (see [`ControlChannel`]).
    pub control: Option<ControlChannel>,
    /// Load the ACPI power button and watch it: a press powers the guest off gracefully.
    pub power_button: Option<PowerButton>,
    /// What runs once the root is ready.
    pub exec: ExecPlan,
    /// Environment variables for the handed-over init or the command (besides PATH/HOME/TERM).
    #[serde(default)]
    pub env: Vec<(String, String)>,
    /// Lines of the new root's `/root/.ssh/authorized_keys` (written before hand-over;
    /// empty: the file is left as the root has it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorized_keys: Vec<String>,
}

/// How the guest's root filesystem is assembled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootPlan {
    /// The read-only root/store disk. `None`: the root is a plain tmpfs (used when
    /// everything comes from shares, e.g. a host `/nix/store`).
    pub disk: Option<DiskMount>,
    /// Where the disk is mounted inside the new root: `/` for a whole guest root,
    /// `/nix/store` for a Nix store disk (the root is then a tmpfs).
    pub disk_mount_point: String,
    /// Writable layer over the disk. `None` means the disk stays read-only.
    pub overlay: Option<OverlayPlan>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskMount {
    pub device: DeviceRef,
    /// `erofs`, `squashfs`, `ext4`, …
    pub fs_type: String,
    /// Extra mount options (comma separated, without `ro`, which is always set).
    #[serde(default)]
    pub options: Option<String>,
}

/// The writable layer of an overlay root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
#[serde(rename_all_fields = "camelCase")]
pub enum OverlayPlan {
    /// Upper and work dirs on a tmpfs: writable, forgotten at poweroff.
    Tmpfs {
        /// tmpfs size option, e.g. `50%`.
        size: String,
    },
    /// Upper and work dirs on a volume mounted at `path` (a path in the new root that one
    /// of [`GuestPlan::mounts`] provides): `<path>/upper` (or `<path>/store` for a Nix
    /// store disk) and `<path>/work`. The volume is mounted first, then the overlay.
    Volume { path: String },
}

/// A block device as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "by", content = "value")]
pub enum DeviceRef {
    /// A device node such as `/dev/vda`.
    Path(String),
    /// A filesystem label (found by reading superblocks of the virtio disks).
    Label(String),
    /// A virtio-blk serial (`/sys/block/vdX/serial`).
    Serial(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
#[serde(rename_all_fields = "camelCase")]
pub enum MountPlan {
    /// A block volume.
    Block {
        device: DeviceRef,
        fs_type: String,
        target: String,
        read_only: bool,
    },
    /// A 9p share (`trans=virtio,version=9p2000.L,msize=…`).
    NineP {
        tag: String,
        target: String,
        read_only: bool,
    },
    /// A virtiofs share.
    Virtiofs {
        tag: String,
        target: String,
        read_only: bool,
    },
    /// A bind mount inside the new root (e.g. a shared host store onto `/nix/store`).
    Bind { source: String, target: String },
}

/// Static IPv4/IPv6 configuration of one interface, matched by MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetPlan {
    /// MAC address of the guest NIC (lowercase, colon separated).
    pub mac: String,
    /// Addresses with prefix length, e.g. `10.0.0.2/24`, `fd00::2/64`.
    pub addresses: Vec<String>,
    /// Default gateway(s).
    pub gateways: Vec<String>,
    /// Written to `/etc/resolv.conf` of the new root when not empty.
    pub dns: Vec<String>,
    pub mtu: Option<u32>,
    /// Ask a DHCP server for an address, routes and name servers (the init's own client).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dhcp: bool,
}

/// The host channel. Lines of ASCII, one message each:
/// `READY <init-start-uptime> <ready-uptime>` when the root is ready and the guest is about
/// to hand over (or run its command), or, for a systemd guest with `readyFromGuest`
/// (see [`ExecPlan::Init`]), when `multi-user.target` is reached; `EXIT <status>` when
/// the single command ended;
/// `FAIL <message>` when the init failed and is powering off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
#[serde(rename_all_fields = "camelCase")]
pub enum ControlChannel {
    /// A virtio-serial port with this name (found under `/sys/class/virtio-ports/*/name`,
    /// opened as `/dev/<vportNpM>`).
    VirtioPort { name: String },
    /// AF_VSOCK stream to the host (CID 2) on this port.
    Vsock { port: u32 },
    /// A serial device node such as `/dev/ttyS1`.
    Serial { device: String },
    /// The console (`/dev/console`, the init's stdout), every line framed as
    /// `<nonce> <message>`. The nonce is the value of the kernel parameter `param`
    /// (fresh for every boot); the init bind-mounts a copy of `/proc/cmdline` without it
    /// over the new root's `/proc/cmdline` and restricts `dmesg` to root, so that guest
    /// programs cannot forge a frame. Without the parameter there is no channel.
    Console { param: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PowerButton {
    /// After hand-over to an init that is not systemd: signal sent to PID 1 on a
    /// power-button press (`SIGUSR2` = 12 for busybox init). In command mode the init
    /// itself stops the command (SIGTERM, then SIGKILL after the grace period) and powers
    /// off.
    pub signal_after_handover: Option<i32>,
    /// Seconds between SIGTERM and SIGKILL of the command.
    pub grace_seconds: u32,
    /// After hand-over to systemd (found in the guest: the init path resolves to a file
    /// named `systemd`): systemd-logind handles the key (it needs udev and D-Bus in the
    /// root). `Some(n)`: a watcher left behind by the init also sends `SIGRTMIN+4`
    /// (systemd's "start poweroff.target") `n` seconds after a press, for roots without
    /// logind, udev or D-Bus; a second poweroff request is a no-op. `None`: logind alone.
    /// Absent in older plans (= `None`).
    #[serde(default)]
    pub systemd_backstop_seconds: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind", deny_unknown_fields)]
#[serde(rename_all_fields = "camelCase")]
pub enum ExecPlan {
    /// Switch root and exec the guest's own init (`/sbin/init`, systemd, …).
    Init {
        path: String,
        args: Vec<String>,
        /// Readiness from the guest: when `path` resolves to systemd (a file named
        /// `systemd`) and the control channel is a virtio port or a serial device, the
        /// init sends no `READY` at hand-over; it installs
        /// `/run/systemd/system/microvm-ready.service` (wanted by and ordered after
        /// `multi-user.target`), which writes `READY <init-start> <now>` to the channel
        /// once the guest is up. Any other init, or a vsock channel, gets `READY` at
        /// hand-over as before. Absent in older plans (= `false`).
        #[serde(default)]
        ready_from_guest: bool,
    },
    /// Run one command as a child of PID 1 in the new root; when it ends, report
    /// `EXIT <status>`, sync, unmount and power off.
    Command {
        argv: Vec<String>,
        /// Working directory in the new root.
        cwd: Option<String>,
        /// `uid:gid` to run as.
        user: Option<String>,
    },
}

impl GuestPlan {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a guest plan always serialises")
    }

    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }
}
