//! Before start: the invocation's pre-start steps and generated files, relative to the
//! working directory; after exit: removing the sockets our children left behind.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use microvm_runner::{Invocation, PreStart};

use super::RunError;
use crate::privilege::Credentials;

/// Runs `pre_start` in order: `rm -f`, `mv P P.old`, `mkdir -p`, the definition's
/// `preStart` and `extraArgsScript` (as the hypervisor's user, `as_user`, when it has
/// one); returns the arguments the latter adds.
pub(crate) fn run_pre_start(
    steps: &[PreStart],
    workdir: &Path,
    as_user: Option<&Credentials>,
) -> Result<Vec<String>, RunError> {
    let mut extra_args = Vec::new();
    for step in steps {
        let (what, rel) = match step {
            PreStart::RemoveFile(p) => ("remove", p),
            PreStart::MoveAside(p) => ("move aside", p),
            PreStart::CreateDir(p) => ("create directory", p),
            PreStart::Shell(script) => {
                super::user_steps::pre_start(script, workdir, as_user)?;
                continue;
            }
            PreStart::ExtraArgs(cmd) => {
                extra_args.extend(super::user_steps::extra_args(cmd, workdir, as_user)?);
                continue;
            }
        };
        let path = workdir.join(rel);
        let result = match step {
            PreStart::RemoveFile(_) => match std::fs::remove_file(&path) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                r => r,
            },
            PreStart::MoveAside(_) => {
                let mut old = path.clone().into_os_string();
                old.push(".old");
                match std::fs::rename(&path, &old) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    r => r,
                }
            }
            PreStart::CreateDir(_) => std::fs::create_dir_all(&path),
            PreStart::Shell(_) | PreStart::ExtraArgs(_) => Ok(()),
        };
        result.map_err(|source| RunError::PreStart {
            step: what,
            path,
            source,
        })?;
    }
    Ok(extra_args)
}

/// Writes the generated files (parents created, mode applied even to existing files).
pub(crate) fn write_files(inv: &Invocation, workdir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    for file in &inv.files {
        let path = workdir.join(&file.path);
        let err = |source| RunError::WriteFile {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(file.mode)
            .open(&path)
            .map_err(err)?;
        f.write_all(file.contents.as_bytes()).map_err(err)?;
        f.set_permissions(std::fs::Permissions::from_mode(file.mode))
            .map_err(err)?;
    }
    Ok(())
}

/// The sockets the VM's processes create in the working directory: helper sockets, the
/// control socket, and the socket of a virtio-serial control channel.
pub(crate) fn created_sockets(inv: &Invocation, workdir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = inv
        .helpers
        .iter()
        .filter_map(|h| h.socket.as_ref())
        .map(|s| workdir.join(s))
        .collect();
    out.extend(inv.control_socket.iter().map(|s| workdir.join(s)));
    if let Some(microvm_runner::ControlChannel::VirtioSerial { socket, .. }) = &inv.control_channel
    {
        out.push(workdir.join(socket));
    }
    out
}

/// Removes what [`created_sockets`] names, when it is a socket (never a regular file).
pub(crate) fn remove_sockets(paths: &[PathBuf]) {
    use std::os::unix::fs::FileTypeExt;
    for p in paths {
        if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Parses `SIGTERM`, `TERM` or `15`.
pub(crate) fn parse_signal(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let name = if s.starts_with("SIG") {
        s.to_string()
    } else {
        format!("SIG{s}")
    };
    (1..=31).find(|n| signal_hook::low_level::signal_name(*n) == Some(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pre_start_steps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::write(d.join("stale.sock"), "").expect("w");
        std::fs::write(d.join("vm.img"), "data").expect("w");
        let steps = vec![
            PreStart::RemoveFile("stale.sock".into()),
            PreStart::RemoveFile("absent".into()),
            PreStart::MoveAside("vm.img".into()),
            PreStart::MoveAside("absent2".into()),
            PreStart::CreateDir("a/b".into()),
        ];
        run_pre_start(&steps, d, None).expect("pre-start");
        assert!(!d.join("stale.sock").exists());
        assert_eq!(
            std::fs::read_to_string(d.join("vm.img.old")).expect("r"),
            "data"
        );
        assert!(d.join("a/b").is_dir());
        std::fs::write(d.join("file"), "").expect("w");
        let err =
            run_pre_start(&[PreStart::CreateDir("file/x".into())], d, None).expect_err("fails");
        assert!(err.to_string().contains("file/x"), "{err}");
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("INT"), Some(libc::SIGINT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
