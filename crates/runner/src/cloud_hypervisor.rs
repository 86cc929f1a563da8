//! cloud-hypervisor (inventory §2.2, [later] behaviour, checked against v53).
//!
//! - `--memory shared=on` without `mergeable=on` (the binary refuses both together);
//!   `mergeable=on` only when not shared. With hotplug, `size` stays `<mem>M` (the
//!   anchor replaced it with the hotplug size by mistake).
//! - `image_type=` on every disk (auto-detection is deprecated).
//! - vsock and the systemd notify credential only when `vsock.cid` is set ([later]).
//! - `--landlock` (the VMM sandboxed to its configuration's paths) for v40 on or unknown.
//! - `--disk A B` for version ≥ 36 or unknown; `--disk A --disk B` for 30 ≤ v < 36
//!   (argh), likewise `--fs`, `--net`, `--device`.
//! - Graphics: the GPU device helper's `--wayland-sock` is
//!   `$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY`, to be expanded by whoever starts the helper
//!   from the user's session (it cannot run under systemd anyway).

use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType, ShareProto};
use microvm_spec::types::Hypervisor;

use crate::argv::Out;
use crate::common::{cmdline, process_name, program, CONTROL_VSOCK_PORT, NOTIFY_VSOCK};
use crate::kv::KvList;
use crate::version::Version;
use crate::virtiofsd::virtiofsd_helpers;
use crate::{
    Artifacts, Capabilities, ControlChannel, Helper, HelperKind, HostFacts, Invocation, PlanError,
    PreStart, Shutdown,
};

const HV: Hypervisor = Hypervisor::CloudHypervisor;

fn invalid(message: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        hypervisor: HV,
        message: message.into(),
    }
}

fn build(kv: KvList) -> Result<String, PlanError> {
    kv.build().map_err(|e| e.into_plan(HV))
}

/// The version the plan is for: configured, else detected; `None` means the newest.
fn version(config: &Config, host: &HostFacts) -> Result<Option<Version>, PlanError> {
    match &config.cloud_hypervisor.version {
        Some(v) => v
            .parse::<Version>()
            .map(Some)
            .map_err(|e| invalid(format!("cloud-hypervisor.version: {e}"))),
        None => Ok(host.version_of(HV).copied()),
    }
}

/// Whether several values go after one switch (`--disk A B`) or each gets its own.
fn grouped_switches(version: Option<Version>) -> bool {
    !matches!(version, Some(v) if v >= Version::new(30, 0, 0) && v < Version::new(36, 0, 0))
}

/// Whether to sandbox the VMM with Landlock (`--landlock`, v40 on): cloud-hypervisor
/// then allows itself only the paths of its own configuration (kernel, initramfs, disks,
/// sockets) from `vm_create` on. Nothing is hot-plugged into microvm's VMs, so no
/// `--landlock-rules` are needed.
fn landlock(version: Option<Version>) -> bool {
    !matches!(version, Some(v) if v < Version::new(40, 0, 0))
}

fn push_multi(args: &mut Vec<String>, grouped: bool, switch: &str, values: Vec<String>) {
    if values.is_empty() {
        return;
    }
    if grouped {
        args.push(switch.to_owned());
        args.extend(values);
    } else {
        for v in values {
            args.push(switch.to_owned());
            args.push(v);
        }
    }
}

pub(crate) fn plan(
    config: &Config,
    artifacts: &Artifacts,
    host: &HostFacts,
) -> Result<Invocation, PlanError> {
    let version = version(config, host)?;
    let grouped = grouped_switches(version);
    let mut out = Out::default();
    let mut pre_start = Vec::new();
    let mut helpers = virtiofsd_helpers(config, host, false);

    let console: &[&str] = match config.arch {
        Arch::X86_64 => &["earlyprintk=ttyS0", "console=ttyS0"],
        Arch::Aarch64 => &["console=ttyAMA0"],
    };
    let mut prefix = console.to_vec();
    prefix.extend(["reboot=t", "panic=-1"]);
    let kernel_cmdline = cmdline(prefix, config);

    base(&mut out, config, artifacts, &kernel_cmdline)?;
    if landlock(version) {
        out.flag("--landlock");
    }
    platform(&mut out, config)?;
    let control_channel = vsock(&mut out, config, &mut pre_start)?;
    let disks = disks(config, artifacts)?;
    push_multi(&mut out.args, grouped, "--disk", disks);
    let fs = shares(config)?;
    push_multi(&mut out.args, grouped, "--fs", fs);
    balloon(&mut out, config)?;
    if config.graphics.enable {
        helpers.push(graphics(&mut out, config)?);
    }
    if let Some(socket) = &config.socket {
        out.opt("--api-socket", socket.clone());
        // cloud-hypervisor stumbles over a preexisting socket.
        pre_start.insert(0, PreStart::RemoveFile(socket.clone()));
    }
    let nets = interfaces(&mut out, config)?;
    push_multi(&mut out.args, grouped, "--net", nets);
    let devices: Vec<String> = config
        .devices
        .iter()
        .filter(|d| d.bus == DeviceBus::Pci)
        .map(|d| {
            build(
                KvList::cloud_hypervisor().set("path", format!("/sys/bus/pci/devices/{}", d.path)),
            )
        })
        .collect::<Result<_, _>>()?;
    push_multi(&mut out.args, grouped, "--device", devices);
    out.args
        .extend(config.cloud_hypervisor.extra_args.iter().cloned());

    let shutdown = match &config.socket {
        Some(socket) => Shutdown::Http {
            socket: socket.clone(),
            method: "PUT".into(),
            path: "/api/v1/vm.power-button".into(),
            body: None,
        },
        None => Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
    };
    Ok(Invocation {
        hypervisor: HV,
        program: program(
            config.cloud_hypervisor.package.as_deref(),
            "cloud-hypervisor",
        ),
        args: out.args,
        process_name: process_name(config),
        env: Vec::new(),
        files: Vec::new(),
        helpers,
        pre_start,
        control_socket: config.socket.clone(),
        shutdown,
        capabilities: Capabilities {
            can_shutdown: config.socket.is_some(),
            supports_notify_socket: config.vsock.cid.is_some(),
            tap_multi_queue: config.vcpu > 1,
            readiness: control_channel.is_some(),
        },
        control_channel,
        taps: out.taps,
        macvtap_fds: out.macvtap_fds,
        kernel_cmdline,
        warnings: out.warnings,
    })
}

/// CPUs, watchdog, consoles, kernel, command line, seccomp and memory.
fn base(
    out: &mut Out,
    config: &Config,
    artifacts: &Artifacts,
    kernel_cmdline: &str,
) -> Result<(), PlanError> {
    let kernel = match config.arch {
        Arch::X86_64 => artifacts.vmlinux.as_ref().ok_or_else(|| {
            invalid("cloud-hypervisor boots an uncompressed vmlinux on x86_64, and none was built for this kernel")
        })?,
        Arch::Aarch64 => &artifacts.kernel,
    };
    out.opt(
        "--cpus",
        build(KvList::cloud_hypervisor().set("boot", config.vcpu))?,
    );
    out.flag("--watchdog");
    out.opt("--console", "null");
    out.opt("--serial", "tty");
    out.opt("--kernel", kernel.display().to_string());
    out.opt("--initramfs", artifacts.initrd.display().to_string());
    out.opt("--cmdline", kernel_cmdline);
    out.opt("--seccomp", "true");

    let shared = config.graphics.enable
        || config
            .shares
            .iter()
            .any(|s| s.proto == ShareProto::Virtiofs);
    let mut memory = KvList::cloud_hypervisor()
        .sorted()
        .set("size", format!("{}M", config.mem))
        .on_off("shared", shared)
        .set_if(!shared, "mergeable", "on")
        .set_if(config.hugepage_mem, "hugepages", "on");
    if config.hotplug_mem > 0 {
        memory = memory
            .set("hotplug_method", "virtio-mem")
            .set("hotplug_size", format!("{}M", config.hotplug_mem))
            .set("hotplugged_size", format!("{}M", config.hotplugged_mem));
    }
    out.opt("--memory", build(memory)?);
    Ok(())
}

/// OEM strings, among them systemd's notify socket credential when there is vsock.
fn platform(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    let mut oem: Vec<String> = Vec::new();
    if config.vsock.cid.is_some() {
        oem.push("io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888".into());
    }
    oem.extend(config.cloud_hypervisor.platform_oem_strings.iter().cloned());
    if !oem.is_empty() {
        out.opt(
            "--platform",
            build(KvList::cloud_hypervisor().list("oem_strings", oem))?,
        );
    }
    Ok(())
}

/// vsock, and over it the control channel with microvm's init.
fn vsock(
    out: &mut Out,
    config: &Config,
    pre_start: &mut Vec<PreStart>,
) -> Result<Option<ControlChannel>, PlanError> {
    let Some(cid) = config.vsock.cid else {
        return Ok(None);
    };
    out.opt(
        "--vsock",
        build(
            KvList::cloud_hypervisor()
                .set("cid", cid)
                .set("socket", NOTIFY_VSOCK),
        )?,
    );
    pre_start.push(PreStart::RemoveFile(NOTIFY_VSOCK.into()));
    pre_start.push(PreStart::RemoveFile(format!("{NOTIFY_VSOCK}_8888")));
    if !config.uses_own_initrd() {
        return Ok(None);
    }
    pre_start.push(PreStart::RemoveFile(format!(
        "{NOTIFY_VSOCK}_{CONTROL_VSOCK_PORT}"
    )));
    Ok(Some(ControlChannel::HybridVsock {
        socket: NOTIFY_VSOCK.into(),
        port: CONTROL_VSOCK_PORT,
    }))
}

/// The store disk and the volumes, one `--disk` value each.
fn disks(config: &Config, artifacts: &Artifacts) -> Result<Vec<String>, PlanError> {
    let vcpu = config.vcpu;
    let mut disks = Vec::new();
    if config.store_on_disk {
        if let Some(store) = &artifacts.store_disk {
            let kv = KvList::cloud_hypervisor()
                .sorted()
                .set_if(vcpu > 1, "num_queues", vcpu)
                .set("path", store.display())
                .on_off("readonly", true)
                .set("image_type", "raw");
            disks.push(build(kv)?);
        }
    }
    for v in &config.volumes {
        let kv = KvList::cloud_hypervisor()
            .sorted()
            .on_off("direct", v.direct)
            .set_if(vcpu > 1, "num_queues", vcpu)
            .set("path", &v.image)
            .on_off("readonly", v.read_only)
            .set_opt("serial", v.serial.as_ref())
            .set("image_type", v.image_type.name());
        disks.push(build(kv)?);
    }
    Ok(disks)
}

fn shares(config: &Config) -> Result<Vec<String>, PlanError> {
    config
        .shares
        .iter()
        .filter(|s| s.proto == ShareProto::Virtiofs)
        .map(|s| {
            let socket = s
                .socket
                .clone()
                .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", config.name, s.tag));
            build(
                KvList::cloud_hypervisor()
                    .sorted()
                    .set("socket", socket)
                    .set("tag", &s.tag),
            )
        })
        .collect()
}

fn balloon(out: &mut Out, config: &Config) -> Result<(), PlanError> {
    if !config.balloon {
        return Ok(());
    }
    let kv = KvList::cloud_hypervisor()
        .sorted()
        .set_if(config.deflate_on_oom, "deflate_on_oom", "on")
        .on_off("free_page_reporting", true)
        .set("size", format!("{}M", config.initial_balloon_mem));
    out.opt("--balloon", build(kv)?);
    Ok(())
}

/// The vhost-user GPU and its helper (`crosvm device gpu`).
fn graphics(out: &mut Out, config: &Config) -> Result<Helper, PlanError> {
    let socket = config.graphics.socket.clone();
    out.opt(
        "--gpu",
        build(KvList::cloud_hypervisor().set("socket", &socket))?,
    );
    out.warn_once("cloud-hypervisor graphics needs a build with GPU support (spectrum-os's cloud-hypervisor-graphics)");
    Ok(Helper {
        name: "gpu".into(),
        kind: HelperKind::GpuDevice,
        program: program(config.graphics.crosvm_package.as_deref(), "crosvm"),
        args: vec![
            "device".into(),
            "gpu".into(),
            "--socket".into(),
            socket.clone(),
            "--wayland-sock".into(),
            "$XDG_RUNTIME_DIR/$WAYLAND_DISPLAY".into(),
            "--params".into(),
            r#"{"context-types":"virgl:virgl2:cross-domain","displays":[{"hidden":true}],"egl":true,"vulkan":true}"#.into(),
        ],
        socket: Some(socket),
    })
}

/// One `--net` value per interface.
fn interfaces(out: &mut Out, config: &Config) -> Result<Vec<String>, PlanError> {
    let vcpu = config.vcpu;
    let mut nets = Vec::new();
    for iface in &config.interfaces {
        let id = iface.id.as_str();
        let kv = KvList::cloud_hypervisor()
            .sorted()
            .set("mac", iface.mac)
            .set_if(vcpu > 1, "num_queues", 2 * vcpu);
        let kv = match iface.kind {
            InterfaceType::Tap => {
                out.tap(iface, vcpu > 1);
                kv.set("tap", id)
            }
            InterfaceType::Macvtap => {
                let list: Vec<String> = out
                    .macvtap_fds(id, vcpu)
                    .iter()
                    .map(u32::to_string)
                    .collect();
                kv.set("fd", format!("[{}]", list.join(",")))
            }
            // Refused by the capability table.
            InterfaceType::User | InterfaceType::Bridge => {
                return Err(invalid(format!(
                    "Unsupported interface type {} for Cloud-Hypervisor",
                    iface.kind.name()
                )))
            }
        };
        nets.push(build(kv)?);
    }
    Ok(nets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::example;
    use microvm_spec::types::VsockCid;

    fn line(c: &Config, host: &HostFacts) -> String {
        plan(c, &Artifacts::placeholders(), host)
            .expect("plan")
            .args
            .join(" ")
    }

    #[test]
    fn example_vm() {
        let inv = plan(
            &example(),
            &Artifacts::placeholders(),
            &HostFacts::reference(),
        )
        .expect("plan");
        assert_eq!(
            inv.args.join(" "),
            "--cpus boot=2 --watchdog --console null --serial tty --kernel $KERNEL/vmlinux \
             --initramfs $INITRD --cmdline earlyprintk=ttyS0 console=ttyS0 reboot=t panic=-1 init=/sbin/init \
             --seccomp true --memory shared=on,size=512M --landlock \
             --disk image_type=raw,num_queues=2,path=$STORE,readonly=on \
             direct=off,image_type=raw,num_queues=2,path=var.img,readonly=off \
             --fs socket=vm1-virtiofs-home.sock,tag=home --api-socket vm1.sock \
             --net mac=02:00:00:00:00:01,num_queues=4,tap=vm-vm1"
        );
        assert_eq!(inv.pre_start, [PreStart::RemoveFile("vm1.sock".into())]);
        assert!(!inv.capabilities.supports_notify_socket);
        assert_eq!(inv.control_channel, None);
    }

    #[test]
    fn version_switches() {
        let mut c = example();
        c.cloud_hypervisor.version = Some("35.0".into());
        assert!(line(&c, &HostFacts::reference()).contains(
            "--disk image_type=raw,num_queues=2,path=$STORE,readonly=on --disk direct=off"
        ));
        c.cloud_hypervisor.version = Some("36.0".into());
        assert!(line(&c, &HostFacts::reference()).contains("readonly=on direct=off"));
        c.cloud_hypervisor.version = None;
        let host = HostFacts {
            versions: vec![(HV, Version::new(30, 0, 0))],
            ..HostFacts::reference()
        };
        assert!(line(&c, &host)
            .contains("--disk image_type=raw,num_queues=2,path=$STORE,readonly=on --disk"));
        c.cloud_hypervisor.version = Some("x".into());
        assert!(plan(&c, &Artifacts::placeholders(), &host).is_err());
    }

    #[test]
    fn landlock_from_version_40_or_unknown() {
        let mut c = example();
        assert!(line(&c, &HostFacts::reference()).contains(" --landlock "));
        c.cloud_hypervisor.version = Some("40.0".into());
        assert!(line(&c, &HostFacts::reference()).contains(" --landlock "));
        c.cloud_hypervisor.version = Some("39.0".into());
        assert!(!line(&c, &HostFacts::reference()).contains("--landlock"));
    }

    #[test]
    fn vsock_notify_and_memory() {
        let mut c = example();
        c.vsock.cid = Some(VsockCid(7));
        c.shares.clear();
        c.hotplug_mem = 1024;
        c.hotplugged_mem = 512;
        c.cloud_hypervisor.platform_oem_strings = vec!["io.systemd.credential:a=b".into()];
        let inv = plan(&c, &Artifacts::placeholders(), &HostFacts::reference()).expect("plan");
        let l = inv.args.join(" ");
        assert!(l.contains("--memory hotplug_method=virtio-mem,hotplug_size=1024M,hotplugged_size=512M,mergeable=on,shared=off,size=512M"), "{l}");
        assert!(l.contains("--platform oem_strings=[io.systemd.credential:vmm.notify_socket=vsock-stream:2:8888,io.systemd.credential:a=b] --vsock cid=7,socket=notify.vsock"), "{l}");
        assert!(inv.capabilities.supports_notify_socket && inv.capabilities.readiness);
        assert_eq!(
            inv.control_channel,
            Some(ControlChannel::HybridVsock {
                socket: "notify.vsock".into(),
                port: CONTROL_VSOCK_PORT
            })
        );
    }

    #[test]
    fn needs_vmlinux_on_x86() {
        let a = Artifacts {
            vmlinux: None,
            ..Artifacts::placeholders()
        };
        assert!(plan(&example(), &a, &HostFacts::reference()).is_err());
    }
}
