//! Small pieces every planner uses.

use std::path::Path;

use microvm_spec::config::{Config, ControlTransport, CONSOLE_NONCE_PARAM};
use microvm_spec::types::Hypervisor;

use crate::{Artifacts, ControlChannel, Invocation, PlanError, NONCE_PLACEHOLDER};

/// The binary to run: `<package>/bin/<name>` for a configured package directory, the
/// configured path itself when it already names the binary (its file name starts with
/// `name`, e.g. `/opt/qemu/bin/qemu-system-x86_64` for `qemu-system-x86_64`), or
/// `name`, looked up on PATH.
pub(crate) fn program(package: Option<&Path>, name: &str) -> String {
    match package {
        None => name.to_owned(),
        Some(p) => {
            let is_binary = p
                .file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(name));
            if is_binary {
                p.display().to_string()
            } else {
                p.join("bin").join(name).display().to_string()
            }
        }
    }
}

/// The console channel for a guest that reports there (see [`cmdline`], which puts the
/// nonce on the command line): every hypervisor without a channel of its own.
pub(crate) fn console_channel(config: &Config, inv: &mut Invocation) {
    if inv.control_channel.is_none() && config.control_transport() == ControlTransport::Console {
        inv.control_channel = Some(ControlChannel::Console {
            param: CONSOLE_NONCE_PARAM.into(),
        });
        inv.capabilities.readiness = true;
    }
}

/// `microvm@<name>` when `prettyProcnames`.
pub(crate) fn process_name(config: &Config) -> Option<String> {
    config
        .pretty_procnames
        .then(|| format!("microvm@{}", config.name))
}

/// A kernel command line: the hypervisor's prefix, then `kernelParams`, then the console
/// channel's nonce placeholder when the guest reports on the console.
pub(crate) fn cmdline<'a>(prefix: impl IntoIterator<Item = &'a str>, config: &Config) -> String {
    let nonce = (config.control_transport() == ControlTransport::Console)
        .then(|| format!("{CONSOLE_NONCE_PARAM}={NONCE_PLACEHOLDER}"));
    prefix
        .into_iter()
        .map(str::to_owned)
        .chain(config.kernel_params.iter().cloned())
        .chain(nonce)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The drive letter of volume `index` (the store disk is `a`): `b`, `c`, … `z`, `aa`, …
/// The store disk's path for a runner that requires one whenever `storeOnDisk` is set:
/// `None` without it, an error when it is set but the build made no disk.
pub(crate) fn built_store_disk(
    hypervisor: Hypervisor,
    config: &Config,
    artifacts: &Artifacts,
) -> Result<Option<String>, PlanError> {
    if !config.store_on_disk {
        return Ok(None);
    }
    let store = artifacts
        .store_disk
        .as_ref()
        .ok_or_else(|| PlanError::Invalid {
            hypervisor,
            message: "storeOnDisk is set but no store disk was built".into(),
        })?;
    Ok(Some(store.display().to_string()))
}

pub(crate) fn drive_letter(index: usize) -> String {
    let mut n = index + 1; // 0-based with `a` taken
    let mut out = Vec::new();
    loop {
        out.push(b'a' + (n % 26) as u8);
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// The vsock port microvm's guest init connects to (host CID 2) for its control channel
/// on hypervisors with hybrid vsock (cloud-hypervisor, firecracker). systemd's notify
/// socket uses 8888, as in microvm.nix.
pub(crate) const CONTROL_VSOCK_PORT: u32 = 8889;

/// The hybrid-vsock socket of cloud-hypervisor and firecracker ([later] microvm.nix name).
pub const NOTIFY_VSOCK: &str = "notify.vsock";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs() {
        assert_eq!(program(None, "virtiofsd"), "virtiofsd");
        assert_eq!(
            program(Some(Path::new("/opt/vfs")), "virtiofsd"),
            "/opt/vfs/bin/virtiofsd"
        );
        assert_eq!(
            program(Some(Path::new("/usr/local/bin/virtiofsd")), "virtiofsd"),
            "/usr/local/bin/virtiofsd"
        );
    }

    #[test]
    fn drive_letters() {
        assert_eq!(drive_letter(0), "b");
        assert_eq!(drive_letter(24), "z");
        assert_eq!(drive_letter(25), "aa");
        assert_eq!(drive_letter(26), "ab");
    }
}
