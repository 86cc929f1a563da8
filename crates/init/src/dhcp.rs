//! DHCPv4 messages (RFC 2131/2132) for the guest init's client: DISCOVER and REQUEST out,
//! OFFER, ACK and NAK in. Only what a VM on a microvm network needs: an address, its
//! prefix, the router, name servers, the domain and the lease's times. The broadcast
//! flag is set, so the server answers by broadcast and a UDP socket receives the reply
//! before the interface has an address. [`LeaseTimes`] is the renewal schedule of a
//! bound lease (RFC 2131 §4.4.5: RENEWING at T1, REBINDING at T2).

use std::net::Ipv4Addr;
use std::time::Duration;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const FIXED: usize = 236;

pub const DISCOVER: u8 = 1;
pub const OFFER: u8 = 2;
pub const REQUEST: u8 = 3;
pub const ACK: u8 = 5;
pub const NAK: u8 = 6;

/// What a server offered or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: u8,
    pub address: Ipv4Addr,
    /// Option 54, the server to REQUEST from.
    pub server: Option<Ipv4Addr>,
    pub prefix: Option<u8>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: Option<u32>,
    /// Options 58 and 59: when to renew and rebind (seconds after the ACK).
    pub renew_secs: Option<u32>,
    pub rebind_secs: Option<u32>,
}

/// A DISCOVER from `mac`, sending `hostname` (option 12) so the server can register it.
pub fn discover(xid: u32, mac: [u8; 6], hostname: &str) -> Vec<u8> {
    message(xid, mac, DISCOVER, hostname, &[])
}

/// A REQUEST for `address` from `server` (the SELECTING state of RFC 2131 §4.3.2).
pub fn request(
    xid: u32,
    mac: [u8; 6],
    hostname: &str,
    address: Ipv4Addr,
    server: Ipv4Addr,
) -> Vec<u8> {
    let extra = [
        (50, address.octets().to_vec()),
        (54, server.octets().to_vec()),
    ];
    message(xid, mac, REQUEST, hostname, &extra)
}

/// A REQUEST that extends the lease of `address` (RENEWING, unicast to the server, and
/// REBINDING, broadcast, of RFC 2131 §4.3.2): `ciaddr` is the address, no options 50/54.
pub fn extend(xid: u32, mac: [u8; 6], hostname: &str, address: Ipv4Addr) -> Vec<u8> {
    let mut m = message(xid, mac, REQUEST, hostname, &[]);
    m[10] = 0; // the reply comes to our address
    m[12..16].copy_from_slice(&address.octets());
    m
}

fn message(xid: u32, mac: [u8; 6], kind: u8, hostname: &str, extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0u8; FIXED];
    m[0] = 1; // BOOTREQUEST
    m[1] = 1; // Ethernet
    m[2] = 6;
    m[4..8].copy_from_slice(&xid.to_be_bytes());
    m[10] = 0x80; // broadcast flag
    m[28..34].copy_from_slice(&mac);
    m.extend_from_slice(&MAGIC);
    let mut opt = |code: u8, data: &[u8]| {
        m.push(code);
        m.push(data.len() as u8);
        m.extend_from_slice(data);
    };
    opt(53, &[kind]);
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac);
    opt(61, &client_id);
    let name = &hostname.as_bytes()[..hostname.len().min(63)];
    if !name.is_empty() {
        opt(12, name);
    }
    for (code, data) in extra {
        opt(*code, data);
    }
    opt(55, &[1, 3, 6, 15, 51, 54, 58, 59]);
    m.push(255);
    m.resize(m.len().max(300), 0);
    m
}

/// Parses a server's reply to `xid` from `mac`; anything else (other clients' replies,
/// truncated or malformed packets) is `None`.
pub fn parse(buf: &[u8], xid: u32, mac: [u8; 6]) -> Option<Reply> {
    if buf.len() < FIXED + 4 || buf[0] != 2 || buf[4..8] != xid.to_be_bytes() || buf[28..34] != mac
    {
        return None;
    }
    if buf[FIXED..FIXED + 4] != MAGIC {
        return None;
    }
    let addr = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let mut r = Reply {
        kind: 0,
        address: addr(&buf[16..20]),
        server: None,
        prefix: None,
        router: None,
        dns: Vec::new(),
        domain: None,
        lease_secs: None,
        renew_secs: None,
        rebind_secs: None,
    };
    let mut i = FIXED + 4;
    while i < buf.len() {
        let code = buf[i];
        if code == 0 {
            i += 1;
            continue;
        }
        if code == 255 {
            break;
        }
        let len = usize::from(*buf.get(i + 1)?);
        let data = buf.get(i + 2..i + 2 + len)?;
        option(&mut r, code, data);
        i += 2 + len;
    }
    (r.kind != 0).then_some(r)
}

fn option(r: &mut Reply, code: u8, data: &[u8]) {
    let ip = |b: &[u8]| Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    match (code, data.len()) {
        (53, 1) => r.kind = data[0],
        (54, 4) => r.server = Some(ip(data)),
        (1, 4) => {
            let mask = u32::from(ip(data));
            // Only contiguous masks are prefixes.
            if mask.leading_ones() + mask.trailing_zeros() == 32 {
                r.prefix = Some(mask.leading_ones() as u8);
            }
        }
        (3, n) if n >= 4 => r.router = Some(ip(data)),
        (6, n) if n >= 4 => r.dns = data.chunks_exact(4).map(ip).collect(),
        (15, n) if n > 0 => {
            r.domain = std::str::from_utf8(data)
                .ok()
                .map(|d| d.trim_end_matches('\0').to_string())
                .filter(|d| {
                    d.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                })
        }
        (51, 4) => r.lease_secs = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
        (58, 4) => r.renew_secs = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
        (59, 4) => r.rebind_secs = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]])),
        _ => {}
    }
}

/// A bound lease's schedule, in time since the ACK: renew from T1, rebind from T2, gone
/// at the end. `None` as the lease time is an infinite lease (never renewed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTimes {
    pub t1: Duration,
    pub t2: Duration,
    pub lease: Duration,
}

/// What a client does at some time since the ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing until this long from now.
    Wait(Duration),
    /// Send a REQUEST to the server (RENEWING), then wait this long for the ACK.
    Renew(Duration),
    /// Broadcast a REQUEST (REBINDING), then wait this long for the ACK.
    Rebind(Duration),
    /// The lease ended: give the address up and start over.
    Expired,
}

/// The shortest wait between two REQUESTs while renewing or rebinding (RFC 2131 §4.4.5
/// says 60 s; a short lease never waits past its next boundary).
const RETRANSMIT_MIN: Duration = Duration::from_secs(60);

impl LeaseTimes {
    /// The schedule of an ACK: T1 and T2 from options 58/59 when they are sane (T1 < T2 <
    /// lease), otherwise the defaults of 0.5 and 0.875 of the lease.
    pub fn of(reply: &Reply) -> Option<LeaseTimes> {
        let lease = reply.lease_secs.filter(|l| *l != u32::MAX)?;
        let lease_ms = u64::from(lease) * 1000;
        let (mut t1, mut t2) = (lease_ms / 2, lease_ms * 7 / 8);
        if let (Some(r), Some(b)) = (reply.renew_secs, reply.rebind_secs) {
            let (r, b) = (u64::from(r) * 1000, u64::from(b) * 1000);
            if r < b && b < lease_ms {
                (t1, t2) = (r, b);
            }
        }
        Some(LeaseTimes {
            t1: Duration::from_millis(t1),
            t2: Duration::from_millis(t2),
            lease: Duration::from_millis(lease_ms),
        })
    }

    /// What to do `elapsed` after the ACK.
    pub fn step(&self, elapsed: Duration) -> Step {
        let retransmit = |until: Duration| {
            let left = until.saturating_sub(elapsed);
            (left / 2).max(RETRANSMIT_MIN).min(left)
        };
        if elapsed < self.t1 {
            Step::Wait(self.t1 - elapsed)
        } else if elapsed < self.t2 {
            Step::Renew(retransmit(self.t2))
        } else if elapsed < self.lease {
            Step::Rebind(retransmit(self.lease))
        } else {
            Step::Expired
        }
    }
}

/// Parses `02:00:00:00:00:01`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];

    /// A server reply as dnsmasq builds it, from the client's request.
    fn reply(req: &[u8], kind: u8, opts: &[(u8, &[u8])]) -> Vec<u8> {
        let mut m = req[..FIXED].to_vec();
        m[0] = 2;
        m[16..20].copy_from_slice(&[10, 177, 0, 42]);
        m.extend_from_slice(&MAGIC);
        m.extend_from_slice(&[53, 1, kind]);
        for (c, d) in opts {
            m.push(*c);
            m.push(d.len() as u8);
            m.extend_from_slice(d);
        }
        m.push(255);
        m
    }

    #[test]
    fn discover_and_request_carry_the_client_and_its_name() {
        let d = discover(0x1234_5678, MAC, "vm-one");
        assert!(d.len() >= 300);
        assert_eq!(&d[..3], &[1, 1, 6]);
        assert_eq!(&d[4..8], &[0x12, 0x34, 0x56, 0x78]);
        assert_eq!(d[10], 0x80, "broadcast flag");
        assert_eq!(&d[28..34], &MAC);
        assert_eq!(&d[236..243], &[99, 130, 83, 99, 53, 1, DISCOVER]);
        let name = d
            .windows(8)
            .position(|w| w == [12, 6, b'v', b'm', b'-', b'o', b'n', b'e']);
        assert!(name.is_some(), "hostname option");
        let r = request(
            1,
            MAC,
            "vm-one",
            Ipv4Addr::new(10, 177, 0, 42),
            Ipv4Addr::new(10, 177, 0, 1),
        );
        assert!(r.windows(6).any(|w| w == [50, 4, 10, 177, 0, 42]));
        assert!(r.windows(6).any(|w| w == [54, 4, 10, 177, 0, 1]));
    }

    #[test]
    fn replies_are_parsed_and_foreign_or_broken_ones_ignored() {
        let req = discover(9, MAC, "vm");
        let ack = reply(
            &req,
            ACK,
            &[
                (54, &[10, 177, 0, 1]),
                (1, &[255, 255, 255, 0]),
                (3, &[10, 177, 0, 1]),
                (6, &[10, 177, 0, 1, 9, 9, 9, 9]),
                (15, b"microvm"),
                (51, &[0, 0, 14, 16]),
            ],
        );
        let r = parse(&ack, 9, MAC).expect("ack");
        assert_eq!(r.kind, ACK);
        assert_eq!(r.address, Ipv4Addr::new(10, 177, 0, 42));
        assert_eq!(r.prefix, Some(24));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 177, 0, 1)));
        assert_eq!(r.dns.len(), 2);
        assert_eq!(r.domain.as_deref(), Some("microvm"));
        assert_eq!(r.lease_secs, Some(3600));
        assert!(parse(&ack, 10, MAC).is_none(), "other xid");
        assert!(parse(&ack, 9, [2, 0, 0, 0, 0, 8]).is_none(), "other client");
        assert!(parse(&ack[..ack.len() - 7], 9, MAC).is_some_and(|r| r.lease_secs.is_none()));
        let mut cut = ack.clone();
        cut.truncate(250);
        cut.extend_from_slice(&[6, 200, 1]);
        let _ = parse(&cut, 9, MAC); // an option running past the end is not a panic
        let odd = reply(&req, OFFER, &[(1, &[255, 0, 255, 0])]);
        assert_eq!(parse(&odd, 9, MAC).expect("offer").prefix, None);
        assert_eq!(parse_mac("02:00:00:00:00:07"), Some(MAC));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
    }

    #[test]
    fn an_extending_request_names_the_address_in_ciaddr_only() {
        let addr = Ipv4Addr::new(10, 177, 0, 42);
        let r = extend(5, MAC, "vm", addr);
        assert_eq!(&r[12..16], &[10, 177, 0, 42], "ciaddr");
        assert_eq!(r[10], 0, "no broadcast flag");
        assert!(r.windows(3).any(|w| w == [53, 1, REQUEST]));
        assert!(
            !r.windows(2).any(|w| w == [50, 4]),
            "no requested-address option"
        );
        assert!(!r.windows(2).any(|w| w == [54, 4]), "no server option");
    }

    fn lease(secs: u32, t1: Option<u32>, t2: Option<u32>) -> Reply {
        let req = discover(9, MAC, "vm");
        let mut opts: Vec<(u8, Vec<u8>)> = vec![(51, secs.to_be_bytes().to_vec())];
        opts.extend(t1.map(|t| (58, t.to_be_bytes().to_vec())));
        opts.extend(t2.map(|t| (59, t.to_be_bytes().to_vec())));
        let opts: Vec<(u8, &[u8])> = opts.iter().map(|(c, d)| (*c, d.as_slice())).collect();
        parse(&reply(&req, ACK, &opts), 9, MAC).expect("ack")
    }

    #[test]
    fn the_schedule_renews_at_t1_rebinds_at_t2_and_expires_at_the_end() {
        let s = |n: u64| Duration::from_secs(n);
        // dnsmasq's shortest lease, with the T1/T2 it sends.
        let t = LeaseTimes::of(&lease(120, Some(60), Some(105))).expect("times");
        assert_eq!((t.t1, t.t2, t.lease), (s(60), s(105), s(120)));
        assert_eq!(t.step(s(0)), Step::Wait(s(60)));
        assert_eq!(t.step(s(59)), Step::Wait(s(1)));
        assert_eq!(t.step(s(60)), Step::Renew(s(45)), "never past T2");
        assert_eq!(t.step(s(105)), Step::Rebind(s(15)), "never past the end");
        assert_eq!(t.step(s(120)), Step::Expired);
        // 12 h without T1/T2: the defaults, retransmissions at half the time left.
        let t = LeaseTimes::of(&lease(43200, None, None)).expect("times");
        assert_eq!((t.t1, t.t2), (s(21600), s(37800)));
        assert_eq!(t.step(s(21600)), Step::Renew(s(8100)));
        assert_eq!(t.step(s(37700)), Step::Renew(s(60)), "at least 60 s");
        assert_eq!(t.step(s(37790)), Step::Renew(s(10)));
        // T1/T2 out of order are ignored; an infinite lease or none is never renewed.
        let t = LeaseTimes::of(&lease(1000, Some(900), Some(100))).expect("times");
        assert_eq!((t.t1, t.t2), (s(500), s(875)));
        assert_eq!(LeaseTimes::of(&lease(u32::MAX, None, None)), None);
        let mut none = lease(100, None, None);
        none.lease_secs = None;
        assert_eq!(LeaseTimes::of(&none), None);
    }
}
