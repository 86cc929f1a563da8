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
//!   on a pty (the 0.12 release on crates.io has no `--console` option to avoid it).
//! - The balloon is `--balloon free_page_reporting=true` (the original refused it): the guest
//!   hands its free pages back. alioth has no control socket, so the balloon cannot be
//!   inflated at run time; its device always offers deflate-on-oom.
//! - macvtap (the original refused it) is `--net tap,tap=/dev/fd/N,mac=…,mtu=1500` with one
//!   queue: alioth opens the character device `tap=` names (its help: "Required for MacVTap
//!   and IPVTap"), and `/dev/fd/N` reopens the `/dev/tap<ifindex>` the supervisor passed as
//!   fd N (a [`MacvtapFd`], as for the other hypervisors).
//! - qcow2 volumes are refused (capability table): alioth reads every disk as raw.

use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::argv::Out;
use crate::common::{built_store_disk, cmdline, process_name, program};
use crate::virtiofsd::virtiofsd_helpers;
#[cfg(doc)]
use crate::MacvtapFd;
use crate::{Artifacts, HostFacts, Invocation, PlanError};

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
    let mut aco = Aco::default();
    let mut out = Out::new(["boot"]);
    base(&mut out, config, artifacts, &kernel_cmdline);
    store_disk(&mut out, &mut aco, config, artifacts)?;
    volumes(&mut out, &mut aco, config);
    shares(&mut out, &mut aco, config);
    interfaces(&mut out, &mut aco, config);
    if config.balloon {
        out.opt("--balloon", "free_page_reporting=true");
    }
    if let Some(cid) = config.vsock.cid {
        out.opt("--vsock", format!("vhost,cid={cid}"));
    }
    for object in aco.objects {
        out.opt("-o", object);
    }

    // No control socket: stopped by SIGTERM, no capability but multi-queue taps.
    let mut inv = Invocation::new(HV, program(config.alioth.package.as_deref(), "alioth"));
    inv.capabilities.tap_multi_queue = config.vcpu > 1;
    Ok(Invocation {
        args: out.args,
        process_name: process_name(config),
        helpers: virtiofsd_helpers(config, host, false),
        taps: out.taps,
        macvtap_fds: out.macvtap_fds,
        kernel_cmdline,
        warnings: out.warnings,
        ..inv
    })
}

/// Memory, CPUs, kernel, command line and entropy.
fn base(out: &mut Out, config: &Config, artifacts: &Artifacts, kernel_cmdline: &str) {
    let virtiofs = config
        .shares
        .iter()
        .any(|s| s.proto == ShareProto::Virtiofs);
    let mut memory = format!("size={}M,backend=memfd", config.mem);
    if virtiofs {
        memory.push_str(",shared=true");
    }
    out.opt("--memory", memory);
    out.opt("--cpu", format!("count={}", config.vcpu));
    match (&artifacts.vmlinux, config.arch) {
        (Some(vmlinux), Arch::X86_64) => out.opt("--pvh", vmlinux.display().to_string()),
        _ => out.opt("-k", artifacts.kernel.display().to_string()),
    }
    out.opt("-i", artifacts.initrd.display().to_string());
    out.opt("-c", kernel_cmdline);
    out.flag("--entropy");
}

fn store_disk(
    out: &mut Out,
    aco: &mut Aco,
    config: &Config,
    artifacts: &Artifacts,
) -> Result<(), PlanError> {
    let Some(store) = built_store_disk(HV, config, artifacts)? else {
        return Ok(());
    };
    let path = aco.value(&store);
    out.opt("--blk", format!("file,path={path},readonly=true"));
    Ok(())
}

fn volumes(out: &mut Out, aco: &mut Aco, config: &Config) {
    for volume in &config.volumes {
        let path = aco.value(&volume.image);
        out.opt(
            "--blk",
            format!("file,path={path},readonly={}", volume.read_only),
        );
        // The capability table's wording, so that the warnings are not repeated.
        if volume.serial.is_some() {
            out.warn_once("Volume serial is not supported for alioth");
        }
        if volume.direct {
            out.warn_once("Volume direct IO is not supported for alioth");
        }
    }
}

fn shares(out: &mut Out, aco: &mut Aco, config: &Config) {
    for share in &config.shares {
        // Only virtiofs reaches here (9p is refused).
        let socket = share
            .socket
            .clone()
            .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, share.tag));
        let socket = aco.value(&socket);
        let tag = aco.value(&share.tag);
        out.opt("--fs", format!("vu,socket={socket},tag={tag}"));
    }
}

fn interfaces(out: &mut Out, aco: &mut Aco, config: &Config) {
    for iface in &config.interfaces {
        let net = match iface.kind {
            InterfaceType::Tap => {
                // An interface name cannot hold ',' but may hold '='.
                out.tap(iface, config.vcpu > 1);
                let name = aco.value(iface.id.as_str());
                format!(
                    "tap,if={name},mac={},mtu=1500,qp={}",
                    iface.mac, config.vcpu
                )
            }
            InterfaceType::Macvtap => {
                let fd = out.macvtap_fds(iface.id.as_str(), 1)[0];
                format!("tap,tap=/dev/fd/{fd},mac={},mtu=1500", iface.mac)
            }
            // Refused in reject_unsupported.
            InterfaceType::User | InterfaceType::Bridge => continue,
        };
        out.opt("--net", net);
    }
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

fn reject_unsupported(config: &Config) -> Result<(), PlanError> {
    if config.user.is_some() {
        return Err(unsupported("`user`", "alioth will not change user"));
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
        .find(|i| matches!(i.kind, InterfaceType::User | InterfaceType::Bridge))
    {
        let kind = iface.kind.name();
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

#[cfg(test)]
mod tests;
