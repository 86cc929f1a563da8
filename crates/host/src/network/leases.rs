//! dnsmasq's lease file: one lease a line, `EXPIRY MAC IP HOSTNAME CLIENT-ID`
//! (`*` for an unknown hostname or client id).

use std::fs;
use std::io::Read as _;
use std::net::IpAddr;
use std::path::Path;

use super::{io_err, NetworkError};

/// The lease file is read at most this far (a /16 pool's leases fit many times over).
const MAX_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    /// Seconds since the epoch when the lease ends (0: never).
    pub expires: u64,
    pub mac: String,
    pub ip: IpAddr,
    pub hostname: Option<String>,
}

/// Parses the lease file; a missing file has no leases, malformed lines are skipped.
pub fn read(path: &Path) -> Result<Vec<Lease>, NetworkError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    let mut text = String::new();
    file.take(MAX_BYTES)
        .read_to_string(&mut text)
        .map_err(io_err("read", path))?;
    Ok(text.lines().filter_map(parse_line).collect())
}

fn parse_line(line: &str) -> Option<Lease> {
    let mut f = line.split_whitespace();
    let expires = f.next()?.parse().ok()?;
    let mac = f.next()?.to_string();
    let ip = f.next()?.parse().ok()?;
    let hostname = f.next().filter(|h| *h != "*").map(str::to_string);
    Some(Lease {
        expires,
        mac,
        ip,
        hostname,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_lines_parse_and_bad_ones_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        assert!(read(&path).expect("missing").is_empty());
        fs::write(
            &path,
            "1700000000 02:00:00:00:00:01 10.177.0.23 vm1 01:02:00:00:00:00:01\n\
             garbage\n1700000001 02:00:00:00:00:02 10.177.0.24 * *\n",
        )
        .expect("write");
        let l = read(&path).expect("read");
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].hostname.as_deref(), Some("vm1"));
        assert_eq!(l[1].ip.to_string(), "10.177.0.24");
        assert_eq!(l[1].hostname, None);
    }
}
