//! A network's configuration: its name, bridge, IPv4 (and optional IPv6) subnet, NAT,
//! DNS domain and DHCP lease time.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NetworkError;

/// The network `host install` creates and `network create` makes without a name.
pub const DEFAULT_NETWORK: &str = "microvm0";
/// Its subnet: the host is `.1`, DHCP hands out `.10`–`.250`.
pub const DEFAULT_SUBNET: &str = "10.177.0.1/24";

/// A network's name: 1–15 of `a-z 0-9 -`, starting with a letter (it is also the default
/// bridge name, and Linux interface names have at most 15 bytes).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NetworkName(String);

impl NetworkName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn check_ifname(what: &str, s: &str) -> Result<(), NetworkError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NetworkError::Invalid(format!(
            "{what} {s:?} must be 1 to 15 of a-z, 0-9 and -, starting with a letter"
        )))
    }
}

impl FromStr for NetworkName {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        check_ifname("network name", s)?;
        Ok(NetworkName(s.to_string()))
    }
}

impl TryFrom<String> for NetworkName {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, NetworkError> {
        s.parse()
    }
}

impl From<NetworkName> for String {
    fn from(n: NetworkName) -> String {
        n.0
    }
}

impl fmt::Display for NetworkName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The host's address on the bridge and the prefix length: `10.177.0.1/24`. Prefixes
/// from /16 to /29 (a DHCP range needs room; larger pools are not useful for VMs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Subnet {
    pub host: Ipv4Addr,
    pub prefix: u8,
}

impl Ipv4Subnet {
    fn mask(self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix))
    }

    /// The network address (`10.177.0.0`).
    pub fn network(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.host) & self.mask())
    }

    /// The netmask (`255.255.255.0`).
    pub fn netmask(self) -> Ipv4Addr {
        Ipv4Addr::from(self.mask())
    }

    /// The DHCP pool: from network + 10 (network + 2 on small subnets) to broadcast − 5
    /// (broadcast − 1), excluding nothing else; the host's own address is never handed
    /// out by dnsmasq.
    pub fn dhcp_range(self) -> (Ipv4Addr, Ipv4Addr) {
        let net = u32::from(self.network());
        let bcast = net | !self.mask();
        let (lo, hi) = if self.prefix <= 26 { (10, 5) } else { (2, 1) };
        (Ipv4Addr::from(net + lo), Ipv4Addr::from(bcast - hi))
    }

    /// Whether `addr` is inside the subnet.
    pub fn contains(self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & self.mask() == u32::from(self.network())
    }
}

impl FromStr for Ipv4Subnet {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let bad = || {
            NetworkError::Invalid(format!(
                "subnet {s:?} must be the host's address and a prefix from 16 to 29, like {DEFAULT_SUBNET}"
            ))
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(bad)?;
        let host: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=29).contains(&prefix) {
            return Err(bad());
        }
        let subnet = Ipv4Subnet { host, prefix };
        let bits = u32::from(host) & !subnet.mask();
        if bits == 0 || bits == !subnet.mask() {
            return Err(NetworkError::Invalid(format!(
                "subnet {s:?}: the host's address cannot be the network or broadcast address"
            )));
        }
        if !host.is_private() {
            return Err(NetworkError::Invalid(format!(
                "subnet {s:?} is not a private range (10/8, 172.16/12, 192.168/16)"
            )));
        }
        Ok(subnet)
    }
}

impl TryFrom<String> for Ipv4Subnet {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, NetworkError> {
        s.parse()
    }
}

impl From<Ipv4Subnet> for String {
    fn from(s: Ipv4Subnet) -> String {
        s.to_string()
    }
}

impl fmt::Display for Ipv4Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.prefix)
    }
}

/// The host's IPv6 address on the bridge, in a /64 (what SLAAC needs): `fd77:0:0:1::1/64`.
/// Unicast only (not link-local, multicast, loopback or unspecified).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv6Subnet {
    pub host: Ipv6Addr,
}

impl Ipv6Subnet {
    pub const PREFIX: u8 = 64;

    /// The prefix's network address (`fd77:0:0:1::`).
    pub fn network(self) -> Ipv6Addr {
        let bits = u128::from(self.host) & (u128::MAX << 64);
        Ipv6Addr::from(bits)
    }
}

impl FromStr for Ipv6Subnet {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let bad = |why: &str| {
            NetworkError::Invalid(format!(
                "IPv6 subnet {s:?} {why} (the host's address and /64, like fd77:0:0:1::1/64)"
            ))
        };
        let (addr, prefix) = s.split_once('/').ok_or_else(|| bad("has no prefix"))?;
        let host: Ipv6Addr = addr.parse().map_err(|_| bad("is not an IPv6 address"))?;
        if prefix != "64" {
            return Err(bad("must be a /64"));
        }
        let bits = u128::from(host);
        let link_local = bits >> 118 == 0x3fa; // fe80::/10
        if host.is_unspecified() || host.is_loopback() || host.is_multicast() || link_local {
            return Err(bad("is not a unicast address"));
        }
        if bits & u128::from(u64::MAX) == 0 {
            return Err(bad("names the prefix, not a host in it"));
        }
        Ok(Ipv6Subnet { host })
    }
}

impl TryFrom<String> for Ipv6Subnet {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, NetworkError> {
        s.parse()
    }
}

impl From<Ipv6Subnet> for String {
    fn from(s: Ipv6Subnet) -> String {
        s.to_string()
    }
}

impl fmt::Display for Ipv6Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, Self::PREFIX)
    }
}

/// The default DHCP lease time (12 h).
pub const DEFAULT_LEASE_SECS: u32 = 12 * 3600;
/// dnsmasq's shortest lease (2 min) and a year as the longest.
pub const LEASE_SECS_RANGE: std::ops::RangeInclusive<u32> = 120..=365 * 24 * 3600;

fn default_lease_secs() -> u32 {
    DEFAULT_LEASE_SECS
}

/// Parses a lease time: seconds, or a number with `s`, `m`, `h` or `d` (`2m`, `12h`).
pub fn parse_lease_time(s: &str) -> Result<u32, NetworkError> {
    let bad = || {
        NetworkError::Invalid(format!(
            "lease time {s:?} must be from 2m to 365d (seconds, or a number with s, m, h or d)"
        ))
    };
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    u32::try_from(n.saturating_mul(scale))
        .ok()
        .filter(|secs| LEASE_SECS_RANGE.contains(secs))
        .ok_or_else(bad)
}

/// One network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NetworkConfig {
    pub name: NetworkName,
    /// The bridge's name (default: the network's name).
    pub bridge: String,
    pub ipv4: Ipv4Subnet,
    /// Masquerade traffic from the subnet to other networks.
    pub nat: bool,
    /// Only masquerade towards this interface (default: any but the bridge).
    pub uplink: Option<String>,
    /// The DNS domain of the VMs' names (`NAME.DOMAIN`), default `microvm`.
    pub domain: String,
    /// An IPv6 /64 on the bridge: router advertisements (SLAAC) and stateless DHCPv6
    /// from dnsmasq, masquerade (NAT66) with `nat`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Subnet>,
    /// The DHCP lease time in seconds (default 12 h; 2 min to 365 days).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
}

impl NetworkConfig {
    /// A network with the defaults: bridge = name, NAT on, domain `microvm`.
    pub fn new(name: NetworkName, ipv4: Ipv4Subnet) -> NetworkConfig {
        NetworkConfig {
            bridge: name.as_str().to_string(),
            name,
            ipv4,
            nat: true,
            uplink: None,
            domain: "microvm".into(),
            ipv6: None,
            lease_secs: DEFAULT_LEASE_SECS,
        }
    }

    pub fn validate(&self) -> Result<(), NetworkError> {
        check_ifname("bridge", &self.bridge)?;
        if !LEASE_SECS_RANGE.contains(&self.lease_secs) {
            return Err(NetworkError::Invalid(format!(
                "lease time {} s is not from 120 s (dnsmasq's shortest) to 365 days",
                self.lease_secs
            )));
        }
        if let Some(up) = &self.uplink {
            let ok = !up.is_empty()
                && up.len() <= 15
                && up
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b));
            if !ok || *up == self.bridge {
                return Err(NetworkError::Invalid(format!(
                    "uplink {up:?} is not an interface name other than the bridge"
                )));
            }
        }
        let label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        };
        if self.domain.len() > 253 || !self.domain.split('.').all(label) {
            return Err(NetworkError::Invalid(format!(
                "domain {:?} is not a DNS name",
                self.domain
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_give_a_dhcp_range() {
        let s: Ipv4Subnet = DEFAULT_SUBNET.parse().expect("default");
        assert_eq!(s.network(), Ipv4Addr::new(10, 177, 0, 0));
        assert_eq!(s.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(
            s.dhcp_range(),
            (
                Ipv4Addr::new(10, 177, 0, 10),
                Ipv4Addr::new(10, 177, 0, 250)
            )
        );
        let small: Ipv4Subnet = "192.168.5.1/29".parse().expect("small");
        assert_eq!(
            small.dhcp_range(),
            (Ipv4Addr::new(192, 168, 5, 2), Ipv4Addr::new(192, 168, 5, 6))
        );
        assert!(s.contains(Ipv4Addr::new(10, 177, 0, 99)));
        assert!(!s.contains(Ipv4Addr::new(10, 178, 0, 1)));
        for bad in [
            "10.0.0.1",
            "10.0.0.1/8",
            "10.0.0.0/24",
            "10.0.0.255/24",
            "8.8.8.1/24",
            "x/24",
        ] {
            assert!(bad.parse::<Ipv4Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ipv6_subnets_are_a_host_in_a_unicast_64() {
        let s: Ipv6Subnet = "fd77:0:0:1::1/64".parse().expect("ula");
        assert_eq!(
            s.network(),
            "fd77:0:0:1::".parse::<Ipv6Addr>().expect("net")
        );
        assert_eq!(s.to_string(), "fd77:0:0:1::1/64");
        for bad in [
            "fd77::1",
            "fd77::1/48",
            "fd77:0:0:1::/64",
            "fe80::1/64",
            "ff02::1/64",
            "::1/64",
            "x/64",
        ] {
            assert!(bad.parse::<Ipv6Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lease_times_parse_within_dnsmasqs_range() {
        assert_eq!(parse_lease_time("2m").expect("2m"), 120);
        assert_eq!(parse_lease_time("12h").expect("12h"), 43200);
        assert_eq!(parse_lease_time("300").expect("300"), 300);
        for bad in ["1m", "119", "366d", "5x", "", "m", "99999999999999999999d"] {
            assert!(parse_lease_time(bad).is_err(), "{bad:?}");
        }
        let old: NetworkConfig = serde_json::from_str(
            r#"{"name":"n","bridge":"n","ipv4":"10.1.0.1/24","nat":true,"uplink":null,"domain":"microvm"}"#,
        )
        .expect("a record written before IPv6 and lease times");
        assert_eq!((old.ipv6, old.lease_secs), (None, DEFAULT_LEASE_SECS));
    }

    #[test]
    fn names_are_interface_names() {
        assert!("microvm0".parse::<NetworkName>().is_ok());
        for bad in ["", "0net", "Net", "a_b", "abcdefghijklmnop", "a b", "../x"] {
            assert!(bad.parse::<NetworkName>().is_err(), "{bad:?}");
        }
        let mut c = NetworkConfig::new(
            "n1".parse().expect("name"),
            DEFAULT_SUBNET.parse().expect("subnet"),
        );
        assert!(c.validate().is_ok());
        c.uplink = Some("n1".into());
        assert!(c.validate().is_err(), "uplink = bridge");
        c.uplink = Some("eth0".into());
        c.domain = "bad domain".into();
        assert!(c.validate().is_err());
    }
}
