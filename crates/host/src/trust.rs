//! What root may trust on disk (docs/host.md, "Trust model"). The supervisor runs as
//! root next to hypervisors that run as the unprivileged `microvm` user (group `kvm`), and
//! the VM directory is writable by that group (sticky) so hypervisors can create their
//! sockets there. So root:
//!
//! - creates files only with `O_CREAT|O_EXCL|O_NOFOLLOW` ([`create_new`]) under a fresh
//!   name, then renames them into place: a planted symlink or file makes the create fail,
//!   never redirects it;
//! - reads its own records only when they are regular files (or symlinks) that it owns
//!   ([`read_owned`], [`read_link_owned`]): a `supervisor.pid` planted by the group is
//!   ignored, not obeyed;
//! - hands over a socket only when it is a socket, not a symlink to one, owned by root
//!   ([`hand_over_socket`]);
//! - resolves relative paths of the runner (pre-start steps, generated files) only when
//!   they stay inside the VM directory and cross no symlink ([`confined`]);
//! - runs only under a state root the group cannot write ([`check_state_root`]): with a
//!   group-writable root a member renamed a VM directory away and planted its own.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Whether this process runs as root (then ownership matters).
fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates `path` new (`O_CREAT|O_EXCL|O_NOFOLLOW`, mode `mode` before the umask): fails
/// with `AlreadyExists` when anything, a symlink included, is there.
pub fn create_new(path: &Path, mode: u32) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// Opens a fresh temporary sibling of `path` with [`create_new`], trying a few names (a
/// planted name is skipped, never followed). Returns the file and its path.
pub fn create_temp_sibling(path: &Path, mode: u32) -> io::Result<(File, PathBuf)> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map_or_else(|| "x".into(), |n| n.to_string_lossy().into_owned());
    let mut last = io::Error::from(io::ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = path.with_file_name(format!(
            ".{name}.tmp-{}-{n}-{nanos:08x}",
            std::process::id()
        ));
        match create_new(&tmp, mode) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Why a file is not trusted.
fn untrusted(path: &Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{} is not trusted: {why}", path.display()),
    )
}

/// Whether `meta` belongs to this process's user or to root (whom everyone trusts: a
/// user's `microvm status` reads root's records).
fn owned(meta: &fs::Metadata) -> bool {
    meta.uid() == euid() || meta.uid() == 0
}

/// Reads at most `limit` bytes of `path` when it is a regular file this user owns
/// (`O_NOFOLLOW`: a symlink is refused). `Ok(None)` when it does not exist.
pub fn read_owned(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(untrusted(path, "it is a symlink"))
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(untrusted(path, "it is not a regular file"));
    }
    if !owned(&meta) {
        return Err(untrusted(
            path,
            &format!(
                "it is owned by uid {}, neither root nor {}",
                meta.uid(),
                euid()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

/// The target of the symlink `path` when this user owns the link; `None` otherwise.
pub fn read_link_owned(path: &Path) -> Option<PathBuf> {
    let meta = fs::symlink_metadata(path).ok()?;
    (meta.file_type().is_symlink() && owned(&meta))
        .then(|| fs::read_link(path).ok())
        .flatten()
}

/// Gives the socket at `path` to `uid:gid` with `mode`, when it is a socket (not a
/// symlink) owned by this user; a planted symlink made root chown its target once.
pub fn hand_over_socket(path: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(untrusted(path, "it is not a socket"));
    }
    if !owned(&meta) {
        return Err(untrusted(
            path,
            &format!("it is owned by uid {}", meta.uid()),
        ));
    }
    // The directory is root's or sticky: nobody else can replace the checked socket
    // between here and the chmod (which follows a final symlink; lchown does not).
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
}

/// `rel` joined to `dir`, when `rel` is relative, has no `..`, and crosses no symlink
/// on the way (existing intermediate components must be directories this user owns).
pub fn confined(dir: &Path, rel: &Path) -> io::Result<PathBuf> {
    let invalid = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: {why}", rel.display()),
        )
    };
    let mut path = dir.to_path_buf();
    let mut parts = rel.components().peekable();
    if parts.peek().is_none() {
        return Err(invalid("an empty path"));
    }
    while let Some(part) = parts.next() {
        match part {
            Component::Normal(p) => path.push(p),
            Component::CurDir => continue,
            Component::ParentDir => return Err(invalid("a path with `..`")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(invalid(
                    "an absolute path (must be inside the VM directory)",
                ))
            }
        }
        if parts.peek().is_none() {
            break;
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_symlink() => return Err(untrusted(&path, "it is a symlink")),
            Ok(m) if m.is_dir() && !owned(&m) => {
                return Err(untrusted(&path, &format!("it is owned by uid {}", m.uid())))
            }
            _ => {}
        }
    }
    Ok(path)
}

/// Refuses a state root the hypervisors' group (or anyone but root) could write without
/// the sticky bit, or one root does not own. Only checked when running as root.
pub fn check_state_root(root: &Path) -> io::Result<()> {
    if euid() != 0 {
        return Ok(());
    }
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mode = meta.mode();
    let why = if meta.file_type().is_symlink() {
        Some("it is a symlink".to_string())
    } else if meta.uid() != 0 {
        Some(format!("it is owned by uid {}, not root", meta.uid()))
    } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        Some(format!(
            "its mode {:04o} lets others than root rename the VM directories in it",
            mode & 0o7777
        ))
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the state directory {} is not safe for root: {why}; fix it with `chown root {0} && chmod 0755 {0}` (or rerun `microvm host install`)",
                root.display()
            ),
        )),
    }
}

/// Refuses `path` (made canonical) unless it and every directory above it are owned by
/// root (or this user) and writable by nobody else (a sticky directory aside): what root
/// executes or acts on (a runner's `invocation.json`) must not be replaceable by the
/// hypervisors' group. Only checked when running as root.
pub fn check_trusted_path(path: &Path) -> io::Result<()> {
    if euid() != 0 {
        return Ok(());
    }
    let real = fs::canonicalize(path)?;
    for p in real.ancestors() {
        let meta = fs::symlink_metadata(p)?;
        let mode = meta.mode();
        let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
        let why = if meta.uid() != 0 {
            format!("{} is owned by uid {}, not root", p.display(), meta.uid())
        } else if mode & 0o022 != 0 && !sticky_dir {
            format!(
                "{} is writable by others than root (mode {:04o})",
                p.display(),
                mode & 0o7777
            )
        } else {
            continue;
        };
        return Err(untrusted(path, &why));
    }
    Ok(())
}

/// The group that may use consoles (`console.sock`), from the root-owned file
/// `<state>/console-group` (a group name); none by default: only root.
pub fn console_group(state_root: &Path) -> Option<u32> {
    let bytes = read_owned(&state_root.join("console-group"), 256)
        .ok()
        .flatten()?;
    let name = String::from_utf8(bytes).ok()?;
    crate::privilege::lookup_group(name.trim())
}

/// Makes `dir` a directory only this user can enter (0700), or accepts one that already
/// is (owned by this user, no group or other access, not a symlink): a name the group
/// planted first in the VM directory is refused, so files root keeps inside (e.g.
/// `microvm ssh`'s known_hosts) cannot be redirected or read by it.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = fs::symlink_metadata(dir)?;
    let why = if !meta.is_dir() {
        "it is not a directory (a symlink or a file)".to_string()
    } else if meta.uid() != euid() {
        format!("it is owned by uid {}", meta.uid())
    } else if meta.mode() & 0o077 != 0 {
        format!("its mode is {:04o}, not 0700", meta.mode() & 0o7777)
    } else {
        return Ok(());
    };
    Err(untrusted(dir, &format!("{why}; remove it")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn create_new_refuses_planted_links() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, "precious").expect("write");
        let link = dir.path().join("planted");
        symlink(&victim, &link).expect("symlink");
        let err = create_new(&link, 0o644).expect_err("a symlink");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&victim).expect("read"), "precious");
        let (_f, tmp) = create_temp_sibling(&dir.path().join("status.json"), 0o644).expect("tmp");
        assert!(tmp
            .file_name()
            .expect("name")
            .to_string_lossy()
            .starts_with(".status.json.tmp-"));
    }

    #[test]
    fn reads_refuse_symlinks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let real = dir.path().join("real");
        fs::write(&real, "42\n").expect("write");
        assert_eq!(read_owned(&real, 10).expect("read"), Some(b"42\n".to_vec()));
        assert_eq!(read_owned(&real, 1).expect("read"), Some(b"4".to_vec()));
        assert_eq!(
            read_owned(&dir.path().join("absent"), 10).expect("read"),
            None
        );
        let link = dir.path().join("link");
        symlink(&real, &link).expect("symlink");
        let err = read_owned(&link, 10).expect_err("a symlink");
        assert!(
            err.to_string().ends_with("is not trusted: it is a symlink"),
            "{err}"
        );
        assert_eq!(read_link_owned(&link), Some(real));
    }

    #[test]
    fn confined_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        assert_eq!(
            confined(d, Path::new("a/b.json")).expect("ok"),
            d.join("a/b.json")
        );
        for bad in ["/etc/passwd", "../x", "a/../../x", ""] {
            assert!(confined(d, Path::new(bad)).is_err(), "{bad}");
        }
        symlink("/etc", d.join("etc")).expect("symlink");
        let err = confined(d, Path::new("etc/shadow")).expect_err("through a symlink");
        assert!(err.to_string().contains("it is a symlink"), "{err}");
        // A final symlink is the caller's business (it creates with O_NOFOLLOW).
        assert!(confined(d, Path::new("etc")).is_ok());
    }

    #[test]
    fn sockets_are_handed_over_only_when_they_are_ours() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("secret");
        fs::write(&file, "x").expect("write");
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).expect("chmod");
        let link = dir.path().join("v.sock");
        symlink(&file, &link).expect("symlink");
        let err = hand_over_socket(&link, 65534, 65534, 0o660).expect_err("a symlink");
        assert!(err.to_string().contains("it is not a socket"), "{err}");
        let meta = fs::metadata(&file).expect("stat");
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o600, euid()));
        let sock = dir.path().join("real.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        hand_over_socket(&sock, euid(), rustix::process::getegid().as_raw(), 0o660)
            .expect("a socket");
        assert_eq!(
            fs::symlink_metadata(&sock).expect("stat").mode() & 0o777,
            0o660
        );
    }

    #[test]
    fn state_roots_the_group_could_write_are_refused() {
        if euid() != 0 {
            eprintln!("skipped: needs root (ownership checks apply to root only)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("state");
        fs::create_dir(&root).expect("mkdir");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o775)).expect("chmod");
        let err = check_state_root(&root).expect_err("group-writable");
        assert!(err.to_string().contains("its mode 0775"), "{err}");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o1775)).expect("chmod");
        check_state_root(&root).expect("sticky");
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).expect("chmod");
        check_state_root(&root).expect("0755");
        let runner = root.join("runner");
        fs::create_dir(&runner).expect("mkdir");
        fs::write(runner.join("invocation.json"), "{}").expect("write");
        check_trusted_path(&runner.join("invocation.json")).expect("root's");
        fs::set_permissions(&runner, fs::Permissions::from_mode(0o775)).expect("chmod");
        let err = check_trusted_path(&runner.join("invocation.json")).expect_err("g+w");
        assert!(
            err.to_string()
                .contains("is writable by others than root (mode 0775)"),
            "{err}"
        );
    }

    #[test]
    fn private_dirs_are_made_or_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("ssh");
        private_dir(&dir).expect("made");
        assert_eq!(fs::metadata(&dir).expect("meta").mode() & 0o777, 0o700);
        private_dir(&dir).expect("accepted again");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o770)).expect("chmod");
        let e = private_dir(&dir).expect_err("group access");
        assert!(e.to_string().contains("not 0700"), "{e}");
        let link = tmp.path().join("planted");
        symlink(tmp.path(), &link).expect("symlink");
        let e = private_dir(&link).expect_err("symlink");
        assert!(e.to_string().contains("not a directory"), "{e}");
    }
}
