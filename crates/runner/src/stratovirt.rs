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
//! - Option values are split at every `,` and `=` with no escape (`str_slip_to_clap`);
//!   values containing them are refused.

use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::common::{cmdline, drive_letter, process_name, program};
use crate::virtiofsd::virtiofsd_helpers;
use crate::{
    Artifacts, Capabilities, HostFacts, Invocation, MacvtapFd, PlanError, PreStart, Shutdown,
    TapSetup,
};

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
    let mut warnings = Vec::new();
    if config.user.is_some() {
        warnings.push("stratovirt ignores `user`: it does not change user".to_owned());
    }
    if config.vsock.cid.is_some() {
        warnings.push("stratovirt ignores `vsock.cid`".to_owned());
    }
    if config.graphics.enable {
        warnings.push("stratovirt ignores `graphics.enable`".to_owned());
    }

    let virtiofs = config
        .shares
        .iter()
        .any(|s| s.proto == ShareProto::Virtiofs);
    let mut args = Vec::new();
    push(&mut args, "-name", config.name.to_string());
    push(
        &mut args,
        "-machine",
        if virtiofs {
            "microvm,mem-share=on"
        } else {
            "microvm"
        }
        .into(),
    );
    push(&mut args, "-m", config.mem.to_string());
    push(&mut args, "-smp", config.vcpu.to_string());
    push(&mut args, "-kernel", artifacts.kernel.display().to_string());
    push(&mut args, "-initrd", artifacts.initrd.display().to_string());
    push(&mut args, "-append", kernel_cmdline.clone());
    push(&mut args, "-serial", "stdio".into());
    push(
        &mut args,
        "-object",
        "rng-random,id=rng,filename=/dev/random".into(),
    );
    push(
        &mut args,
        "-device",
        "virtio-rng-device,rng=rng,id=rng_dev".into(),
    );

    if config.store_on_disk {
        let store = artifacts
            .store_disk
            .as_ref()
            .ok_or_else(|| invalid("storeOnDisk is set but no store disk was built".into()))?;
        let store = store.display().to_string();
        let file = value("store disk path", &store)?;
        push(
            &mut args,
            "-drive",
            format!(
                "id=store,format=raw,readonly=on,file={file},if=none,aio=io_uring,direct=false"
            ),
        );
        push(
            &mut args,
            "-device",
            "virtio-blk-device,drive=store,id=blk_store".into(),
        );
    }
    push(
        &mut args,
        "-qmp",
        format!("unix:{},server,nowait", value("socket", socket)?),
    );

    for (i, volume) in config.volumes.iter().enumerate() {
        let id = format!("vd{}", drive_letter(i));
        push(
            &mut args,
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
        push(&mut args, "-device", device);
    }

    for (i, share) in config.shares.iter().enumerate() {
        // Only virtiofs reaches here (9p is refused).
        let socket = share
            .socket
            .clone()
            .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, share.tag));
        push(
            &mut args,
            "-chardev",
            format!("socket,id=fs{i},path={}", value("share socket", &socket)?),
        );
        push(
            &mut args,
            "-device",
            format!(
                "vhost-user-fs-device,chardev=fs{i},tag={},id=fs{i}",
                value("share tag", &share.tag)?
            ),
        );
    }

    let multi_queue = config.vcpu > 1;
    let queues = config.vcpu.clamp(1, MAX_QUEUE_PAIRS);
    let mut taps = Vec::new();
    let mut macvtap_fds = Vec::new();
    let mut next_fd = 3;
    for iface in &config.interfaces {
        let id = value("interface id", iface.id.as_str())?;
        let backend = match iface.kind {
            InterfaceType::Tap => {
                taps.push(TapSetup {
                    name: iface.id.to_string(),
                    vnet_hdr: true,
                    multi_queue,
                    bridge: iface.bridge.clone(),
                });
                format!("ifname={id}")
            }
            InterfaceType::Macvtap => {
                let fds: Vec<String> = (0..queues)
                    .map(|queue| {
                        macvtap_fds.push(MacvtapFd {
                            interface: iface.id.to_string(),
                            queue,
                            fd: next_fd,
                        });
                        next_fd += 1;
                        (next_fd - 1).to_string()
                    })
                    .collect();
                let key = if fds.len() == 1 { "fd" } else { "fds" };
                format!("{key}={}", fds.join(":"))
            }
            // Refused in reject_unsupported.
            InterfaceType::User | InterfaceType::Bridge => continue,
        };
        push(
            &mut args,
            "-netdev",
            format!("tap,id={id},{backend},queues={queues}"),
        );
        push(
            &mut args,
            "-device",
            format!(
                "virtio-net-device,id=net_{id},netdev={id},mac={},mq={}",
                iface.mac,
                on_off(multi_queue)
            ),
        );
    }

    Ok(Invocation {
        hypervisor: HV,
        program: program(config.stratovirt.package.as_deref(), "stratovirt"),
        args,
        process_name: process_name(config),
        env: Vec::new(),
        files: Vec::new(),
        helpers: virtiofsd_helpers(config, host, false),
        // stratovirt deletes its QMP socket on exit, but not after a crash.
        pre_start: vec![PreStart::RemoveFile(socket.to_owned())],
        control_socket: Some(socket.to_owned()),
        shutdown: Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
        control_channel: None,
        taps,
        macvtap_fds,
        kernel_cmdline,
        capabilities: Capabilities {
            can_shutdown: false,
            supports_notify_socket: false,
            tap_multi_queue: multi_queue,
            readiness: false,
        },
        warnings,
    })
}

fn push(args: &mut Vec<String>, flag: &str, value: String) {
    args.push(flag.to_owned());
    args.push(value);
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn reject_unsupported(config: &Config) -> Result<(), PlanError> {
    if config.balloon {
        return Err(unsupported(
            "balloon",
            "balloon not implemented for stratovirt",
        ));
    }
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
