//! kvmtool (`lkvm run`, inventory §2.5), with the original's two bugs fixed: a volume
//! passes its image path (the anchor passed the literal word `image`), and PCI devices
//! become `--vfio-pci <bdf>` (the anchor failed to evaluate).
//!
//! Checked against kvmtool's source (kvmtool/kvmtool master, 2024-08):
//! - `-d PATH[,ro][,direct]` is cut at the first `,` (`disk/core.c`), `--9p DIR,TAG` too,
//!   and `-n` is tokenised at every `,` and `=` (`virtio/net.c`), with no escape: such
//!   values are refused here. At most 4 disks (`MAX_DISK_IMAGES`), and one user-mode NIC.
//! - macvtap: the original passed `tapif=/dev/tap<ifindex>`, which only the shell knew at
//!   start. Here the supervisor opens `/dev/tap<ifindex>` as fd N (a [`MacvtapFd`], as for
//!   crosvm and qemu) and lkvm gets `tapif=/dev/fd/N,fd=N`: with `fd=` set lkvm uses that
//!   descriptor and opens nothing, and the `/`-prefixed `tapif` marks it as a macvtap, so
//!   lkvm neither asks for a tun device (`TUNSETIFF`) nor configures host addresses on it.
//! - A VM without interfaces gets `-n mode=none`: without any `-n`, lkvm adds its default
//!   user-mode virtio-net device.
//! - lkvm keeps its state under `$HOME/.lkvm` and `realpath()`s it at start (`kvm.c`), so
//!   `HOME=.` (the working directory the hypervisor runs in) is the original's
//!   `export HOME=$PWD`.

use microvm_spec::config::{Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::argv::Out;
use crate::common::{built_store_disk, cmdline, process_name, program};
use crate::{Artifacts, HostFacts, Invocation, PlanError};

const HV: Hypervisor = Hypervisor::Kvmtool;

/// kvmtool's `MAX_DISK_IMAGES`.
const MAX_DISKS: usize = 4;

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    _host: &HostFacts,
) -> Result<Invocation, PlanError> {
    reject_unsupported(config)?;
    let kernel_cmdline = cmdline(["console=ttyS0", "reboot=k", "panic=1"], config);
    let mut out = Out::new(["run", "--name", config.name.as_str()]);
    out.opt("-m", config.mem.to_string());
    out.opt("-c", config.vcpu.to_string());
    out.opt("--console", "serial");
    out.flag("--rng");
    out.opt("-k", artifacts.kernel.display().to_string());
    out.opt("-i", artifacts.initrd.display().to_string());
    out.opt("-p", kernel_cmdline.clone());
    store_disk(&mut out, config, artifacts)?;
    if config.balloon {
        out.flag("--balloon");
    }
    volumes(&mut out, config)?;
    shares(&mut out, config)?;
    interfaces(&mut out, config)?;
    for device in config.devices.iter().filter(|d| d.bus == DeviceBus::Pci) {
        out.opt("--vfio-pci", device.path.clone());
    }
    if let Some(cid) = config.vsock.cid {
        out.opt("--vsock", cid.to_string());
    }

    // Stopped by SIGTERM (`lkvm stop` works but is not graceful), no capability.
    Ok(Invocation {
        args: out.args,
        process_name: process_name(config),
        env: vec![("HOME".into(), ".".into())],
        taps: out.taps,
        macvtap_fds: out.macvtap_fds,
        kernel_cmdline,
        warnings: out.warnings,
        ..Invocation::new(HV, program(config.kvmtool.package.as_deref(), "lkvm"))
    })
}

fn store_disk(out: &mut Out, config: &Config, artifacts: &Artifacts) -> Result<(), PlanError> {
    let disks = usize::from(config.store_on_disk) + config.volumes.len();
    if disks > MAX_DISKS {
        return Err(invalid(format!(
            "kvmtool attaches at most {MAX_DISKS} disks (the store disk counts), and this VM has {disks}"
        )));
    }
    let Some(store) = built_store_disk(HV, config, artifacts)? else {
        return Ok(());
    };
    let path = disk_path("store disk", &store)?;
    out.opt("-d", format!("{path},ro"));
    Ok(())
}

fn volumes(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for volume in &config.volumes {
        let mut d = disk_path("volume image", &volume.image)?;
        if volume.direct {
            d.push_str(",direct");
        }
        if volume.read_only {
            d.push_str(",ro");
        }
        if volume.serial.is_some() {
            // The capability table's wording, so that the warning is not repeated.
            out.warn_once("Volume serial is not supported for kvmtool");
        }
        out.opt("-d", d);
    }
    Ok(())
}

fn shares(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for share in &config.shares {
        // Only 9p reaches here (virtiofs is refused); `--9p` cuts at the first ','.
        no_chars("9p share source", &share.source, &[','])?;
        out.opt("--9p", format!("{},{}", share.source, share.tag));
    }
    Ok(())
}

fn interfaces(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    if config.interfaces.is_empty() {
        // Without any `-n`, lkvm adds a user-mode NIC of its own.
        out.opt("-n", "mode=none");
    }
    for iface in &config.interfaces {
        let mac = iface.mac;
        let net = match iface.kind {
            InterfaceType::User => format!("mode=user,guest_mac={mac}"),
            InterfaceType::Tap => {
                no_chars("interface id", iface.id.as_str(), &[',', '='])?;
                out.tap(iface, false);
                format!("mode=tap,tapif={},guest_mac={mac}", iface.id)
            }
            InterfaceType::Macvtap => {
                let fd = out.macvtap_fds(iface.id.as_str(), 1)[0];
                format!("mode=tap,tapif=/dev/fd/{fd},fd={fd},guest_mac={mac}")
            }
            InterfaceType::Bridge => continue, // refused in reject_unsupported
        };
        out.opt("-n", net);
    }
    Ok(())
}

fn reject_unsupported(config: &Config) -> Result<(), PlanError> {
    if config.user.is_some() {
        return Err(unsupported("`user`", "kvmtool will not change user"));
    }
    for (value, option) in [
        (config.initial_balloon_mem, "initialBalloonMem"),
        (config.hotplug_mem, "hotplugMem"),
        (config.hotplugged_mem, "hotpluggedMem"),
    ] {
        if value != 0 {
            return Err(unsupported(
                option,
                &format!("kvmtool does not support {option}"),
            ));
        }
    }
    if !config.credential_files.is_empty() {
        return Err(unsupported(
            "credentialFiles",
            "kvmtool does not support credentialFiles",
        ));
    }
    for share in &config.shares {
        match share.proto {
            ShareProto::Virtiofs => {
                return Err(unsupported(
                    "virtiofs shares",
                    &format!(
                        "virtiofs shares not implemented for kvmtool (share {})",
                        share.tag
                    ),
                ))
            }
            ShareProto::NineP if share.read_only => {
                return Err(unsupported(
                    "read-only 9p shares",
                    &format!(
                        "kvmtool does not support readonly 9p share (share {})",
                        share.tag
                    ),
                ))
            }
            ShareProto::NineP => {}
        }
    }
    for iface in &config.interfaces {
        if iface.kind == InterfaceType::Bridge {
            return Err(unsupported(
                "interface type bridge",
                &format!(
                    "interface type bridge is not supported by kvmtool (interface {})",
                    iface.id
                ),
            ));
        }
    }
    if config
        .interfaces
        .iter()
        .filter(|i| i.kind == InterfaceType::User)
        .count()
        > 1
    {
        return Err(unsupported(
            "several user-mode interfaces",
            "lkvm allows only one usermode network device at a time",
        ));
    }
    if config.devices.iter().any(|d| d.bus == DeviceBus::Usb) {
        return Err(unsupported(
            "USB passthrough",
            "USB passthrough is not supported on kvmtool",
        ));
    }
    Ok(())
}

/// A disk path for `-d`, which lkvm cuts at the first `,` and reads as a SCSI target when
/// it starts with `scsi:`.
fn disk_path(what: &str, path: &str) -> Result<String, PlanError> {
    no_chars(what, path, &[','])?;
    if path.starts_with("scsi:") {
        return Err(invalid(format!(
            "{what} {path:?}: lkvm reads a disk starting with `scsi:` as a SCSI target"
        )));
    }
    Ok(path.to_owned())
}

fn no_chars(what: &str, value: &str, forbidden: &[char]) -> Result<(), PlanError> {
    if let Some(c) = value.chars().find(|c| forbidden.contains(c) || *c == '\0') {
        return Err(invalid(format!(
            "{what} {value:?} contains {c:?}, which lkvm's option parser cannot take"
        )));
    }
    Ok(())
}

fn unsupported(feature: &str, reason: &str) -> PlanError {
    PlanError::Unsupported {
        hypervisor: HV,
        feature: feature.to_owned(),
        reason: reason.to_owned(),
    }
}

fn invalid(message: String) -> PlanError {
    PlanError::Invalid {
        hypervisor: HV,
        message,
    }
}

#[cfg(test)]
mod tests;
