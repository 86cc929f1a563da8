//! Forwarded ports of a VM on a tap: what the host's nftables DNAT needs, derived once
//! from the resolved interfaces, guest network entries and `forwardPorts`.
//!
//! qemu's `user` networking forwards with `hostfwd` (the planner renders it); every
//! other VM with a `tap` gets its ports forwarded by the host: the supervisor installs a
//! DNAT table for the VM from the runner's `share/microvm/forward-ports.json` (this
//! type), towards the guest's address. That address is, per port, `guest.address`, else
//! the tap's static IPv4 address (a `[[network]]` entry), else the DHCP lease of the tap's
//! MAC on the microvm network of its bridge (the host reserves it before the boot).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::config::{
    ForwardFrom, ForwardPort, ForwardProto, Interface, InterfaceType, StaticNetwork,
};

/// The DNAT forwards of one VM (`share/microvm/forward-ports.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapForwards {
    /// The tap whose guest side the ports reach.
    pub interface: String,
    pub mac: String,
    /// The bridge the tap joins (a microvm network's bridge for DHCP addresses).
    pub bridge: Option<String>,
    /// The tap's static IPv4 address, if the definition gives one.
    pub address: Option<Ipv4Addr>,
    /// Whether the guest takes its address by DHCP on the bridge's network.
    pub dhcp: bool,
    pub ports: Vec<TapPort>,
}

/// One forwarded port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TapPort {
    pub proto: ForwardProto,
    /// The host address the port is forwarded on; `None`: every non-loopback address.
    pub host_address: Option<Ipv4Addr>,
    pub host_port: u16,
    /// `guest.address`, when given; else the VM's address.
    pub guest_address: Option<Ipv4Addr>,
    pub guest_port: u16,
}

impl TapForwards {
    /// The address a port reaches when the definition fixes it (`None`: the DHCP lease).
    pub fn fixed_target(&self, port: &TapPort) -> Option<Ipv4Addr> {
        port.guest_address.or(self.address)
    }
}

/// Whether a VM's forwarded ports go through qemu's `hostfwd` (a `user` interface on
/// qemu) rather than the host's DNAT.
pub fn uses_hostfwd(qemu: bool, interfaces: &[Interface]) -> bool {
    qemu && interfaces.iter().any(|i| i.kind == InterfaceType::User)
}

/// The DNAT forwards of a VM without qemu user networking; `Ok(None)` when it forwards
/// nothing that way. The error says why no guest address can be known.
pub fn tap_forwards(
    qemu: bool,
    interfaces: &[Interface],
    network: &[StaticNetwork],
    ports: &[ForwardPort],
) -> Result<Option<TapForwards>, String> {
    if ports.is_empty() || uses_hostfwd(qemu, interfaces) {
        return Ok(None);
    }
    let taps: Vec<&Interface> = interfaces
        .iter()
        .filter(|i| i.kind == InterfaceType::Tap)
        .collect();
    let entry = |tap: &Interface| network.iter().find(|n| n.mac == tap.mac);
    let static_v4 = |tap: &Interface| {
        entry(tap)?.addresses.iter().find_map(|a| {
            let (addr, _) = a.split_once('/')?;
            addr.parse::<Ipv4Addr>().ok()
        })
    };
    let dhcp = |tap: &Interface| tap.bridge.is_some() && entry(tap).is_some_and(|n| n.dhcp);
    let Some(chosen) = taps
        .iter()
        .find(|t| static_v4(t).is_some() || dhcp(t))
        .or(taps.first())
    else {
        // Refused when resolving: forwarded ports need a tap or qemu's `user` networking.
        return Ok(None);
    };
    let out = TapForwards {
        interface: chosen.id.to_string(),
        mac: chosen.mac.to_string(),
        bridge: chosen.bridge.clone(),
        address: static_v4(chosen),
        dhcp: static_v4(chosen).is_none() && dhcp(chosen),
        ports: ports
            .iter()
            .filter(|p| p.from == ForwardFrom::Host)
            .map(|p| TapPort {
                proto: p.proto,
                host_address: p.host_address.parse().ok(),
                host_port: p.host_port,
                guest_address: p.guest_address.parse().ok(),
                guest_port: p.guest_port,
            })
            .collect(),
    };
    if !out.dhcp && out.address.is_none() && out.ports.iter().any(|p| p.guest_address.is_none()) {
        return Err(format!(
            "the guest's address of tap {} is unknown: set `guest.address`, give the tap a static IPv4 address in a `[[network]]` entry, or attach it to a microvm network (`bridge`) with `dhcp = true`",
            chosen.id
        ));
    }
    Ok(Some(out))
}

/// Whether two forwards listen on the same port: same protocol and port, and the same
/// host address or either on every address.
pub fn clash(a: &TapPort, b: &TapPort) -> bool {
    a.proto == b.proto
        && a.host_port == b.host_port
        && (a.host_address.is_none()
            || b.host_address.is_none()
            || a.host_address == b.host_address)
}
