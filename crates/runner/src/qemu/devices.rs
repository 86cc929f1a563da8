//! qemu devices: disks, shares, network, passthrough.

use microvm_spec::config::ControlTransport;
use microvm_spec::config::{Config, DeviceBus, ForwardFrom, ImageType, InterfaceType, ShareProto};

use super::{Args, Ctx};
use crate::common::drive_letter;
use crate::kv::KvList;
use crate::{ControlChannel, MacvtapFd, PlanError, TapSetup};

pub(super) fn store_disk(a: &mut Args, ctx: &Ctx<'_>, store: &str) -> Result<(), PlanError> {
    let drive = KvList::qemu_plain()
        .set("id", "store")
        .set("format", "raw")
        .on_off("read-only", true)
        .set("file", store)
        .set("if", "none")
        .set("aio", "io_uring");
    a.kv("-drive", drive)?;
    let dev = KvList::qemu(format!("virtio-blk-{}", ctx.dt))
        .set("drive", "store")
        .set_if(ctx.pci, "disable-legacy", "on");
    a.kv("-device", dev)
}

fn format(t: ImageType) -> &'static str {
    match t {
        ImageType::Raw => "raw",
        ImageType::Qcow2 => "qcow2",
        ImageType::Vhd => "vpc",
        ImageType::Vhdx => "vhdx",
    }
}

pub(super) fn volumes(a: &mut Args, ctx: &Ctx<'_>) -> Result<(), PlanError> {
    for (i, v) in ctx.config.volumes.iter().enumerate() {
        let id = format!("vd{}", drive_letter(i));
        let drive = KvList::qemu_plain()
            .set("id", &id)
            .set("format", format(v.image_type))
            .set("file", &v.image)
            .set("if", "none")
            .set("aio", "io_uring")
            .set("discard", "unmap")
            .set_if(v.direct, "cache", "none")
            .on_off("read-only", v.read_only);
        a.kv("-drive", drive)?;
        let dev = KvList::qemu(format!("virtio-blk-{}", ctx.dt))
            .set("drive", &id)
            .set_opt("serial", v.serial.as_ref());
        a.kv("-device", dev)?;
    }
    Ok(())
}

pub(super) fn shares(a: &mut Args, ctx: &Ctx<'_>) -> Result<(), PlanError> {
    let c = ctx.config;
    if c.shares.is_empty() {
        return Ok(());
    }
    let mem = KvList::qemu("memory-backend-memfd")
        .set("id", "mem")
        .set("size", format!("{}M", c.mem))
        .on_off("share", true);
    a.kv("-object", mem)?;
    a.kv("-numa", KvList::qemu("node").set("memdev", "mem"))?;
    for (i, s) in c.shares.iter().enumerate() {
        let id = format!("fs{i}");
        match s.proto {
            ShareProto::Virtiofs => {
                let socket = s
                    .socket
                    .clone()
                    .unwrap_or_else(|| format!("{}-virtiofs-{}.sock", c.name, s.tag));
                a.kv(
                    "-chardev",
                    KvList::qemu("socket").set("id", &id).set("path", socket),
                )?;
                let dev = KvList::qemu(format!("vhost-user-fs-{}", ctx.dt))
                    .set("chardev", &id)
                    .set("tag", &s.tag);
                a.kv("-device", dev)?;
            }
            ShareProto::NineP => {
                let fsdev = KvList::qemu("local")
                    .set("id", &id)
                    .set("path", &s.source)
                    .set("security_model", s.security_model.name())
                    .set_if(s.read_only, "readonly", "on");
                a.kv("-fsdev", fsdev)?;
                let dev = KvList::qemu(format!("virtio-9p-{}", ctx.dt))
                    .set("fsdev", &id)
                    .set("mount_tag", &s.tag);
                a.kv("-device", dev)?;
            }
        }
    }
    Ok(())
}

#[derive(Debug, Default)]
pub(super) struct Net {
    pub(super) taps: Vec<TapSetup>,
    pub(super) macvtap_fds: Vec<MacvtapFd>,
}

pub(super) fn interfaces(a: &mut Args, ctx: &Ctx<'_>) -> Result<Net, PlanError> {
    let c = ctx.config;
    let mut net = Net::default();
    // qemu is a `tapMultiQueue` hypervisor: one queue per vCPU.
    let queues = c.vcpu.max(1);
    let mut macvtap_index = 0u32;
    for iface in &c.interfaces {
        let id = iface.id.as_str();
        let netdev = match iface.kind {
            InterfaceType::User => {
                let mut kv = KvList::qemu("user").set("id", id);
                for fp in &c.forward_ports {
                    let proto = fp.proto.name();
                    match fp.from {
                        ForwardFrom::Host => kv.push(
                            "hostfwd",
                            format!(
                                "{proto}:{}:{}-{}:{}",
                                fp.host_address, fp.host_port, fp.guest_address, fp.guest_port
                            ),
                        ),
                        ForwardFrom::Guest => kv.push(
                            "guestfwd",
                            format!(
                                "{proto}:{}:{}-cmd:nc {} {}",
                                fp.guest_address, fp.guest_port, fp.host_address, fp.host_port
                            ),
                        ),
                    }
                }
                kv
            }
            InterfaceType::Tap => {
                net.taps.push(TapSetup {
                    name: id.to_owned(),
                    vnet_hdr: true,
                    multi_queue: c.vcpu > 1,
                    bridge: iface.bridge.clone(),
                });
                KvList::qemu("tap")
                    .set("id", id)
                    .set("ifname", id)
                    .set("script", "no")
                    .set("downscript", "no")
                    .set_if(iface.vhost, "vhost", "on")
                    .set_if(c.vcpu > 1, "queues", c.vcpu)
            }
            InterfaceType::Macvtap => {
                let fds: Vec<u32> = (0..queues)
                    .map(|q| 3 + macvtap_index * queues + q)
                    .collect();
                for (q, fd) in fds.iter().enumerate() {
                    net.macvtap_fds.push(MacvtapFd {
                        interface: id.to_owned(),
                        queue: q as u32,
                        fd: *fd,
                    });
                }
                macvtap_index += 1;
                let kv = KvList::qemu("tap").set("id", id);
                let kv = if fds.len() == 1 {
                    kv.set("fd", fds[0])
                } else {
                    let list: Vec<String> = fds.iter().map(u32::to_string).collect();
                    kv.set("fds", list.join(":"))
                };
                kv.set_if(iface.vhost, "vhost", "on")
            }
            InterfaceType::Bridge => {
                let bridge = iface.bridge.clone().unwrap_or_default();
                KvList::qemu("bridge").set("id", id).set("br", bridge)
            }
        };
        a.kv("-netdev", netdev)?;
        let mq = ctx.pci
            && c.vcpu > 1
            && matches!(iface.kind, InterfaceType::Tap | InterfaceType::Macvtap);
        let dev = KvList::qemu(format!("virtio-net-{}", ctx.dt))
            .set("netdev", id)
            .set("mac", iface.mac)
            .set_if(ctx.pci, "romfile", "")
            .set_if(mq, "mq", "on")
            .set_if(mq, "vectors", 2 * c.vcpu + 2);
        a.kv("-device", dev)?;
    }
    Ok(net)
}

pub(super) fn pcie_root_ports(a: &mut Args, c: &Config) -> Result<(), PlanError> {
    for p in &c.qemu.pcie_root_ports {
        let dev = KvList::qemu("pcie-root-port")
            .set("id", &p.id)
            .set_opt("bus", p.bus.as_ref())
            .set_opt("chassis", p.chassis)
            .set_opt("slot", p.slot)
            .set_opt("addr", p.addr.as_ref());
        a.kv("-device", dev)?;
    }
    Ok(())
}

pub(super) fn vfio(a: &mut Args, c: &Config) -> Result<(), PlanError> {
    for d in c.devices.iter().filter(|d| d.bus == DeviceBus::Pci) {
        let dev = KvList::qemu("vfio-pci")
            .set("host", &d.path)
            .on_off("multifunction", true)
            .set_opt("id", d.qemu_id.as_ref())
            .set_opt("bus", d.qemu_bus.as_ref())
            .build()
            .map_err(|e| e.into_plan(super::HV))?;
        // `deviceExtraArgs` is qemu option syntax written by the user: appended as is.
        let dev = match &d.qemu_device_extra_args {
            Some(extra) if !extra.is_empty() => format!("{dev},{extra}"),
            _ => dev,
        };
        a.opt("-device", dev);
    }
    Ok(())
}

pub(super) fn usb(a: &mut Args, c: &Config) -> Result<(), PlanError> {
    let usb: Vec<_> = c
        .devices
        .iter()
        .filter(|d| d.bus == DeviceBus::Usb)
        .collect();
    if usb.is_empty() {
        return Ok(());
    }
    // One xHCI controller: graphics already adds it.
    if !c.graphics.enable {
        a.opt("-device", "qemu-xhci");
    }
    for d in usb {
        // `path` is qemu option syntax (`vendorid=0x…,productid=0x…`): appended as is.
        a.opt("-device", format!("usb-host,{}", d.path));
    }
    Ok(())
}

/// The virtio-serial control channel with microvm's own init.
pub(super) fn control_channel(
    a: &mut Args,
    ctx: &Ctx<'_>,
) -> Result<Option<ControlChannel>, PlanError> {
    // Elsewhere `common::console_channel` sets the console channel (or there is none).
    if ctx.config.control_transport() != ControlTransport::VirtioSerial {
        return Ok(None);
    }
    let socket = ctx.config.control_channel_socket();
    a.opt("-device", format!("virtio-serial-{}", ctx.dt));
    let chardev = KvList::qemu("socket")
        .set("id", "microvm-ctl")
        .set("path", &socket)
        .on_off("server", true)
        .on_off("wait", false);
    a.kv("-chardev", chardev)?;
    a.kv(
        "-device",
        KvList::qemu("virtserialport")
            .set("chardev", "microvm-ctl")
            .set("name", "microvm.ctl"),
    )?;
    Ok(Some(ControlChannel::VirtioSerial {
        socket,
        port: "microvm.ctl".into(),
    }))
}

pub(super) fn vsock(a: &mut Args, ctx: &Ctx<'_>) -> Result<(), PlanError> {
    let Some(cid) = ctx.config.vsock.cid else {
        return Ok(());
    };
    a.kv(
        "-device",
        KvList::qemu(format!("vhost-vsock-{}", ctx.dt)).set("guest-cid", cid),
    )
}

pub(super) fn balloon(a: &mut Args, ctx: &Ctx<'_>) -> Result<(), PlanError> {
    if !ctx.config.balloon {
        return Ok(());
    }
    let balloon = KvList::qemu(format!("virtio-balloon-{}", ctx.dt))
        .on_off("free-page-reporting", true)
        .set("id", "balloon0")
        .set_if(ctx.config.deflate_on_oom, "deflate-on-oom", "on");
    a.kv("-device", balloon)
}

/// `credentialFiles` as fw_cfg entries systemd reads as credentials.
pub(super) fn credential_files(a: &mut Args, c: &Config) -> Result<(), PlanError> {
    for (name, path) in &c.credential_files {
        let fw = KvList::qemu_plain()
            .set("name", format!("opt/io.systemd.credentials/{name}"))
            .set("file", path.display());
        a.kv("-fw_cfg", fw)?;
    }
    Ok(())
}
