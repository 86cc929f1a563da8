//! Static networking over rtnetlink: `lo` up, then each planned interface (matched by MAC
//! address) up with its MTU, addresses and default routes.

use std::net::IpAddr;

use microvm_init::dhcp::Reply;
use microvm_init::plan::NetPlan;
use microvm_init::rtnl::{self, Cidr};
use rustix::fd::OwnedFd;
use rustix::net::netlink::SocketAddrNetlink;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

use super::devices;
use super::fail::{Context, Failure};

pub fn configure(plan: &[NetPlan]) -> Result<(), Failure> {
    let mut link = Rtnl::open().ctx(|| "open rtnetlink socket".into())?;
    if let Some(lo) = ifindex("lo") {
        link.request(|seq| rtnl::link_up(seq, lo, None))
            .ctx(|| "bring lo up".into())?;
    }
    for net in plan {
        let mac = net.mac.to_ascii_lowercase();
        let (name, index) = devices::wait_for(devices::WAIT, || by_mac(&mac)).ok_or_else(|| {
            Failure::new(
                format!("find network interface {mac}"),
                format!("not present after {} s", devices::WAIT.as_secs()),
            )
        })?;
        link.request(|seq| rtnl::link_up(seq, index, net.mtu))
            .ctx(|| format!("bring {name} up"))?;
        for address in &net.addresses {
            let cidr: Cidr = address.parse().ctx(|| format!("address of {name}"))?;
            link.request(|seq| rtnl::addr_add(seq, index, &cidr))
                .ctx(|| format!("add address {address} to {name}"))?;
        }
        for gateway in &net.gateways {
            let gw: IpAddr = gateway
                .parse()
                .ctx(|| format!("gateway {gateway:?} of {name}"))?;
            link.request(|seq| rtnl::default_route(seq, index, &gw))
                .ctx(|| format!("add default route via {gateway} on {name}"))?;
        }
        if net.dhcp {
            let lease = super::dhcp::acquire(&name, &mac)?;
            apply_lease(&mut link, &name, index, &lease)?;
            super::dhcp::hold(&name, index, &mac, lease);
        }
    }
    Ok(())
}

/// Replaces the lease `old` of interface `index` by `new` (a renewal that changed the
/// address, or a new lease after one was lost): the old address goes, the new one is
/// configured like the first.
pub fn replace_lease(name: &str, index: u32, old: &Reply, new: &Reply) -> Result<(), Failure> {
    let mut link = Rtnl::open().ctx(|| "open rtnetlink socket".into())?;
    if old.address != new.address {
        let cidr = lease_cidr(old);
        // Already gone (an admin removed it) is fine.
        let _ = link.request(|seq| rtnl::addr_del(seq, index, &cidr));
    }
    apply_lease(&mut link, name, index, new)
}

fn lease_cidr(lease: &Reply) -> Cidr {
    Cidr {
        addr: IpAddr::V4(lease.address),
        prefix: lease.prefix.unwrap_or(24),
    }
}

/// Configures a DHCP lease: address, default route, name servers and search domain.
fn apply_lease(link: &mut Rtnl, name: &str, index: u32, lease: &Reply) -> Result<(), Failure> {
    let cidr = lease_cidr(lease);
    link.request(|seq| rtnl::addr_add(seq, index, &cidr))
        .ctx(|| format!("add leased address {} to {name}", lease.address))?;
    if let Some(gw) = lease.router {
        link.request(|seq| rtnl::default_route(seq, index, &IpAddr::V4(gw)))
            .ctx(|| format!("add default route via {gw} on {name}"))?;
    }
    if !lease.dns.is_empty() {
        let mut text: String = lease
            .dns
            .iter()
            .map(|s| format!("nameserver {s}\n"))
            .collect();
        if let Some(d) = &lease.domain {
            text.push_str(&format!("search {d}\n"));
        }
        if !super::system::write_if_writable("/etc/resolv.conf", &text)? {
            super::console::say(
                "microvm-init: warning: read-only root: /etc/resolv.conf not written",
            );
        }
    }
    Ok(())
}

fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The interface whose MAC address is `mac`, with its index.
fn by_mac(mac: &str) -> Option<(String, u32)> {
    std::fs::read_dir("/sys/class/net").ok()?.find_map(|e| {
        let name = e.ok()?.file_name().into_string().ok()?;
        let address = std::fs::read_to_string(format!("/sys/class/net/{name}/address")).ok()?;
        if address.trim() != mac {
            return None;
        }
        let index = ifindex(&name)?;
        Some((name, index))
    })
}

/// A NETLINK_ROUTE socket that sends one request at a time and waits for its ack.
struct Rtnl {
    fd: OwnedFd,
    seq: u32,
}

impl Rtnl {
    fn open() -> rustix::io::Result<Rtnl> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::RAW,
            SocketFlags::CLOEXEC,
            None, // protocol 0: NETLINK_ROUTE
        )?;
        rustix::net::bind(&fd, &SocketAddrNetlink::new(0, 0))?;
        Ok(Rtnl { fd, seq: 0 })
    }

    fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>) -> Result<(), String> {
        self.seq += 1;
        let message = build(self.seq);
        let kernel = SocketAddrNetlink::new(0, 0);
        rustix::net::sendto(&self.fd, &message, SendFlags::empty(), &kernel)
            .map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 8192];
        loop {
            let (n, _) = rustix::net::recv(&self.fd, &mut buf[..], RecvFlags::empty())
                .map_err(|e| e.to_string())?;
            match rtnl::parse_ack(&buf[..n], self.seq) {
                Some(Ok(())) => return Ok(()),
                Some(Err(errno)) => {
                    return Err(rustix::io::Errno::from_raw_os_error(errno).to_string())
                }
                None => continue,
            }
        }
    }
}
