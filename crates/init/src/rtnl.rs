//! rtnetlink requests the init sends to configure static networking, built by hand:
//! the three messages it needs (link up + MTU, add address, add default route) are small
//! enough that a netlink library would cost more than it saves. Pure encoding and
//! decoding; the socket lives in the binary.

use std::net::IpAddr;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFF_UP: u32 = 0x1;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// An address with its prefix length, parsed from `10.0.0.2/24` or `fd00::2/64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| format!("address {s:?} has no /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("address {s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("address {s:?}: prefix must be 0..={max}"))?;
        Ok(Cidr { addr, prefix })
    }
}

fn family(addr: &IpAddr) -> u8 {
    if addr.is_ipv4() {
        AF_INET
    } else {
        AF_INET6
    }
}

fn addr_bytes(addr: &IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// A request under construction: header placeholder, fixed body, attributes.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16, flags: u16, seq: u32) -> Msg {
        let mut b = Vec::with_capacity(64);
        b.extend_from_slice(&0u32.to_ne_bytes()); // length, patched in finish()
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Msg(b)
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Msg {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = (self.0.len() as u32).to_ne_bytes();
        self.0[..4].copy_from_slice(&len);
        self.0
    }
}

/// `ip link set dev <index> up [mtu <mtu>]`.
pub fn link_up(seq: u32, index: u32, mtu: Option<u32>) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWLINK, 0, seq);
    m.0.extend_from_slice(&[0, 0]); // ifi_family, pad
    m.0.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.0.extend_from_slice(&(index as i32).to_ne_bytes());
    m.0.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    m.0.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    if let Some(mtu) = mtu {
        m = m.attr(IFLA_MTU, &mtu.to_ne_bytes());
    }
    m.finish()
}

/// `ip addr replace <cidr> dev <index>` (IPv6 without duplicate address detection, so
/// the address is usable at once).
pub fn addr_add(seq: u32, index: u32, cidr: &Cidr) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, seq);
    let flags = if cidr.addr.is_ipv6() { IFA_F_NODAD } else { 0 };
    m.0.extend_from_slice(&[family(&cidr.addr), cidr.prefix, flags, RT_SCOPE_UNIVERSE]);
    m.0.extend_from_slice(&index.to_ne_bytes());
    let a = addr_bytes(&cidr.addr);
    m.attr(IFA_LOCAL, &a).attr(IFA_ADDRESS, &a).finish()
}

/// `ip addr del <cidr> dev <index>`.
pub fn addr_del(seq: u32, index: u32, cidr: &Cidr) -> Vec<u8> {
    let mut m = Msg::new(RTM_DELADDR, 0, seq);
    m.0.extend_from_slice(&[family(&cidr.addr), cidr.prefix, 0, RT_SCOPE_UNIVERSE]);
    m.0.extend_from_slice(&index.to_ne_bytes());
    let a = addr_bytes(&cidr.addr);
    m.attr(IFA_LOCAL, &a).attr(IFA_ADDRESS, &a).finish()
}

/// `ip route replace default via <gateway> dev <index>`.
pub fn default_route(seq: u32, index: u32, gateway: &IpAddr) -> Vec<u8> {
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, seq);
    m.0.extend_from_slice(&[
        family(gateway),
        0, // dst_len: default route
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ]);
    m.0.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    m.attr(RTA_GATEWAY, &addr_bytes(gateway))
        .attr(RTA_OIF, &index.to_ne_bytes())
        .finish()
}

/// The kernel's answer to request `seq`: `Some(Ok(()))` for an ack, `Some(Err(errno))`
/// for an error, `None` when `reply` holds no answer to that request.
pub fn parse_ack(reply: &[u8], seq: u32) -> Option<Result<(), i32>> {
    let mut rest = reply;
    while rest.len() >= 16 {
        let len = u32::from_ne_bytes(rest[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(rest[4..6].try_into().ok()?);
        let msg_seq = u32::from_ne_bytes(rest[8..12].try_into().ok()?);
        if len < 16 || len > rest.len() {
            return None;
        }
        if kind == NLMSG_ERROR && msg_seq == seq && len >= 20 {
            let err = i32::from_ne_bytes(rest[16..20].try_into().ok()?);
            return Some(if err == 0 { Ok(()) } else { Err(-err) });
        }
        rest = &rest[len.next_multiple_of(4).min(rest.len())..];
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cidr_parsing() {
        let c: Cidr = "10.0.0.2/24".parse().expect("valid");
        assert_eq!(c.prefix, 24);
        assert!("fd00::2/64".parse::<Cidr>().is_ok());
        assert!("10.0.0.2".parse::<Cidr>().is_err());
        assert!("10.0.0.2/33".parse::<Cidr>().is_err());
        assert!("nonsense/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn link_up_layout() {
        let m = link_up(7, 3, Some(1400));
        assert_eq!(m.len(), 16 + 16 + 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), RTM_NEWLINK);
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 7);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(u16::from_ne_bytes(m[34..36].try_into().unwrap()), IFLA_MTU);
        assert_eq!(u32::from_ne_bytes(m[36..40].try_into().unwrap()), 1400);
    }

    #[test]
    fn addr_and_route_layout() {
        let c: Cidr = "10.0.2.15/24".parse().unwrap();
        let m = addr_add(1, 2, &c);
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(&m[16..20], &[AF_INET, 24, 0, 0]);
        assert_eq!(&m[28..32], &[10, 0, 2, 15]);
        let v6: Cidr = "fd00::2/64".parse().unwrap();
        assert_eq!(addr_add(1, 2, &v6).len(), 16 + 8 + 20 + 20);

        let r = default_route(5, 2, &"10.0.2.2".parse().unwrap());
        assert_eq!(r.len(), 16 + 12 + 8 + 8);
        assert_eq!(r[16], AF_INET);
        assert_eq!(&r[32..36], &[10, 0, 2, 2]);
    }

    #[test]
    fn ack_parsing() {
        let mut ack = vec![0u8; 36];
        ack[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        ack[8..12].copy_from_slice(&9u32.to_ne_bytes());
        assert_eq!(parse_ack(&ack, 9), Some(Ok(())));
        assert_eq!(parse_ack(&ack, 8), None);
        ack[16..20].copy_from_slice(&(-17i32).to_ne_bytes());
        assert_eq!(parse_ack(&ack, 9), Some(Err(17)));
        assert_eq!(parse_ack(&ack[..10], 9), None);
    }
}
