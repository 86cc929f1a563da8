//! `microvm vsock-proxy SOCKET PORT` (hidden): ssh's ProxyCommand for the hybrid vsock of
//! cloud-hypervisor and firecracker. It connects to the VM's Unix socket, asks for the
//! guest port with `CONNECT PORT\n`, waits for the `OK …` line, then relays stdin to
//! the guest and the guest to stdout until either side closes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use anyhow::{bail, Context as _};

/// The reply line is read at most this far.
const MAX_REPLY: usize = 128;

#[derive(Debug, clap::Args)]
pub struct VsockProxyArgs {
    /// The hypervisor's hybrid vsock Unix socket.
    pub socket: PathBuf,
    /// The guest's vsock port.
    pub port: u32,
}

pub fn vsock_proxy(args: &VsockProxyArgs) -> anyhow::Result<i32> {
    check_socket(&args.socket)?;
    let stream = connect(args)?;
    // Unbuffered ends: `Stdout` is line-buffered, and ssh's packets need not end a line.
    let raw = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(std::fs::File::from)
            .context("duplicating stdio")
    };
    use std::os::fd::AsFd as _;
    let input = raw(std::io::stdin().as_fd())?;
    let output = raw(std::io::stdout().as_fd())?;
    relay(stream, input, output)?;
    Ok(crate::exit::OK)
}

/// The hypervisor creates the socket in the VM directory, which its group may write:
/// only a socket itself is used, never a symlink to some other socket of the host.
pub fn check_socket(path: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt as _;
    let meta = std::fs::symlink_metadata(path).with_context(|| {
        format!(
            "the hybrid vsock socket {} is missing (is the VM running with vsock.cid?)",
            path.display()
        )
    })?;
    if !meta.file_type().is_socket() {
        bail!(
            "{} is not a socket (a symlink or a file); refusing it",
            path.display()
        );
    }
    Ok(())
}

/// Connects and completes the `CONNECT` handshake.
pub fn connect(args: &VsockProxyArgs) -> anyhow::Result<UnixStream> {
    let shown = args.socket.display();
    let mut s = UnixStream::connect(&args.socket)
        .with_context(|| format!("cannot connect to the hybrid vsock socket {shown}"))?;
    s.write_all(format!("CONNECT {}\n", args.port).as_bytes())
        .with_context(|| format!("cannot write to {shown}"))?;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < MAX_REPLY {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => {
                let text = String::from_utf8_lossy(&line);
                if text.starts_with("OK ") {
                    return Ok(s);
                }
                bail!(
                    "{shown}: the hypervisor refused CONNECT {}: {text:?}",
                    args.port
                );
            }
            Ok(_) => line.push(byte[0]),
            Err(e) => return Err(e).with_context(|| format!("cannot read from {shown}")),
        }
    }
    bail!(
        "{shown}: no answer to CONNECT {} (is something listening on vsock port {} in the guest?)",
        args.port,
        args.port
    )
}

/// Copies `input` to the stream (then half-closes it) and the stream to `output`; returns
/// when the guest side closes (the input thread is left to the process's exit: its read
/// may block for ever).
pub fn relay(
    stream: UnixStream,
    mut input: impl Read + Send + 'static,
    mut output: impl Write,
) -> anyhow::Result<()> {
    let mut writer = stream.try_clone().context("cloning the vsock stream")?;
    let mut reader = stream;
    std::thread::spawn(move || {
        let _ = pump(&mut input, &mut writer);
        let _ = writer.shutdown(std::net::Shutdown::Write);
    });
    pump(&mut reader, &mut output).context("relaying from the guest")
}

/// Copies until end of file, each read passed on at once. Not `std::io::copy`: between
/// ssh's pipes and the socket it held data back, and the session stalled after the key
/// exchange (seen with real ssh, tests/ssh.rs).
fn pump(from: &mut impl Read, to: &mut impl Write) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return to.flush(),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
