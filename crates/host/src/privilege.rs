//! Who the hypervisor runs as. The supervisor of a managed VM runs as root (it creates
//! taps, binds PCI devices, writes the state directory) and starts the hypervisor as an
//! unprivileged user (`microvm`, primary group `kvm`, created by `microvm host install`),
//! like microvm.nix's `User=microvm Group=kvm`.
//!
//! Rules ([`resolve_run_user`]):
//! - not root: no change of user (the hypervisor runs as the caller);
//! - root, user `root` asked for explicitly: no change (a documented opt-out);
//! - root, otherwise: the named user (default `microvm`) must exist, else an error that
//!   says how to create it. Silently running as root instead would hide a broken setup.

use std::ffi::CString;
use std::path::Path;

/// The default unprivileged user.
pub const DEFAULT_USER: &str = "microvm";
/// The default group (the original's: owner of `/dev/kvm` on most distributions).
pub const DEFAULT_GROUP: &str = "kvm";

/// A user to run children as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub uid: u32,
    /// The user's primary group.
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error("user {user} does not exist; create it with `microvm host install` (a system user in group kvm), or run the VM as root with --user root")]
    NoSuchUser { user: String },
    #[error("cannot look up user {user}")]
    Lookup {
        user: String,
        source: std::io::Error,
    },
    #[error("cannot change the owner of {}", path.display())]
    Chown {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Whether this process runs with effective uid 0.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The user children run as; `None` = unchanged. See the module docs.
pub fn resolve_run_user(requested: Option<&str>) -> Result<Option<Credentials>, PrivilegeError> {
    if !is_root() {
        return Ok(None);
    }
    let name = requested.unwrap_or(DEFAULT_USER);
    if name == "root" {
        return Ok(None);
    }
    lookup_user(name)?
        .map(Some)
        .ok_or(PrivilegeError::NoSuchUser {
            user: name.to_string(),
        })
}

/// Looks `name` up in the user database (NSS, through getpwnam_r).
pub fn lookup_user(name: &str) -> Result<Option<Credentials>, PrivilegeError> {
    let err = |source| PrivilegeError::Lookup {
        user: name.to_string(),
        source,
    };
    let Ok(cname) = CString::new(name) else {
        return Ok(None);
    };
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: passwd is plain data; zeroed is a valid (unused) value.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; buf outlives it and its length is
        // passed; result points into pwd or is null.
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(err(std::io::Error::from_raw_os_error(rc)));
        }
        if result.is_null() {
            return Ok(None);
        }
        return Ok(Some(Credentials {
            user: name.to_string(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        }));
    }
}

/// Looks a group up by name (getgrnam_r).
pub fn lookup_group(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 16384];
    // SAFETY: group is plain data; zeroed is a valid (unused) value.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwnam_r above.
    let rc = unsafe {
        libc::getgrnam_r(
            cname.as_ptr(),
            &mut grp,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(grp.gr_gid)
}

/// `chown uid:gid path` without following a final symlink.
pub fn chown(path: &Path, uid: u32, gid: u32) -> Result<(), PrivilegeError> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|source| PrivilegeError::Chown {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_exists_and_unknown_users_do_not() {
        let root = lookup_user("root").expect("lookup").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert_eq!(lookup_user("no-such-user-xyz").expect("lookup"), None);
        assert_eq!(lookup_group("root"), Some(0));
        assert_eq!(lookup_group("no-such-group-xyz"), None);
    }

    #[test]
    fn root_opt_out_and_missing_user() {
        if !is_root() {
            assert_eq!(resolve_run_user(Some("whoever")).expect("no change"), None);
            return;
        }
        assert_eq!(resolve_run_user(Some("root")).expect("opt-out"), None);
        let err = resolve_run_user(Some("no-such-user-xyz")).expect_err("missing");
        assert!(err.to_string().contains("microvm host install"), "{err}");
    }
}
