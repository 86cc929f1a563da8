//! Mount helpers and the early pseudo filesystems of the initramfs.

use std::ffi::CString;
use std::path::Path;

use rustix::fs::Mode;
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::fail::{Context, Failure};

/// proc, sysfs, devtmpfs (+ devpts, shm) and a tmpfs `/run`, in the initramfs.
pub fn early() -> Result<(), Failure> {
    let flags = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    mount_fs("proc", "/proc", "proc", flags, None)?;
    mount_fs("sysfs", "/sys", "sysfs", flags, None)?;
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MountFlags::NOSUID,
        Some("mode=0755"),
    )?;
    mount_fs(
        "devpts",
        "/dev/pts",
        "devpts",
        MountFlags::NOSUID | MountFlags::NOEXEC,
        Some("mode=0620,gid=5,ptmxmode=0666"),
    )?;
    mount_fs(
        "shm",
        "/dev/shm",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some("mode=1777"),
    )?;
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some("mode=0755"),
    )?;
    Ok(())
}

/// `mount -t <fs_type> -o <data> <source> <target>`, creating `target` when missing. An
/// already mounted pseudo filesystem (`EBUSY`) is fine.
pub fn mount_fs(
    source: &str,
    target: &str,
    fs_type: &str,
    flags: MountFlags,
    data: Option<&str>,
) -> Result<(), Failure> {
    mkdir_p(Path::new(target))?;
    let data = data
        .map(CString::new)
        .transpose()
        .ctx(|| format!("mount options for {target}"))?;
    match rustix::mount::mount(source, target, fs_type, flags, data.as_deref()) {
        Ok(()) => Ok(()),
        Err(Errno::BUSY) if matches!(fs_type, "proc" | "sysfs" | "devtmpfs") => Ok(()),
        Err(e) => Err(Failure::new(
            format!("mount {fs_type} {source} on {target}"),
            e.to_string(),
        )),
    }
}

/// `mount --move <from> <to>`, creating `to` when missing.
pub fn move_mount(from: &str, to: &str) -> Result<(), Failure> {
    mkdir_p(Path::new(to))?;
    rustix::mount::mount_move(from, to).ctx(|| format!("move mount {from} to {to}"))
}

/// `mount --bind [-o ro] <from> <to>`.
pub fn bind(from: &str, to: &str, read_only: bool) -> Result<(), Failure> {
    rustix::mount::mount_bind_recursive(from, to).ctx(|| format!("bind {from} on {to}"))?;
    if read_only {
        rustix::mount::mount_remount(to, MountFlags::BIND | MountFlags::RDONLY, "")
            .ctx(|| format!("make bind mount {to} read-only"))?;
    }
    Ok(())
}

/// `mkdir -p`; a read-only filesystem in the way gets a message that says what to do.
pub fn mkdir_p(dir: &Path) -> Result<(), Failure> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        mkdir_p(parent)?;
    }
    match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(Errno::ROFS) => Err(Failure::new(
            format!("create mount point {}", guest_path(dir)),
            "the filesystem is read-only (a root without overlay needs its mount points \
             in the image)",
        )),
        Err(e) => Err(Failure::new(
            format!("create directory {}", guest_path(dir)),
            e.to_string(),
        )),
    }
}

/// `path` as the guest will see it once the new root is `/`.
fn guest_path(path: &Path) -> String {
    let shown = path.display().to_string();
    match shown.strip_prefix(super::NEW_ROOT) {
        Some(rest) if rest.starts_with('/') => rest.to_owned(),
        Some("") => "/".to_owned(),
        _ => shown,
    }
}

/// Unmounts everything the init can see, deepest first; what is busy is remounted
/// read-only instead. Pseudo filesystems are left alone.
pub fn unmount_all() {
    let Ok(table) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut entries: Vec<(String, String)> = table
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _source = f.next()?;
            Some((unescape(f.next()?), f.next()?.to_owned()))
        })
        .collect();
    entries.reverse();
    for (target, fs_type) in entries {
        if is_pseudo(&fs_type) {
            continue;
        }
        if target == "/" || rustix::mount::unmount(target.as_str(), UnmountFlags::empty()).is_err()
        {
            let _ = rustix::mount::mount_remount(target.as_str(), MountFlags::RDONLY, "");
        }
    }
}

fn is_pseudo(fs_type: &str) -> bool {
    matches!(
        fs_type,
        "proc"
            | "sysfs"
            | "devtmpfs"
            | "devpts"
            | "tmpfs"
            | "cgroup"
            | "cgroup2"
            | "mqueue"
            | "debugfs"
            | "tracefs"
            | "securityfs"
            | "pstore"
            | "bpf"
            | "configfs"
            | "fusectl"
            | "hugetlbfs"
            | "binfmt_misc"
            | "efivarfs"
            | "autofs"
            | "rootfs"
            | "ramfs"
    )
}

/// `/proc/self/mounts` writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
