//! `sd_notify(3)` without libsystemd: one datagram to `$NOTIFY_SOCKET` (a path, or an
//! abstract socket when it starts with `@`).

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1\nSTATUS=running`) if `NOTIFY_SOCKET` is set. Returns
/// whether a message was sent; errors are returned, never fatal to the caller.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    send_to(&path, state)?;
    Ok(true)
}

pub(crate) fn send_to(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let bytes = path.as_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(path))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn sends_a_datagram_to_a_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        super::send_to(path.as_os_str(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }
}
