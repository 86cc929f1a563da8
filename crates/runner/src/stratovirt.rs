//! stratovirt (inventory §2.6) on its `microvm` machine, checked against stratovirt's
//! source (openeuler-mirror/stratovirt, 2026-04) and its `docs/config_guidebook.md`:
//!
//! - No `unbuffer`: the original wrapped stratovirt in expect's `unbuffer` only to give it
//!   a terminal. `-serial stdio` puts stdin into raw mode and fails without a tty
//!   (`util::set_termi_raw_mode`), so the supervisor must run stratovirt on a pty.
//! - `-machine microvm` on both architectures (the original chose the PCI `virt` machine on
//!   aarch64, where its `-device …-device` (virtio-mmio) devices do not exist); the kernel is
//!   the artifact's compressed kernel (bzImage, or the PE `Image` the aarch64 microvm needs)
//!   instead of a hard-coded `bzImage`.
//! - virtiofs works: `vhost-user-fs-device` is refused unless guest memory is shared
//!   (`add_virtio_fs`: "the memory must be shared"), so `mem-share=on` is added to
//!   `-machine` when there is a virtiofs share.
//! - A QMP socket is mandatory for current stratovirt ("Please use '-qmp' or '-mon' …"):
//!   `socket = null` is an error here.
//! - `-netdev` takes one `queues=` (a clap option: the original's second `queues=` is
//!   refused as a duplicate); `queues` counts queue pairs, at most 16.
//! - No graceful shutdown: QMP `system_powerdown` on the microvm machine only moves the
//!   VM state to shut down (`LightMachine` keeps `MachineLifecycle::powerdown`'s default),
//!   the guest sees no power button. SIGTERM it is, as in the original.
//! - USB passthrough is refused: `usb-host` attaches to an `nec-usb-xhci` controller, a PCI
//!   device the microvm machine cannot have (`add_usb_device`).
//! - No entropy device: `virtio-rng-device` exists only in a stratovirt built with the
//!   optional `virtio_rng` cargo feature (off by default and in its build guide); a stock
//!   binary refuses every plan that has one (`Unsupported device: "virtio-rng-device"`).
//!   The guest kernel seeds itself (RDRAND, jitter entropy).
//! - The balloon (refused by the original) is `-device virtio-balloon-device,id=balloon0,
//!   deflate-on-oom=…,free-page-reporting=true` (`id=` is mandatory), sized at run time
//!   with QMP `balloon`.
//! - qcow2 volumes are refused (capability table): the microvm machine takes raw disks only.
//! - Option values are split at every `,` and `=` with no escape (`str_slip_to_clap`);
//!   values containing them are refused.

use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::argv::Out;
use crate::common::{built_store_disk, cmdline, drive_letter, process_name, program};
use crate::virtiofsd::virtiofsd_helpers;
use crate::{Artifacts, HostFacts, Invocation, PlanError, PreStart};

const HV: Hypervisor = Hypervisor::Stratovirt;

/// stratovirt's `MAX_VIRTIO_QUEUE / 2`: at most 16 queue pairs per NIC.
const MAX_QUEUE_PAIRS: u32 = 16;

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    reject_unsupported(config)?;
    let socket = config.socket().ok_or_else(|| {
        invalid(
            "stratovirt needs a QMP socket (it refuses to start without `-qmp`): set `socket`"
                .into(),
        )
    })?;
    let console = match config.arch {
        Arch::X86_64 => "console=ttyS0",
        Arch::Aarch64 => "console=ttyAMA0",
    };
    let kernel_cmdline = cmdline([console, "edd=off", "reboot=t", "panic=-1"], config);
    let mut out = Out::default();
    for (set, w) in [
        (
            config.user.is_some(),
            "stratovirt ignores `user`: it does not change user",
        ),
        (config.vsock.cid.is_some(), "stratovirt ignores `vsock.cid`"),
        (
            config.graphics.enable,
            "stratovirt ignores `graphics.enable`",
        ),
    ] {
        if set {
            out.warn_once(w);
        }
    }
    base(&mut out, config, artifacts, &kernel_cmdline);
    store_disk(&mut out, config, artifacts)?;
    out.opt(
        "-qmp",
        format!("unix:{},server,nowait", value("socket", socket)?),
    );
    volumes(&mut out, config)?;
    shares(&mut out, config)?;
    interfaces(&mut out, config)?;
    if config.balloon {
        out.opt(
            "-device",
            format!(
                "virtio-balloon-device,id=balloon0,deflate-on-oom={},free-page-reporting=true",
                config.deflate_on_oom
            ),
        );
    }

    let multi_queue = config.vcpu > 1;
    // Stopped by SIGTERM, no capability but multi-queue taps.
    let mut inv = Invocation::new(
        HV,
        program(config.stratovirt.package.as_deref(), "stratovirt"),
    );
    inv.capabilities.tap_multi_queue = multi_queue;
    Ok(Invocation {
        args: out.args,
        process_name: process_name(config),
        helpers: virtiofsd_helpers(config, host, false),
        // stratovirt deletes its QMP socket on exit, but not after a crash.
        pre_start: vec![PreStart::RemoveFile(socket.to_owned())],
        control_socket: Some(socket.to_owned()),
        taps: out.taps,
        macvtap_fds: out.macvtap_fds,
        kernel_cmdline,
        warnings: out.warnings,
        ..inv
    })
}

/// Machine, memory, CPUs, kernel and console.
fn base(out: &mut Out, config: &Config, artifacts: &Artifacts, kernel_cmdline: &str) {
    let virtiofs = config
        .shares
        .iter()
        .any(|s| s.proto == ShareProto::Virtiofs);
    out.opt("-name", config.name.to_string());
    out.opt(
        "-machine",
        if virtiofs {
            "microvm,mem-share=on"
        } else {
            "microvm"
        },
    );
    out.opt("-m", config.mem.to_string());
    out.opt("-smp", config.vcpu.to_string());
    out.opt("-kernel", artifacts.kernel.display().to_string());
    out.opt("-initrd", artifacts.initrd.display().to_string());
    out.opt("-append", kernel_cmdline);
    out.opt("-serial", "stdio");
}

fn store_disk(out: &mut Out, config: &Config, artifacts: &Artifacts) -> Result<(), PlanError> {
    let Some(store) = built_store_disk(HV, config, artifacts)? else {
        return Ok(());
    };
    let file = value("store disk path", &store)?;
    out.opt(
        "-drive",
        format!("id=store,format=raw,readonly=on,file={file},if=none,aio=io_uring,direct=false"),
    );
    out.opt("-device", "virtio-blk-device,drive=store,id=blk_store");
    Ok(())
}

fn volumes(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for (i, volume) in config.volumes.iter().enumerate() {
        let id = format!("vd{}", drive_letter(i));
        out.opt(
            "-drive",
            format!(
                "id={id},format=raw,if=none,aio=io_uring,file={},direct={},readonly={}",
                value("volume image", &volume.image)?,
                on_off(volume.direct),
                on_off(volume.read_only)
            ),
        );
        let mut device = format!("virtio-blk-device,drive={id},id=blk_{id}");
        if let Some(serial) = &volume.serial {
            device.push_str(&format!(",serial={}", value("volume serial", serial)?));
        }
        out.opt("-device", device);
    }
    Ok(())
}

fn shares(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    for (i, share) in config.shares.iter().enumerate() {
        // Only virtiofs reaches here (9p is refused).
        let socket = share
            .socket
            .clone()
            .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, share.tag));
        out.opt(
            "-chardev",
            format!("socket,id=fs{i},path={}", value("share socket", &socket)?),
        );
        out.opt(
            "-device",
            format!(
                "vhost-user-fs-device,chardev=fs{i},tag={},id=fs{i}",
                value("share tag", &share.tag)?
            ),
        );
    }
    Ok(())
}

fn interfaces(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    let multi_queue = config.vcpu > 1;
    let queues = config.vcpu.clamp(1, MAX_QUEUE_PAIRS);
    for iface in &config.interfaces {
        let id = value("interface id", iface.id.as_str())?;
        let backend = match iface.kind {
            InterfaceType::Tap => {
                out.tap(iface, multi_queue);
                format!("ifname={id}")
            }
            InterfaceType::Macvtap => {
                let fds = out.macvtap_fds(iface.id.as_str(), queues);
                let fds: Vec<String> = fds.iter().map(u32::to_string).collect();
                let key = if fds.len() == 1 { "fd" } else { "fds" };
                format!("{key}={}", fds.join(":"))
            }
            // Refused in reject_unsupported.
            InterfaceType::User | InterfaceType::Bridge => continue,
        };
        out.opt("-netdev", format!("tap,id={id},{backend},queues={queues}"));
        out.opt(
            "-device",
            format!(
                "virtio-net-device,id=net_{id},netdev={id},mac={},mq={}",
                iface.mac,
                on_off(multi_queue)
            ),
        );
    }
    Ok(())
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn reject_unsupported(config: &Config) -> Result<(), PlanError> {
    for (v, option, reason) in [
        (
            config.initial_balloon_mem,
            "initialBalloonMem",
            "initialBalloonMem not implemented for stratovirt",
        ),
        (
            config.hotplug_mem,
            "hotplugMem",
            "stratovirt does not support hotplugMem",
        ),
        (
            config.hotplugged_mem,
            "hotpluggedMem",
            "stratovirt does not support hotpluggedMem",
        ),
    ] {
        if v != 0 {
            return Err(unsupported(option, reason));
        }
    }
    if !config.credential_files.is_empty() {
        return Err(unsupported(
            "credentialFiles",
            "stratovirt does not support credentialFiles",
        ));
    }
    if let Some(share) = config.shares.iter().find(|s| s.proto == ShareProto::NineP) {
        return Err(unsupported(
            "9p shares",
            &format!(
                "9p shares not implemented for stratovirt (share {}); use proto = \"virtiofs\"",
                share.tag
            ),
        ));
    }
    for iface in &config.interfaces {
        if matches!(iface.kind, InterfaceType::User | InterfaceType::Bridge) {
            let kind = match iface.kind {
                InterfaceType::User => "user",
                _ => "bridge",
            };
            return Err(unsupported(
                &format!("`{kind}` interfaces"),
                &format!(
                    "interface type {kind} is not supported by stratovirt (interface {}): its -netdev takes tap and vhost-user only",
                    iface.id
                ),
            ));
        }
    }
    if let Some(device) = config.devices.first() {
        return Err(match device.bus {
            DeviceBus::Pci => unsupported(
                "PCI passthrough",
                "PCI configuration for stratovirt is non-functional",
            ),
            DeviceBus::Usb => unsupported(
                "USB passthrough",
                "stratovirt attaches usb-host to an nec-usb-xhci PCI controller, which its microvm machine lacks",
            ),
        });
    }
    Ok(())
}

/// A value inside a stratovirt `k=v,k=v` option, which is split at every `,` and `=`.
fn value<'a>(what: &str, v: &'a str) -> Result<&'a str, PlanError> {
    if let Some(c) = v.chars().find(|c| matches!(c, ',' | '=' | '\0')) {
        return Err(invalid(format!(
            "{what} {v:?} contains {c:?}, which stratovirt's option parser cannot take"
        )));
    }
    Ok(v)
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
