//! Hypervisor versions, to choose version-dependent syntax.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// A `major.minor.patch` version; missing parts are 0. Compared numerically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Finds the first `N[.N[.N]]` in a tool's `--version` output (`cloud-hypervisor v53.0`,
    /// `Firecracker v1.13.1`, `crosvm 0.1.0`, `QEMU emulator version 10.0.2`).
    pub fn find_in(text: &str) -> Option<Version> {
        text.split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .find_map(|w| w.trim_end_matches('.').parse().ok())
    }
}

impl FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().trim_start_matches('v');
        let mut parts = t.split('.');
        let mut next = |required: bool| -> Result<u32, String> {
            match parts.next() {
                Some(p) => p
                    .parse()
                    .map_err(|_| format!("{s:?} is not a version like 1.2.3")),
                None if required => Err(format!("{s:?} is not a version like 1.2.3")),
                None => Ok(0),
            }
        };
        let v = Version {
            major: next(true)?,
            minor: next(false)?,
            patch: next(false)?,
        };
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a version like 1.2.3"));
        }
        Ok(v)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds() {
        assert_eq!("36.0".parse(), Ok(Version::new(36, 0, 0)));
        assert_eq!("v1.13.1".parse(), Ok(Version::new(1, 13, 1)));
        assert!("x".parse::<Version>().is_err());
        assert_eq!(
            Version::find_in("cloud-hypervisor v53.0.0-dirty"),
            Some(Version::new(53, 0, 0))
        );
        assert_eq!(
            Version::find_in("QEMU emulator version 10.0.2 (Debian)"),
            Some(Version::new(10, 0, 2))
        );
        assert!(Version::new(107, 1, 0) > Version::new(107, 0, 9));
    }
}
