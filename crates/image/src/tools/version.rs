//! A comparable `major.minor.patch` version, parsed from tool output or a kernel release.

use std::fmt;
use std::str::FromStr;

/// `major.minor.patch`; missing parts are 0, trailing text (`-18-amd64`, `+deb12`) is
/// ignored, so `6.1.0-18-amd64` and `1.5` both parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, thiserror::Error)]
#[error("invalid version {input:?}: expected <major>[.<minor>[.<patch>]]")]
pub struct VersionError {
    pub input: String,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// The first version number in `text`: the first whitespace-separated token that
    /// starts with a digit and contains a dot (`mkfs.erofs 1.5`, `mksquashfs version
    /// 4.5.1 (2022/03/17)`, `mkfs.erofs (erofs-utils) 1.8.6`).
    pub fn find_in(text: &str) -> Option<Self> {
        text.split_whitespace()
            .filter(|t| t.starts_with(|c: char| c.is_ascii_digit()) && t.contains('.'))
            .find_map(|t| t.parse().ok())
    }
}

impl FromStr for Version {
    type Err = VersionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || VersionError {
            input: s.to_owned(),
        };
        let end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let mut parts = s[..end].split('.');
        let mut next = |required: bool| -> Result<u32, VersionError> {
            match parts.next() {
                Some(p) if !p.is_empty() => p.parse().map_err(|_| err()),
                Some(_) => Err(err()),
                None if required => Err(err()),
                None => Ok(0),
            }
        };
        let v = Version {
            major: next(true)?,
            minor: next(false)?,
            patch: next(false)?,
        };
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
    fn parses_tool_and_kernel_versions() {
        assert_eq!("1.5".parse::<Version>().ok(), Some(Version::new(1, 5, 0)));
        assert_eq!("4.5.1".parse::<Version>().ok(), Some(Version::new(4, 5, 1)));
        assert_eq!(
            "6.1.0-18-amd64".parse::<Version>().ok(),
            Some(Version::new(6, 1, 0))
        );
        assert_eq!(
            "6.12.117+deb12".parse::<Version>().ok(),
            Some(Version::new(6, 12, 117))
        );
        assert!("".parse::<Version>().is_err());
        assert!("x1".parse::<Version>().is_err());
        assert!("1..2".parse::<Version>().is_err());
    }

    #[test]
    fn finds_version_in_tool_output() {
        assert_eq!(
            Version::find_in("mkfs.erofs 1.5\nusage: …"),
            Some(Version::new(1, 5, 0))
        );
        let sq = "mksquashfs version 4.5.1 (2022/03/17)\ncopyright (C) 2022";
        assert_eq!(Version::find_in(sq), Some(Version::new(4, 5, 1)));
        let new = "mkfs.erofs (erofs-utils) 1.8.6";
        assert_eq!(Version::find_in(new), Some(Version::new(1, 8, 6)));
        assert_eq!(Version::find_in("no digits here"), None);
    }

    #[test]
    fn orders_numerically() {
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 9));
        assert!(Version::new(5, 16, 0) > Version::new(5, 15, 120));
    }
}
