//! `microvm ssh NAME [-- CMD...]`: runs the real `ssh` (openssh-client) into a running
//! managed VM as root, with the keys its definition authorizes (`ssh.*`), and exits with
//! the remote command's status (ssh's own 255 when it cannot connect).
//!
//! The transport ([`target`]): vsock when the definition enables `vsock.ssh` (AF_VSOCK
//! through `socat` for vhost-vsock hypervisors, the hybrid vsock Unix socket through
//! `microvm vsock-proxy` for cloud-hypervisor and firecracker); otherwise the VM's
//! address, a static one from the definition or its lease on a microvm network.
//!
//! Host keys are checked for real, in `<state>/NAME/ssh/known_hosts` (a 0700 directory
//! of root's) under the alias `microvm-NAME`: it holds the host keys the root disk was
//! built with (`/etc/ssh/ssh_host_*_key.pub`, recorded beside the disk), and only those
//! are accepted; a root without them gets trust on first use instead: the first
//! connection records the key the guest offers (`StrictHostKeyChecking=accept-new`) and
//! every later one must match it. No other known_hosts file is consulted
//! (docs/network.md#ssh).

mod proxy;
mod target;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use microvm_host::network::{Networks, Tools};
use microvm_runner::quote::shell_quote;

pub use proxy::{vsock_proxy, VsockProxyArgs};
pub use target::{addresses, RunnerView, Target};

/// The guest user `microvm ssh` logs in as (the one whose keys the init installs).
const USER: &str = "root";
/// Where the guest's sshd listens, on vsock and on the network.
pub const SSH_PORT: u32 = 22;

#[derive(Debug, clap::Args)]
pub struct SshArgs {
    /// The managed VM.
    pub name: String,
    /// The private key to log in with (default: ssh's own, ~/.ssh/id_* and the agent).
    #[arg(short = 'i', long = "identity", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// An extra ssh option (`-o KEY=VALUE`), may be repeated.
    #[arg(short = 'o', value_name = "KEY=VALUE")]
    pub options: Vec<String>,
    /// Print the ssh command line instead of running it.
    #[arg(long)]
    pub print: bool,
    /// The command to run in the guest, as an argv (each word reaches the guest as one
    /// argument); without one, an interactive login shell.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn ssh(state_root: &Path, args: &SshArgs) -> anyhow::Result<i32> {
    let (_, name, vm) = super::service::vm_dir(state_root, &args.name)?;
    let status = vm.live_status()?;
    let runner = vm
        .booted()
        .or_else(|| status.as_ref().and_then(|s| s.runner.clone()))
        .or_else(|| vm.current())
        .with_context(|| format!("{name} has no runner (build it: microvm update {name})"))?;
    let view = RunnerView::read(&runner)?;
    if !view.has_keys() {
        bail!(
            "{name} has no ssh keys: its definition sets neither ssh.authorizedKeys nor \
             ssh.authorizedKeyFiles (docs/network.md#ssh), so no key can log in as root"
        );
    }
    match status.as_ref().map(|s| &s.state) {
        Some(s) if s.is_live() => {}
        Some(s) => bail!(
            "{name} is not running (it is {}); start it with: microvm start {name}",
            s.name()
        ),
        None => bail!("{name} is not running (never started); start it with: microvm start {name}"),
    }
    let leases = Networks::new(state_root, Tools::system())
        .all_leases()
        .unwrap_or_default();
    let target = view.target(vm.path(), &leases).ok_or_else(|| {
        anyhow::anyhow!(
            "{name} has no address: no lease on a microvm network and no static address \
             in its definition (give it a tap on a network with dhcp = true, a static \
             address, or vsock.ssh.enable with vsock.cid)"
        )
    })?;
    if let Target::HybridVsock { socket } = &target {
        proxy::check_socket(socket)?;
    }
    let (known_hosts, host_keys_known) = known_hosts(vm.path(), name.as_str(), &runner)?;
    let exe = std::env::current_exe().context("locating the microvm binary")?;
    let argv = ssh_argv(&Invocation {
        name: name.as_str(),
        known_hosts: &known_hosts,
        host_keys_known,
        target: &target,
        microvm: &exe,
        identity: args.identity.as_deref(),
        options: &args.options,
        command: &args.command,
    })?;
    if args.print {
        let words: Vec<String> = argv
            .iter()
            .map(|w| w.to_string_lossy().into_owned())
            .collect();
        println!(
            "{}",
            microvm_runner::quote::shell_join(&words[0], &words[1..])
        );
        return Ok(crate::exit::OK);
    }
    let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
    if err.kind() == std::io::ErrorKind::NotFound {
        bail!("ssh is not installed (package openssh-client)");
    }
    Err(err).context("running ssh")
}

/// The VM's known_hosts, in a directory of its own (the VM directory is writable by the
/// hypervisors' group, which must not plant the file, or a symlink that root's ssh
/// would append to), filled with the root disk's host keys when it has them (`true`).
fn known_hosts(vm_dir: &Path, name: &str, runner: &Path) -> anyhow::Result<(PathBuf, bool)> {
    let private = vm_dir.join("ssh");
    microvm_host::trust::private_dir(&private)?;
    let path = private.join("known_hosts");
    let host_keys = root_host_keys(runner);
    if !host_keys.is_empty() {
        write_known_hosts(&path, name, &host_keys)?;
    }
    Ok((path, !host_keys.is_empty()))
}

/// What one `ssh` command line is made of.
pub struct Invocation<'a> {
    pub name: &'a str,
    pub known_hosts: &'a Path,
    /// Whether `known_hosts` holds the root disk's host keys (then only they are
    /// accepted); otherwise the first key the guest offers is recorded.
    pub host_keys_known: bool,
    pub target: &'a Target,
    /// This binary, for the hybrid vsock proxy.
    pub microvm: &'a Path,
    pub identity: Option<&'a Path>,
    pub options: &'a [String],
    pub command: &'a [String],
}

/// The argv of `ssh` (no shell involved, except ssh's own for a ProxyCommand, whose
/// words are quoted here).
pub fn ssh_argv(inv: &Invocation<'_>) -> anyhow::Result<Vec<OsString>> {
    let mut argv: Vec<OsString> = vec!["ssh".into()];
    let mut opt = |kv: String| {
        argv.push("-o".into());
        argv.push(kv.into());
    };
    opt(format!(
        "UserKnownHostsFile={}",
        config_value(inv.known_hosts)?
    ));
    opt("GlobalKnownHostsFile=none".into());
    opt(format!(
        "StrictHostKeyChecking={}",
        if inv.host_keys_known {
            "yes"
        } else {
            "accept-new"
        }
    ));
    opt(format!("HostKeyAlias=microvm-{}", inv.name));
    opt("CheckHostIP=no".into());
    // Debian's ssh_config hashes host names; this file is the VM's alone.
    opt("HashKnownHosts=no".into());
    let host = match inv.target {
        Target::Address(ip) => ip.to_string(),
        Target::Vsock { .. } | Target::HybridVsock { .. } => {
            opt(format!("ProxyCommand={}", proxy_command(inv)?));
            format!("microvm-{}", inv.name)
        }
    };
    if let Some(id) = inv.identity {
        opt("IdentitiesOnly=yes".into());
        argv.push("-i".into());
        argv.push(config_value(id)?.into());
    }
    for o in inv.options {
        argv.push("-o".into());
        argv.push(o.into());
    }
    argv.extend(["-l".into(), USER.into(), "--".into(), host.into()]);
    // ssh joins the words with spaces for the guest's shell: quote each one so that the
    // guest runs exactly this argv.
    argv.extend(
        inv.command
            .iter()
            .map(|w| OsString::from(shell_quote(w).as_ref())),
    );
    Ok(argv)
}

/// The host public keys recorded with the runner's root disk (`DISK.defaults.json`):
/// what the guest booted from it presents. None for a prebuilt `storeDisk`, a root
/// without `/etc/ssh/ssh_host_*_key.pub`, or a disk cached by an older microvm.
fn root_host_keys(runner: &Path) -> Vec<String> {
    std::fs::read_link(runner.join("share/microvm/store-disk"))
        .ok()
        .and_then(|disk| microvm_image::rootfs::defaults::RootDefaults::beside(&disk))
        .map(|d| d.ssh_host_keys)
        .unwrap_or_default()
}

/// Replaces `path` (in the VM's private directory) with one line per key, under the
/// VM's alias.
fn write_known_hosts(path: &Path, name: &str, keys: &[String]) -> anyhow::Result<()> {
    let text: String = keys
        .iter()
        .map(|k| format!("microvm-{name} {k}\n"))
        .collect();
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The ProxyCommand (run by ssh through `/bin/sh -c`, after its `%` expansion).
fn proxy_command(inv: &Invocation<'_>) -> anyhow::Result<String> {
    let words: Vec<String> = match inv.target {
        Target::Vsock { cid } => vec![
            "socat".into(),
            "-".into(),
            format!("VSOCK-CONNECT:{cid}:{SSH_PORT}"),
        ],
        Target::HybridVsock { socket } => vec![
            utf8(inv.microvm)?.into(),
            "vsock-proxy".into(),
            utf8(socket)?.into(),
            SSH_PORT.to_string(),
        ],
        Target::Address(_) => unreachable!("an address needs no proxy"),
    };
    Ok(microvm_runner::quote::shell_join(&words[0], &words[1..]).replace('%', "%%"))
}

/// A path as an ssh option value: `%` escaped (ssh expands tokens in these), in double
/// quotes when it has blanks.
fn config_value(path: &Path) -> anyhow::Result<String> {
    let s = utf8(path)?.replace('%', "%%");
    if s.contains('"') {
        bail!("{s}: ssh cannot take a path with a double quote");
    }
    Ok(if s.contains(char::is_whitespace) {
        format!("\"{s}\"")
    } else {
        s
    })
}

fn utf8(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| {
        format!(
            "{}: not UTF-8, which ssh options cannot carry",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests;
