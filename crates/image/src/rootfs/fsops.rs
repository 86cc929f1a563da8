//! Small filesystem operations shared by the root sources: replacing an entry, owner and
//! mode, device nodes, xattrs, and making sure a path stays inside the staging root.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{lchown, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, CWD};

use super::RootfsError;

pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub fn io(op: &'static str, path: &Path, source: std::io::Error) -> RootfsError {
    RootfsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Removes whatever is at `path` (a directory recursively), without following a symlink
/// there. The caller has checked that `path`'s parent lies inside the staging root.
pub fn clear(path: &Path) -> Result<(), RootfsError> {
    let result = match fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
    };
    result.map_err(|e| io("replacing", path, e))
}

/// Makes `path` a real directory: kept if it is one, otherwise whatever is there (a file,
/// a symlink) is replaced, as a directory in a later layer replaces it in OCI images.
pub fn ensure_dir(path: &Path) -> Result<(), RootfsError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => clear(path)?,
        Err(_) => {}
    }
    fs::create_dir(path).map_err(|e| io("creating directory", path, e))
}

/// Owner (when running as root) then mode: chown clears setuid bits, so mode comes last.
pub fn set_owner_mode(
    path: &Path,
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
) -> Result<(), RootfsError> {
    if let Some((uid, gid)) = owner {
        lchown(path, Some(uid), Some(gid)).map_err(|e| io("setting owner of", path, e))?;
    }
    if let Some(mode) = mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode & 0o7777))
            .map_err(|e| io("setting mode of", path, e))?;
    }
    Ok(())
}

/// The kinds of special file staging recreates with mknod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    Fifo,
    Char,
    Block,
}

/// Creates a device node or fifo; `Err` (e.g. EPERM when not root) is the caller's to
/// record, not fatal.
pub fn mknod(path: &Path, kind: Special, mode: u32, rdev: u64) -> std::io::Result<()> {
    let file_type = match kind {
        Special::Fifo => FileType::Fifo,
        Special::Char => FileType::CharacterDevice,
        Special::Block => FileType::BlockDevice,
    };
    rustix::fs::mknodat(
        CWD,
        path,
        file_type,
        Mode::from_raw_mode(mode & 0o7777),
        rdev,
    )?;
    Ok(())
}

/// Copies extended attributes (e.g. `security.capability`); best effort, since the
/// staging filesystem may refuse some namespaces. Returns the names that failed.
pub fn copy_xattrs(src: &Path, dst: &Path) -> Vec<String> {
    let mut failed = Vec::new();
    let Ok(size) = rustix::fs::llistxattr_query(src) else {
        return failed;
    };
    if size == 0 {
        return failed;
    }
    let mut names = vec![0u8; size];
    let Ok(len) = rustix::fs::llistxattr(src, &mut names[..]) else {
        return failed;
    };
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let copied = (|| -> rustix::io::Result<()> {
            let mut value = vec![0u8; rustix::fs::lgetxattr_query(src, name)?];
            let n = rustix::fs::lgetxattr(src, name, &mut value[..])?;
            rustix::fs::lsetxattr(dst, name, &value[..n], rustix::fs::XattrFlags::empty())
        })();
        if copied.is_err() {
            failed.push(String::from_utf8_lossy(name).into_owned());
        }
    }
    failed
}

/// `rel` as a path below the root: leading `/` and `.` dropped, `..` refused (`None`).
pub fn relative_in_root(rel: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in rel.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(p) => out.push(p),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Checks that `dest`'s deepest existing ancestor resolves (through any symlinks already
/// staged) inside `canon_root`, so removing or creating `dest` cannot touch the host.
/// Returns `dest` re-rooted on that resolved ancestor.
pub fn resolve_inside(canon_root: &Path, dest: &Path) -> Result<PathBuf, RootfsError> {
    let mut existing = dest.parent();
    let mut rest = Vec::new();
    if let Some(name) = dest.file_name() {
        rest.push(name.to_owned());
    }
    while let Some(dir) = existing {
        match fs::canonicalize(dir) {
            Ok(canon) => {
                if !canon.starts_with(canon_root) {
                    return Err(RootfsError::Escapes {
                        path: dest.to_owned(),
                        target: canon,
                    });
                }
                return Ok(rest.iter().rev().fold(canon, |p, c| p.join(c)));
            }
            Err(_) if fs::symlink_metadata(dir).is_ok() => {
                // There but unresolvable: a dangling symlink, possibly to the host.
                let target = fs::read_link(dir).unwrap_or_else(|_| dir.to_owned());
                return Err(RootfsError::Escapes {
                    path: dest.to_owned(),
                    target,
                });
            }
            Err(_) => {
                if let Some(name) = dir.file_name() {
                    rest.push(name.to_owned());
                }
                existing = dir.parent();
            }
        }
    }
    Err(RootfsError::Escapes {
        path: dest.to_owned(),
        target: PathBuf::from("/"),
    })
}
