//! The new root's `/root/.ssh/authorized_keys` from the plan's keys (`ssh.*` of the
//! definition), so `microvm ssh` can log in as root with the user's key: `/root` and
//! `/root/.ssh` 0700, the file 0600, all owned by root, as sshd's `StrictModes` wants.
//! Nothing is followed through a symlink the image put there.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;

use microvm_init::plan::GuestPlan;
use rustix::io::Errno;

use super::console::say;
use super::fail::Failure;
use super::NEW_ROOT;

pub fn install_keys(plan: &GuestPlan) -> Result<(), Failure> {
    if plan.authorized_keys.is_empty() {
        return Ok(());
    }
    let home = format!("{NEW_ROOT}/root");
    let dir = format!("{home}/.ssh");
    for d in [&home, &dir] {
        if let Err(e) = private_dir(Path::new(d)) {
            if e.raw_os_error() == Some(Errno::ROFS.raw_os_error()) {
                say(
                    "microvm-init: warning: read-only root: /root/.ssh/authorized_keys not written",
                );
                return Ok(());
            }
            return Err(failure(&d[NEW_ROOT.len()..], e));
        }
    }
    let file = format!("{dir}/authorized_keys");
    let _ = std::fs::remove_file(&file);
    let text: String = plan
        .authorized_keys
        .iter()
        .map(|k| format!("{k}\n"))
        .collect();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc_nofollow())
        .open(&file)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| failure("/root/.ssh/authorized_keys", e))?;
    say(&format!(
        "microvm-init: {} authorized key(s) for root",
        plan.authorized_keys.len()
    ));
    Ok(())
}

/// A root-owned 0700 directory at `dir`; a symlink or file there is replaced.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            std::fs::remove_file(dir)?;
            std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        }
        Err(_) => std::fs::DirBuilder::new().mode(0o700).create(dir)?,
    }
    std::os::unix::fs::chown(dir, Some(0), Some(0))?;
    rustix::fs::chmod(dir, rustix::fs::Mode::from_raw_mode(0o700))?;
    Ok(())
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

fn failure(path: &str, e: std::io::Error) -> Failure {
    Failure::new(format!("write {path} in the new root"), e.to_string())
}
