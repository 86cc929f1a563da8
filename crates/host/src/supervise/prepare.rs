//! Before start: the invocation's pre-start steps and generated files, relative to the
//! working directory; after exit: removing the sockets our children left behind.

use std::io::Write;
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
        let path = match step_path(workdir, Path::new(rel)) {
            Ok(p) => p,
            Err(source) => {
                return Err(RunError::PreStart {
                    step: what,
                    path: workdir.join(rel),
                    source,
                })
            }
        };
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

/// Where a pre-start step acts: a relative path inside the working directory (see
/// [`crate::trust::confined`]); an absolute one (a configured `socket`, crosvm's
/// `pivotRoot`) only without `..` and below directories nobody but root can write.
fn step_path(workdir: &Path, rel: &Path) -> std::io::Result<PathBuf> {
    if !rel.is_absolute() {
        return crate::trust::confined(workdir, rel);
    }
    if rel
        .components()
        .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{}: a path with `..`", rel.display()),
        ));
    }
    let existing = rel
        .ancestors()
        .skip(1)
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    crate::trust::check_trusted_path(existing)?;
    Ok(rel.to_path_buf())
}

/// Writes the generated files: confined to the working directory, each created new under
/// a temporary name (`O_EXCL|O_NOFOLLOW`: a planted symlink is never followed), fsynced,
/// given its mode and renamed over the old one.
pub(crate) fn write_files(inv: &Invocation, workdir: &Path) -> Result<(), RunError> {
    use std::os::unix::fs::PermissionsExt;
    for file in &inv.files {
        let err = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RunError::WriteFile { path, source }
        };
        let path = crate::trust::confined(workdir, Path::new(&file.path))
            .map_err(err(&workdir.join(&file.path)))?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err(&path))?;
        }
        let (mut f, tmp) =
            crate::trust::create_temp_sibling(&path, file.mode).map_err(err(&path))?;
        let written = f
            .write_all(file.contents.as_bytes())
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(file.mode)))
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(err(&path)(e));
        }
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

/// Removes the sockets `inv`'s processes create in `workdir` (after their supervisor died).
pub fn remove_created_sockets(inv: &Invocation, workdir: &Path) {
    remove_sockets(&created_sockets(inv, workdir));
}

/// Removes each of `paths` that is a socket.
pub fn remove_sockets_at(paths: &[PathBuf]) {
    remove_sockets(paths);
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

    /// Attack 2 of issue 10: a symlink planted at a generated file's name (firecracker's
    /// config) made root truncate its target. Paths outside the directory are refused.
    #[test]
    fn generated_files_never_follow_planted_links_or_leave_the_directory() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let victim = d.join("victim");
        std::fs::write(&victim, "root's").expect("w");
        symlink(&victim, d.join("firecracker.json")).expect("symlink");
        symlink("/etc", d.join("link")).expect("symlink");
        let mut inv = super::super::tests::sh("");
        inv.files.push(microvm_runner::GeneratedFile {
            path: "firecracker.json".into(),
            contents: "{}".into(),
            mode: 0o600,
        });
        write_files(&inv, d).expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("r"), "root's");
        assert_eq!(
            std::fs::read_to_string(d.join("firecracker.json")).expect("r"),
            "{}"
        );
        assert!(!std::fs::symlink_metadata(d.join("firecracker.json"))
            .expect("stat")
            .file_type()
            .is_symlink());
        for bad in ["/etc/x", "../x"] {
            inv.files[0].path = bad.into();
            assert!(write_files(&inv, d).is_err(), "{bad}");
        }
        for bad in ["../x", "/a/../x", "link/x"] {
            let step = PreStart::CreateDir(bad.into());
            assert!(run_pre_start(&[step], d, None).is_err(), "{bad}");
        }
        // An absolute step path below root's directories (a configured socket) is fine.
        let abs = d.join("abs.sock");
        std::fs::write(&abs, "").expect("w");
        let step = PreStart::RemoveFile(abs.display().to_string());
        run_pre_start(&[step], d, None).expect("absolute, trusted");
        assert!(!abs.exists());
        let leftovers: Vec<_> = std::fs::read_dir(d)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(parse_signal("INT"), Some(libc::SIGINT));
        assert_eq!(parse_signal("9"), Some(9));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
