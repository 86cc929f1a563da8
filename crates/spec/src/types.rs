//! Value types of the schema: each one parses from its string form and refuses what
//! the kernel or a hypervisor would refuse later.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a value was refused; the loader attaches file, line and key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

macro_rules! string_newtype {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $name {
            type Error = InvalidValue;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                value.parse()
            }
        }
        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0
            }
        }
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// A VM name: used as a directory name, a unit instance name and a process name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);
string_newtype!(VmName);

impl FromStr for VmName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        const MAX: usize = 64;
        if s.is_empty() {
            return Err(InvalidValue("a VM name cannot be empty".into()));
        }
        if s.len() > MAX {
            return Err(InvalidValue(format!(
                "VM name {s:?} is {} bytes long; the limit is {MAX}",
                s.len()
            )));
        }
        if s == "." || s == ".." || s.starts_with('-') || s.starts_with('.') {
            return Err(InvalidValue(format!(
                "VM name {s:?} cannot start with '.' or '-'"
            )));
        }
        if let Some(bad) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(InvalidValue(format!(
                "VM name {s:?} contains {bad:?}; use letters, digits, '-', '_' and '.'"
            )));
        }
        Ok(VmName(s.to_owned()))
    }
}

/// A Linux network interface name (at most 15 bytes, no '/', whitespace or ':').
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IfName(String);
string_newtype!(IfName);

impl FromStr for IfName {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(InvalidValue("an interface name cannot be empty".into()));
        }
        if s.len() > 15 {
            return Err(InvalidValue(format!(
                "interface name {s} is longer than the maximum length of 15 characters on Linux"
            )));
        }
        if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            return Err(InvalidValue(format!(
                "interface name {s:?} is not valid on Linux (no '/', ':' or whitespace)"
            )));
        }
        Ok(IfName(s.to_owned()))
    }
}

/// A unicast Ethernet MAC address, normalised to lowercase `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_locally_administered(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl FromStr for MacAddr {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidValue(format!("{s:?} is not a MAC address like 02:00:00:00:00:01"));
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut out = [0u8; 6];
        for (slot, part) in out.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if out[0] & 0x01 != 0 {
            return Err(InvalidValue(format!(
                "MAC address {s} is a multicast address; a NIC needs a unicast one (the lowest bit of the first byte clear, e.g. 02:…)"
            )));
        }
        if out == [0; 6] {
            return Err(InvalidValue(
                "MAC address 00:00:00:00:00:00 is not usable".into(),
            ));
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}
impl TryFrom<String> for MacAddr {
    type Error = InvalidValue;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}
impl From<MacAddr> for String {
    fn from(value: MacAddr) -> String {
        value.to_string()
    }
}

/// A guest vsock context id: 0, 1 and 2 are reserved (hypervisor, local, host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct VsockCid(pub u32);

impl TryFrom<u64> for VsockCid {
    type Error = InvalidValue;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        match value {
            0..=2 => Err(InvalidValue(format!(
                "vsock CID {value} is reserved (0: hypervisor, 1: loopback, 2: host); use 3 or higher"
            ))),
            v if v >= u64::from(u32::MAX) => Err(InvalidValue(format!(
                "vsock CID {value} is out of range (3 to {})",
                u32::MAX - 1
            ))),
            v => Ok(VsockCid(v as u32)),
        }
    }
}
impl From<VsockCid> for u64 {
    fn from(value: VsockCid) -> u64 {
        u64::from(value.0)
    }
}
impl fmt::Display for VsockCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The seven hypervisors (plus vfkit, which is macOS-only and refused on Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Hypervisor {
    Qemu,
    CloudHypervisor,
    Firecracker,
    Crosvm,
    Kvmtool,
    Stratovirt,
    Alioth,
    Vfkit,
}

impl Hypervisor {
    /// The seven Linux hypervisors, in the original's order.
    pub const LINUX: [Hypervisor; 7] = [
        Hypervisor::Qemu,
        Hypervisor::CloudHypervisor,
        Hypervisor::Firecracker,
        Hypervisor::Crosvm,
        Hypervisor::Kvmtool,
        Hypervisor::Stratovirt,
        Hypervisor::Alioth,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hypervisor::Qemu => "qemu",
            Hypervisor::CloudHypervisor => "cloud-hypervisor",
            Hypervisor::Firecracker => "firecracker",
            Hypervisor::Crosvm => "crosvm",
            Hypervisor::Kvmtool => "kvmtool",
            Hypervisor::Stratovirt => "stratovirt",
            Hypervisor::Alioth => "alioth",
            Hypervisor::Vfkit => "vfkit",
        }
    }
}

impl fmt::Display for Hypervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Hypervisor {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Hypervisor::LINUX
            .iter()
            .chain(&[Hypervisor::Vfkit])
            .copied()
            .find(|h| h.name() == s)
            .ok_or_else(|| {
                InvalidValue(format!(
                    "unknown hypervisor {s:?}; expected one of qemu, cloud-hypervisor, firecracker, crosvm, kvmtool, stratovirt, alioth"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses() {
        assert_eq!(
            "02:00:00:00:00:0A"
                .parse::<MacAddr>()
                .map(|m| m.to_string()),
            Ok("02:00:00:00:00:0a".to_string())
        );
        assert!("01:00:5e:00:00:01".parse::<MacAddr>().is_err(), "multicast");
        assert!("02:00:00:00:00".parse::<MacAddr>().is_err());
        assert!("02:00:00:00:00:zz".parse::<MacAddr>().is_err());
        assert!("00:00:00:00:00:00".parse::<MacAddr>().is_err());
    }

    #[test]
    fn names() {
        assert!("vm1".parse::<VmName>().is_ok());
        for bad in ["", "a/b", "..", ".x", "a b", &"x".repeat(65), "-x"] {
            assert!(bad.parse::<VmName>().is_err(), "{bad:?}");
        }
        assert!("vm-0123456789ab".parse::<IfName>().is_ok());
        assert!("vm-0123456789abc".parse::<IfName>().is_err());
        assert!("a/b".parse::<IfName>().is_err());
    }

    #[test]
    fn cids() {
        for bad in [0u64, 1, 2, u64::from(u32::MAX), u64::MAX] {
            assert!(VsockCid::try_from(bad).is_err(), "{bad}");
        }
        assert_eq!(VsockCid::try_from(3), Ok(VsockCid(3)));
    }
}
