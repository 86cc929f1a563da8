//! alioth (inventory §2.7) in the syntax of alioth 0.12 (`alioth-cli/src/boot/boot.rs`
//! and the device specs of google/alioth, 2026-08; `hypervisor-cli-notes.md`):
//! `alioth boot --memory size=<mem>M,backend=memfd[,shared=true] --cpu count=<vcpu>
//! (--pvh <vmlinux> | -k <kernel>) -i <initrd> -c <cmdline> --entropy --blk file,path=…
//! --fs vu,socket=…,tag=… --net tap,if=…,mac=…,mtu=1500,qp=<vcpu> --vsock vhost,cid=…`.
//!
//! - The original's volume form `--blk path=…,readOnly=…` is read by 0.12 as a file path
//!   (the deprecated fallback): volumes use `--blk file,path=…,readonly=…` like the store.
//! - `qp=<vcpu>` makes alioth open the tap with `IFF_MULTI_QUEUE`, which the kernel refuses
//!   on a tap created without `multi_queue`: taps are created multi-queue when vcpu > 1
//!   (the original created them single-queue, so it only started with one vCPU).
//! - Values are parsed by `serde_aco`, which splits at `,` and `=` and dereferences any
//!   value starting with `id_`: such values are passed through alioth's `-o id_<n>,<value>`
//!   indirection ([`Aco`]).
//! - The default console (stdio) needs a terminal (`tcgetattr`): the supervisor runs alioth
//!   on a pty. `--console log,path=FILE` would work without one, but loses console input.
//! - alioth 0.12 has `--balloon free_page_reporting=BOOL`, but the balloon stays refused as
//!   in the original and the capability table: without a control socket it cannot be sized.

use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::common::{cmdline, process_name, program};
use crate::virtiofsd::virtiofsd_helpers;
use crate::{Artifacts, Capabilities, HostFacts, Invocation, PlanError, Shutdown, TapSetup};

const HV: Hypervisor = Hypervisor::Alioth;

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    reject_unsupported(config)?;
    // alioth's aarch64 board has a PL011 UART (its README boots with `console=ttyAMA0`);
    // the original, x86_64-only in practice, always wrote ttyS0.
    let console = match config.arch {
        Arch::X86_64 => "console=ttyS0",
        Arch::Aarch64 => "console=ttyAMA0",
    };
    let kernel_cmdline = cmdline([console, "reboot=k", "panic=1"], config);
    let virtiofs = config
        .shares
        .iter()
        .any(|s| s.proto == ShareProto::Virtiofs);
    let mut aco = Aco::default();
    let mut args: Vec<String> = vec!["boot".into()];

    let mut memory = format!("size={}M,backend=memfd", config.mem);
    if virtiofs {
        memory.push_str(",shared=true");
    }
    push(&mut args, "--memory", memory);
    push(&mut args, "--cpu", format!("count={}", config.vcpu));
    match (&artifacts.vmlinux, config.arch) {
        (Some(vmlinux), Arch::X86_64) => push(&mut args, "--pvh", vmlinux.display().to_string()),
        _ => push(&mut args, "-k", artifacts.kernel.display().to_string()),
    }
    push(&mut args, "-i", artifacts.initrd.display().to_string());
    push(&mut args, "-c", kernel_cmdline.clone());
    args.push("--entropy".into());

    if config.store_on_disk {
        let store = artifacts
            .store_disk
            .as_ref()
            .ok_or_else(|| invalid("storeOnDisk is set but no store disk was built".into()))?;
        let path = aco.value(&store.display().to_string());
        push(
            &mut args,
            "--blk",
            format!("file,path={path},readonly=true"),
        );
    }
    let mut warnings = Vec::new();
    for volume in &config.volumes {
        let path = aco.value(&volume.image);
        push(
            &mut args,
            "--blk",
            format!("file,path={path},readonly={}", volume.read_only),
        );
        // The capability table's wording, so that the warnings are not repeated.
        for (set, w) in [
            (
                volume.serial.is_some(),
                "Volume serial is not supported for alioth",
            ),
            (
                volume.direct,
                "Volume direct IO is not supported for alioth",
            ),
        ] {
            if set && !warnings.iter().any(|x| x == w) {
                warnings.push(w.to_owned());
            }
        }
    }
    for share in &config.shares {
        // Only virtiofs reaches here (9p is refused).
        let socket = share
            .socket
            .clone()
            .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, share.tag));
        let socket = aco.value(&socket);
        let tag = aco.value(&share.tag);
        push(&mut args, "--fs", format!("vu,socket={socket},tag={tag}"));
    }

    let multi_queue = config.vcpu > 1;
    let mut taps = Vec::new();
    for iface in &config.interfaces {
        // Only taps reach here. An interface name cannot hold ',' but may hold '='.
        taps.push(TapSetup {
            name: iface.id.to_string(),
            vnet_hdr: true,
            multi_queue,
            bridge: iface.bridge.clone(),
        });
        let name = aco.value(iface.id.as_str());
        push(
            &mut args,
            "--net",
            format!(
                "tap,if={name},mac={},mtu=1500,qp={}",
                iface.mac, config.vcpu
            ),
        );
    }
    if let Some(cid) = config.vsock.cid {
        push(&mut args, "--vsock", format!("vhost,cid={cid}"));
    }
    for object in aco.objects {
        push(&mut args, "-o", object);
    }

    Ok(Invocation {
        hypervisor: HV,
        program: program(config.alioth.package.as_deref(), "alioth"),
        args,
        process_name: process_name(config),
        env: Vec::new(),
        files: Vec::new(),
        helpers: virtiofsd_helpers(config, host, false),
        pre_start: Vec::new(),
        control_socket: None,
        shutdown: Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
        control_channel: None,
        taps,
        macvtap_fds: Vec::new(),
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

/// alioth's object indirection: `serde_aco` splits values at `,` and `=`, and reads a value
/// starting with `id_` as the name of an object given with `-o id_<n>,<value>` (the value
/// runs to the end of that argument).
#[derive(Default)]
struct Aco {
    objects: Vec<String>,
}

impl Aco {
    /// `value` itself when `serde_aco` reads it back unchanged, else a fresh object id.
    fn value(&mut self, value: &str) -> String {
        if !value.is_empty() && !value.contains([',', '=']) && !value.starts_with("id_") {
            return value.to_owned();
        }
        let id = format!("id_{}", self.objects.len());
        self.objects.push(format!("{id},{value}"));
        id
    }
}

fn push(args: &mut Vec<String>, flag: &str, value: String) {
    args.push(flag.to_owned());
    args.push(value);
}

fn reject_unsupported(config: &Config) -> Result<(), PlanError> {
    if config.user.is_some() {
        return Err(unsupported("`user`", "alioth will not change user"));
    }
    if config.balloon {
        return Err(unsupported("balloon", "balloon not implemented for alioth"));
    }
    for (v, option, reason) in [
        (
            config.initial_balloon_mem,
            "initialBalloonMem",
            "initialBalloonMem not implemented for alioth",
        ),
        (
            config.hotplug_mem,
            "hotplugMem",
            "alioth does not support hotplugMem",
        ),
        (
            config.hotplugged_mem,
            "hotpluggedMem",
            "alioth does not support hotpluggedMem",
        ),
    ] {
        if v != 0 {
            return Err(unsupported(option, reason));
        }
    }
    if !config.credential_files.is_empty() {
        return Err(unsupported(
            "credentialFiles",
            "alioth does not support credentialFiles",
        ));
    }
    if let Some(share) = config.shares.iter().find(|s| s.proto == ShareProto::NineP) {
        return Err(unsupported(
            "9p shares",
            &format!("9p shares not implemented for alioth (share {})", share.tag),
        ));
    }
    if let Some(iface) = config
        .interfaces
        .iter()
        .find(|i| i.kind != InterfaceType::Tap)
    {
        let kind = match iface.kind {
            InterfaceType::User => "user",
            InterfaceType::Macvtap => "macvtap",
            _ => "bridge",
        };
        return Err(unsupported(
            &format!("`{kind}` interfaces"),
            &format!(
                "interface type {kind} is not supported by alioth (interface {})",
                iface.id
            ),
        ));
    }
    if let Some(device) = config.devices.first() {
        let feature = match device.bus {
            DeviceBus::Pci => "PCI passthrough",
            DeviceBus::Usb => "USB passthrough",
        };
        return Err(unsupported(
            feature,
            "PCI/USB passthrough is not supported on alioth",
        ));
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
