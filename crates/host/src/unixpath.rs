//! Unix sockets whose paths are longer than `sockaddr_un` allows (108 bytes): a VM's
//! working directory can be deep (`/var/lib/microvms/<name>/`, a test's temp dir), while
//! the hypervisor, started in that directory, uses a short relative path.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A path to `socket` that fits in `sockaddr_un`: the path itself when short enough, else
/// `/proc/self/fd/N/NAME` through an open handle on its directory (kept alive by the
/// returned file, which must outlive the use of the path).
pub fn short_socket_path(socket: &Path) -> io::Result<(Option<File>, PathBuf)> {
    if socket.as_os_str().len() < 100 {
        return Ok((None, socket.to_path_buf()));
    }
    let (Some(parent), Some(name)) = (socket.parent(), socket.file_name()) else {
        return Ok((None, socket.to_path_buf()));
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(parent)?;
    let short = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
    .join(name);
    Ok((Some(dir), short))
}

/// `UnixStream::connect` for a path of any length.
pub fn connect(socket: &Path) -> io::Result<UnixStream> {
    let (_dir, short) = short_socket_path(socket)?;
    UnixStream::connect(short)
}

/// `UnixListener::bind` for a path of any length.
pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    let (_dir, short) = short_socket_path(socket)?;
    UnixListener::bind(short)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_bind_and_connect() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let deep = tmp.path().join("a".repeat(60)).join("b".repeat(60));
        std::fs::create_dir_all(&deep).expect("mkdir");
        let sock = deep.join("vm-with-a-long-name-ctl.sock");
        assert!(sock.as_os_str().len() > 108);
        let _listener = bind(&sock).expect("bind");
        connect(&sock).expect("connect");
    }
}
