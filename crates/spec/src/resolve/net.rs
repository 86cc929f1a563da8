//! Interfaces, port forwarding, passthrough devices.

use std::net::Ipv4Addr;

use super::storage::duplicates;
use super::Resolver;
use crate::config::{
    Device, DeviceBus, ForwardFrom, ForwardPort, ForwardProto, Interface, InterfaceType, Macvtap,
    PcieRootPort,
};
use crate::node::KeyPath;
use crate::schema::Spec;
use crate::types::{Hypervisor, IfName, MacAddr};

pub(crate) struct Net {
    pub interfaces: Vec<Interface>,
    pub forward_ports: Vec<ForwardPort>,
    pub devices: Vec<Device>,
    pub pcie_root_ports: Vec<PcieRootPort>,
}

pub(crate) fn resolve(r: &mut Resolver<'_>, spec: &Spec, hypervisor: Hypervisor) -> Net {
    let root = KeyPath::root();
    let mut interfaces = Vec::new();
    for (i, s) in spec.interfaces.iter().enumerate() {
        let p = root.key("interfaces").index(i);
        let kind = r.required(&s.kind, p.key("type"));
        let id = r.required(&s.id, p.key("id"));
        let mac = r.required(&s.mac, p.key("mac"));
        let id = id.and_then(|id| match id.parse::<IfName>() {
            Ok(n) => Some(n),
            Err(_) if id.len() > 15 => {
                r.error(p.key("id"), format!("MicroVM {}: interface name {id} is longer than the maximum length of 15 characters on Linux.", r.vm));
                None
            }
            Err(e) => {
                r.error(p.key("id"), e.0);
                None
            }
        });
        let mac = mac.and_then(|m| match m.parse::<MacAddr>() {
            Ok(m) => Some(m),
            Err(e) => {
                r.error(p.key("mac"), e.0);
                None
            }
        });
        let shown = id
            .as_ref()
            .map_or_else(|| p.to_string(), ToString::to_string);
        match (kind, &s.bridge) {
            (Some(InterfaceType::Bridge), None) => r.error(p.clone(), format!("MicroVM {}: interface {shown} is of type \"bridge\" but doesn't have a bridge to attach to defined.", r.vm)),
            // A tap may name a bridge to join (an extension: microvm.nix refuses it, #247).
            (Some(k), Some(_)) if k != InterfaceType::Bridge && k != InterfaceType::Tap => r.error(p.key("bridge"), format!("MicroVM {}: interface {shown} is not of type \"bridge\" and therefore shouldn't have a \"bridge\" option defined.", r.vm)),
            _ => {}
        }
        let macvtap = if kind == Some(InterfaceType::Macvtap) {
            let link = r.required(&s.macvtap.link, p.key("macvtap").key("link"));
            let mode = r.required(&s.macvtap.mode, p.key("macvtap").key("mode"));
            link.zip(mode).map(|(link, mode)| Macvtap { link, mode })
        } else {
            None
        };
        if let (Some(kind), Some(id), Some(mac)) = (kind, id, mac) {
            interfaces.push(Interface {
                kind,
                id,
                mac,
                macvtap,
                bridge: s.bridge.clone(),
                vhost: s.tap.vhost.unwrap_or(false),
            });
        }
    }
    duplicates(
        r,
        interfaces.iter().map(|i| i.id.to_string()),
        "interfaces",
        "id",
        |vm, id, k| format!("MicroVM {vm}: interface id \"{id}\" is used {k} > 1 times."),
    );
    for (i, a) in interfaces.iter().enumerate() {
        if interfaces[..i].iter().any(|b| b.mac == a.mac) {
            r.warn(
                root.key("interfaces").index(i).key("mac"),
                format!(
                    "MicroVM {}: MAC address {} is used by more than one interface",
                    r.vm, a.mac
                ),
            );
        }
    }

    let mut forward_ports = Vec::new();
    for (i, f) in spec.forward_ports.iter().enumerate() {
        let p = root.key("forwardPorts").index(i);
        let host_port = port(r, f.host.port, p.key("host").key("port"));
        let guest_port = port(r, f.guest.port, p.key("guest").key("port"));
        let host_address = ipv4(r, &f.host.address, p.key("host").key("address"));
        let guest_address = ipv4(r, &f.guest.address, p.key("guest").key("address"));
        if let (Some(host_port), Some(guest_port)) = (host_port, guest_port) {
            forward_ports.push(ForwardPort {
                from: f.from.unwrap_or(ForwardFrom::Host),
                proto: f.proto.unwrap_or(ForwardProto::Tcp),
                host_address,
                host_port,
                guest_address,
                guest_port,
            });
        }
    }
    check_forwards(r, spec, &interfaces, &forward_ports, hypervisor);

    let mut devices = Vec::new();
    for (i, d) in spec.devices.iter().enumerate() {
        let p = root.key("devices").index(i);
        let bus = r.required(&d.bus, p.key("bus"));
        let path = r.required(&d.path, p.key("path"));
        if let (Some(DeviceBus::Pci), Some(path)) = (bus, &path) {
            if !is_pci_bdf(path) {
                r.error(
                    p.key("path"),
                    format!("{path:?} is not a PCI address like 0000:01:00.0"),
                );
            }
        }
        if let (Some(bus), Some(path)) = (bus, path) {
            devices.push(Device {
                bus,
                path,
                qemu_device_extra_args: d.qemu.device_extra_args.clone(),
                qemu_id: d.qemu.id.clone(),
                qemu_bus: d.qemu.bus.clone(),
            });
        }
    }

    let mut pcie_root_ports = Vec::new();
    for (i, port) in spec.qemu.pcie_root_ports.iter().enumerate() {
        let p = root.key("qemu").key("pcieRootPorts").index(i);
        if let Some(id) = r.required(&port.id, p.key("id")) {
            pcie_root_ports.push(PcieRootPort {
                id,
                bus: port.bus.clone(),
                chassis: port.chassis,
                slot: port.slot,
                addr: port.addr.clone(),
            });
        }
    }
    Net {
        interfaces,
        forward_ports,
        devices,
        pcie_root_ports,
    }
}

/// Where forwarded ports can go: qemu's `user` networking (hostfwd), or a tap (the
/// host's DNAT, [`crate::forward`]), which forwards from the host only, never from a
/// loopback address; no two forwards of a VM listen on the same port.
fn check_forwards(
    r: &mut Resolver<'_>,
    spec: &Spec,
    interfaces: &[Interface],
    ports: &[ForwardPort],
    hypervisor: Hypervisor,
) {
    let root = KeyPath::root();
    if spec.forward_ports.is_empty() {
        return;
    }
    let hostfwd = crate::forward::uses_hostfwd(hypervisor == Hypervisor::Qemu, interfaces);
    if !hostfwd && !interfaces.iter().any(|i| i.kind == InterfaceType::Tap) {
        r.error(root.key("forwardPorts"), format!("MicroVM {}: `config.microvm.forwardPorts` works only with qemu and a network interface with `type = \"user\"` (hostfwd), or with a `tap` interface (nftables DNAT on the host)", r.vm));
        return;
    }
    for (i, p) in ports.iter().enumerate() {
        let at = root.key("forwardPorts").index(i);
        if !hostfwd && p.from == ForwardFrom::Guest {
            r.error(at.key("from"), format!("MicroVM {}: `from = \"guest\"` (qemu's guestfwd) needs a `user` interface; a VM on a tap reaches the host directly", r.vm));
        }
        if !hostfwd
            && p.host_address
                .parse::<Ipv4Addr>()
                .is_ok_and(|a| a.is_loopback())
        {
            r.error(at.key("host").key("address"), format!("MicroVM {}: a tap VM's port cannot be forwarded from the loopback address {} (DNAT does not apply to it); leave `host.address` empty to forward it on every other host address", r.vm, p.host_address));
        }
        let key = |p: &ForwardPort| (p.from, p.proto, p.host_port);
        let same_address = |a: &ForwardPort, b: &ForwardPort| {
            a.host_address.is_empty()
                || b.host_address.is_empty()
                || a.host_address == b.host_address
        };
        if let Some(j) = ports[..i]
            .iter()
            .position(|q| key(q) == key(p) && same_address(q, p))
        {
            r.error(at.key("host").key("port"), format!("MicroVM {}: {} port {} is forwarded twice (forwardPorts[{j}] and forwardPorts[{i}])", r.vm, p.proto.name(), p.host_port));
        }
    }
}

fn port(r: &mut Resolver<'_>, value: Option<u64>, path: KeyPath) -> Option<u16> {
    // Out of range is reported by `ranges::check`.
    let v = r.required(&value, path)?;
    u16::try_from(v).ok().filter(|&p| p > 0)
}

fn ipv4(r: &mut Resolver<'_>, value: &Option<String>, path: KeyPath) -> String {
    let v = value.clone().unwrap_or_default();
    if !v.is_empty() && v.parse::<Ipv4Addr>().is_err() {
        r.error(
            path,
            format!("{v:?} is not an IPv4 address (port forwarding is IPv4 only)"),
        );
    }
    v
}

fn is_pci_bdf(s: &str) -> bool {
    let b = s.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    b.len() == 12
        && hex(0..4)
        && b[4] == b':'
        && hex(5..7)
        && b[7] == b':'
        && hex(8..10)
        && b[10] == b'.'
        && (b'0'..=b'7').contains(&b[11])
}
