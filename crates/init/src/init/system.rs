//! Identity files of the new root: hostname, machine-id, resolv.conf.

use std::io::ErrorKind;

use microvm_init::plan::GuestPlan;

use super::console::say;
use super::fail::{Context, Failure};
use super::{mounts, NEW_ROOT};

pub fn configure(plan: &GuestPlan) -> Result<(), Failure> {
    if let Some(hostname) = &plan.hostname {
        rustix::system::sethostname(hostname.as_bytes())
            .ctx(|| format!("set hostname {hostname:?}"))?;
        write_if_writable("/etc/hostname", &format!("{hostname}\n"))?;
    }
    if let Some(id) = &plan.machine_id {
        if !id.chars().all(|c| c.is_ascii_hexdigit()) || id.len() != 32 {
            return Err(Failure::new(
                "machine id",
                format!("{id:?} is not 32 hex digits"),
            ));
        }
        if !write_if_writable("/etc/machine-id", &format!("{id}\n"))? {
            // A read-only root: bind a file from /run over the image's (empty) one.
            let run_copy = "/run/machine-id";
            std::fs::write(run_copy, format!("{id}\n")).ctx(|| format!("write {run_copy}"))?;
            let target = format!("{NEW_ROOT}/etc/machine-id");
            if std::path::Path::new(&target).is_file() {
                mounts::bind(run_copy, &target, true)?;
            } else {
                say("microvm-init: warning: read-only root has no /etc/machine-id to bind over");
            }
        }
    }
    let dns: Vec<&String> = plan.network.iter().flat_map(|n| &n.dns).collect();
    if !dns.is_empty() {
        let text: String = dns.iter().map(|s| format!("nameserver {s}\n")).collect();
        if !write_if_writable("/etc/resolv.conf", &text)? {
            say("microvm-init: warning: read-only root: /etc/resolv.conf not written");
        }
    }
    Ok(())
}

/// Writes `path` (inside the new root), replacing a symlink there. `Ok(false)` when the
/// root is read-only.
pub(super) fn write_if_writable(path: &str, content: &str) -> Result<bool, Failure> {
    let full = format!("{NEW_ROOT}{path}");
    let _ = mounts::mkdir_p(std::path::Path::new(&format!("{NEW_ROOT}/etc")));
    if std::fs::symlink_metadata(&full).is_ok_and(|m| m.file_type().is_symlink()) {
        match std::fs::remove_file(&full) {
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => {
                return Ok(false)
            }
            _ => {}
        }
    }
    match std::fs::write(&full, content) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => Ok(false),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Failure::new(
            format!("write {path} in the new root"),
            e.to_string(),
        )),
    }
}
