//! Switching to the new root the way busybox `switch_root` does: move the pseudo
//! filesystems over, free the initramfs (without crossing into mounts), move the new
//! root onto `/` and chroot into it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::fail::{Context, Failure};
use super::{mounts, NEW_ROOT};

const RAMFS_MAGIC: i64 = 0x8584_58f6;
const TMPFS_MAGIC: i64 = 0x0102_1994;

pub fn switch_root() -> Result<(), Failure> {
    for dir in ["/dev", "/proc", "/sys", "/run"] {
        mounts::move_mount(dir, &format!("{NEW_ROOT}{dir}"))?;
    }
    rustix::process::chdir(NEW_ROOT).ctx(|| format!("chdir {NEW_ROOT}"))?;
    let old = std::fs::metadata("/").ctx(|| "stat /".into())?;
    let new = std::fs::metadata(".").ctx(|| format!("stat {NEW_ROOT}"))?;
    if old.dev() == new.dev() {
        return Err(Failure::new(
            "switch root",
            format!("{NEW_ROOT} is not a mount point"),
        ));
    }
    // Only ever wipe an initramfs, never a real filesystem.
    #[allow(clippy::unnecessary_cast)] // f_type is not i64 on every architecture
    let on_ramfs =
        rustix::fs::statfs("/").is_ok_and(|s| matches!(s.f_type as i64, RAMFS_MAGIC | TMPFS_MAGIC));
    if on_ramfs {
        remove_tree(Path::new("/"), old.dev());
    }
    rustix::mount::mount_move(".", "/").ctx(|| format!("move {NEW_ROOT} to /"))?;
    rustix::process::chroot(".").ctx(|| "chroot into the new root".into())?;
    rustix::process::chdir("/").ctx(|| "chdir / in the new root".into())?;
    Ok(())
}

/// Deletes what is under `dir` on device `dev`; mount points (other devices) are kept.
fn remove_tree(dir: &Path, dev: u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.dev() != dev {
            continue;
        }
        if meta.is_dir() {
            remove_tree(&path, dev);
            let _ = std::fs::remove_dir(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}
