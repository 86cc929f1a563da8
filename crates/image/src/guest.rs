//! What the guest init is told to do, derived from the resolved configuration: the
//! guest side of the contract (inventory §3.7 mounts, §3.8 overlay), plus the kernel
//! features that this needs.

use microvm_init::plan::{
    ControlChannel, DeviceRef, DiskMount, ExecPlan, GuestPlan, MountPlan, NetPlan, OverlayPlan,
    PowerButton, RootPlan, PLAN_VERSION,
};
use microvm_spec::config::{Config, ControlTransport, ShareProto, StoreDiskType};
use microvm_spec::types::Hypervisor;

use crate::kernel::{FsCompression, KernelFeature};

/// Name of the virtio-serial port of the control channel (qemu).
pub const CONTROL_PORT: &str = "microvm.ctl";
/// vsock port of the control channel (cloud-hypervisor, firecracker with `vsock.cid`).
/// Must match `microvm_runner`'s hybrid-vsock control port (the runner listens there).
pub const CONTROL_VSOCK_PORT: u32 = 8889;
/// busybox init's poweroff signal, sent to PID 1 on a power-button press after hand-over.
const SIGUSR2: i32 = 12;
/// After hand-over to systemd, seconds that systemd-logind has to act on a power-button
/// press before microvm-init's watcher sends systemd `SIGRTMIN+4` itself (for roots
/// without logind, udev or D-Bus).
const SYSTEMD_BACKSTOP_SECONDS: u32 = 5;

/// The guest plan, without the module list (filled in when the initrd is assembled).
pub fn plan(config: &Config) -> GuestPlan {
    let mut mounts = Vec::new();
    // Volumes get letters after the store disk (vda), as microvm.nix's withDriveLetters.
    let first = if config.store_on_disk { 1 } else { 0 };
    for (i, v) in config.volumes.iter().enumerate() {
        let Some(target) = &v.mount_point else {
            continue;
        };
        let device = match (&v.label, &v.serial) {
            (Some(label), _) if v.auto_create => DeviceRef::Label(label.clone()),
            (_, Some(serial)) if serial_visible(config.hypervisor) => {
                DeviceRef::Serial(serial.clone())
            }
            _ => DeviceRef::Path(format!("/dev/vd{}", drive_letter(first + i))),
        };
        mounts.push(MountPlan::Block {
            device,
            fs_type: v.fs_type.clone(),
            target: target.clone(),
            read_only: v.read_only,
        });
    }
    for s in &config.shares {
        let (tag, target, read_only) = (s.tag.clone(), s.mount_point.clone(), s.read_only);
        mounts.push(match s.proto {
            ShareProto::NineP => MountPlan::NineP {
                tag,
                target,
                read_only,
            },
            ShareProto::Virtiofs => MountPlan::Virtiofs {
                tag,
                target,
                read_only,
            },
        });
    }
    let overlay = match &config.writable_store_overlay {
        Some(path) => Some(OverlayPlan::Volume { path: path.clone() }),
        None => Some(OverlayPlan::Tmpfs { size: "50%".into() }),
    };
    let root = RootPlan {
        disk: config.store_on_disk.then(|| DiskMount {
            device: DeviceRef::Path("/dev/vda".into()),
            fs_type: fs_name(config.store_disk_type).into(),
            options: None,
        }),
        disk_mount_point: "/".into(),
        overlay: if config.store_on_disk { overlay } else { None },
    };
    let exec = match &config.guest.command {
        Some(argv) => ExecPlan::Command {
            argv: argv.clone(),
            cwd: config.guest.working_directory.clone(),
            user: None,
        },
        None => ExecPlan::Init {
            path: config.guest.init_path().to_owned(),
            args: Vec::new(),
            // Only acted on when the init turns out to be systemd (see the plan).
            ready_from_guest: true,
        },
    };
    let systemd = config.guest.init_path().contains("systemd");
    GuestPlan {
        version: PLAN_VERSION,
        name: config.name.to_string(),
        hostname: Some(config.name.to_string()),
        modules: Vec::new(),
        root,
        mounts,
        network: config
            .guest
            .network
            .iter()
            .map(|n| NetPlan {
                mac: n.mac.to_string(),
                addresses: n.addresses.clone(),
                gateways: n.gateways.clone(),
                dns: n.dns.clone(),
                mtu: n.mtu,
                dhcp: n.dhcp,
            })
            .collect(),
        machine_id: Some(config.machine_id.replace('-', "")),
        control: control_channel(config),
        power_button: acpi_power_button(config.hypervisor).then_some(PowerButton {
            // systemd-logind handles the key itself after hand-over.
            signal_after_handover: if systemd { None } else { Some(SIGUSR2) },
            grace_seconds: 10,
            systemd_backstop_seconds: Some(SYSTEMD_BACKSTOP_SECONDS),
        }),
        exec,
        env: config
            .guest
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        // The files of `authorizedKeyFiles` are added when the initrd is built.
        authorized_keys: config.guest.ssh.authorized_keys.clone(),
    }
}

fn control_channel(config: &Config) -> Option<ControlChannel> {
    match config.control_transport() {
        ControlTransport::VirtioSerial => Some(ControlChannel::VirtioPort {
            name: CONTROL_PORT.into(),
        }),
        ControlTransport::Vsock => Some(ControlChannel::Vsock {
            port: CONTROL_VSOCK_PORT,
        }),
        ControlTransport::Console => Some(ControlChannel::Console {
            param: microvm_spec::config::CONSOLE_NONCE_PARAM.into(),
        }),
        ControlTransport::None => None,
    }
}

/// Hypervisors whose graceful shutdown is an ACPI power-button press.
fn acpi_power_button(h: Hypervisor) -> bool {
    matches!(h, Hypervisor::Qemu | Hypervisor::CloudHypervisor)
}

/// Hypervisors that pass a volume's `serial` to the guest.
fn serial_visible(h: Hypervisor) -> bool {
    matches!(
        h,
        Hypervisor::Qemu
            | Hypervisor::CloudHypervisor
            | Hypervisor::Crosvm
            | Hypervisor::Stratovirt
    )
}

fn drive_letter(i: usize) -> String {
    // vda … vdz, vdaa … like the kernel's virtio-blk naming.
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if i < 26 {
        (letters[i] as char).to_string()
    } else {
        format!("{}{}", letters[i / 26 - 1] as char, letters[i % 26] as char)
    }
}

fn fs_name(t: StoreDiskType) -> &'static str {
    match t {
        StoreDiskType::Erofs => "erofs",
        StoreDiskType::Squashfs => "squashfs",
    }
}

/// The kernel features the guest needs, in load order.
pub fn kernel_features(
    config: &Config,
    disk_compression: Option<FsCompression>,
) -> Vec<KernelFeature> {
    let mut f = vec![KernelFeature::VirtioMmio, KernelFeature::VirtioPci];
    if config.store_on_disk || !config.volumes.is_empty() {
        f.push(KernelFeature::VirtioBlk);
    }
    if config.store_on_disk {
        f.push(match config.store_disk_type {
            StoreDiskType::Erofs => KernelFeature::Erofs(disk_compression),
            StoreDiskType::Squashfs => KernelFeature::Squashfs(disk_compression),
        });
        f.push(KernelFeature::Overlay);
    }
    for v in config.volumes.iter().filter(|v| v.mount_point.is_some()) {
        let feature = match v.fs_type.as_str() {
            "ext2" | "ext3" | "ext4" => Some(KernelFeature::Ext4),
            "xfs" => Some(KernelFeature::Xfs),
            "btrfs" => Some(KernelFeature::Btrfs),
            "vfat" => Some(KernelFeature::Vfat),
            _ => None,
        };
        if let Some(feature) = feature {
            if !f.contains(&feature) {
                f.push(feature);
            }
        }
    }
    if config.shares.iter().any(|s| s.proto == ShareProto::NineP) {
        f.push(KernelFeature::NineP);
    }
    if config
        .shares
        .iter()
        .any(|s| s.proto == ShareProto::Virtiofs)
    {
        f.push(KernelFeature::Virtiofs);
    }
    if !config.interfaces.is_empty() {
        f.push(KernelFeature::VirtioNet);
    }
    match control_channel(config) {
        Some(ControlChannel::VirtioPort { .. }) => f.push(KernelFeature::VirtioConsole),
        Some(ControlChannel::Vsock { .. }) => f.push(KernelFeature::Vsock),
        _ => {}
    }
    if config.vsock.cid.is_some() && !f.contains(&KernelFeature::Vsock) {
        f.push(KernelFeature::Vsock);
    }
    if acpi_power_button(config.hypervisor) {
        f.push(KernelFeature::AcpiButton);
        f.push(KernelFeature::Evdev);
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drive_letters() {
        assert_eq!(drive_letter(0), "a");
        assert_eq!(drive_letter(1), "b");
        assert_eq!(drive_letter(25), "z");
        assert_eq!(drive_letter(26), "aa");
    }
}
