//! A Nix closure as the guest's store disk, laid out as microvm.nix's `storeDisk`: every
//! store path of `nix-store -qR TOPLEVEL` at the root of the image (the guest mounts it
//! at `/nix/store`), plus a `…-closure-info` directory with the `registration` that
//! `nix-store --dump-db` prints (passed as `regInfo=` for `nix-store --load-db`) and
//! the `store-paths` list.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use super::{directory, fsops, RootfsError, Stage};
use crate::tools::{ToolError, Toolbox};

/// Where the guest mounts the store disk.
pub const STORE_DIR: &str = "/nix/store";
/// Filesystem label of the store disk (microvm.nix's `-L nix-store`).
pub const STORE_LABEL: &str = "nix-store";
const NIX_STORE: &str = "nix-store";
/// Nix's base-32 alphabet (no e, o, u, t).
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

#[derive(Debug, thiserror::Error)]
pub enum NixError {
    #[error(
        "a nix root source needs nix-store on PATH; install Nix or use another source ({source})"
    )]
    NoNix { source: ToolError },
    #[error("`{argv}` failed ({status}): {stderr}")]
    Failed {
        argv: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("could not start `{argv}`")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("nix-store printed {path:?}, which is not an absolute store path")]
    BadPath { path: String },
    #[error("the closure of {} has two paths named {name:?}", toplevel.display())]
    Duplicate { toplevel: PathBuf, name: String },
    #[error("a nix root source must be the only `[[root]]` source (the root is a tmpfs, the closure is the store disk at /nix/store)")]
    NotAlone,
}

/// The closure of a toplevel, as `nix-store` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closure {
    pub toplevel: PathBuf,
    /// Every path of the closure (the toplevel included), sorted.
    pub paths: Vec<PathBuf>,
    /// `nix-store --dump-db` of the paths.
    pub registration: Vec<u8>,
}

/// What the guest needs to boot a packed closure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NixBoot {
    /// `/nix/store/<toplevel>/init`.
    pub init: String,
    /// `/nix/store/<hash>-closure-info/registration`.
    pub reg_info: String,
}

impl Closure {
    /// Asks `nix-store` (found through `tools`) for the closure of `toplevel` and its
    /// registration. Without `nix-store`: [`NixError::NoNix`].
    pub fn query(tools: &Toolbox, toplevel: &Path) -> Result<Closure, NixError> {
        let program = tools
            .locate(NIX_STORE)
            .map_err(|source| NixError::NoNix { source })?;
        let listed = run(Command::new(&program).arg("-qR").arg(toplevel))?;
        let mut paths = BTreeSet::new();
        for line in String::from_utf8_lossy(&listed).lines() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let p = PathBuf::from(line);
            if !p.is_absolute() || p.file_name().is_none() {
                return Err(NixError::BadPath { path: line.into() });
            }
            paths.insert(p);
        }
        let paths: Vec<PathBuf> = paths.into_iter().collect();
        let mut names = HashMap::new();
        for p in &paths {
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned());
            if let Some(name) = name {
                if names.insert(name.clone(), ()).is_some() {
                    return Err(NixError::Duplicate {
                        toplevel: toplevel.to_owned(),
                        name,
                    });
                }
            }
        }
        let registration = run(Command::new(&program).arg("--dump-db").args(&paths))?;
        Ok(Closure {
            toplevel: toplevel.to_owned(),
            paths,
            registration,
        })
    }

    /// The name of the closure-info directory in the store: a Nix-looking hash of the
    /// registration, then `-closure-info`.
    pub fn info_name(&self) -> String {
        let hash = blake3::hash(&self.registration);
        let name: String = hash
            .as_bytes()
            .iter()
            .map(|b| NIX_BASE32[usize::from(b % 32)] as char)
            .collect();
        format!("{name}-closure-info")
    }

    pub fn boot(&self) -> NixBoot {
        let top = self
            .toplevel
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        NixBoot {
            init: format!("{STORE_DIR}/{top}/init"),
            reg_info: format!("{STORE_DIR}/{}/registration", self.info_name()),
        }
    }

    /// Writes the closure-info directory into the staged tree.
    pub fn write_info(&self, staged: &super::StagedRoot) -> Result<(), RootfsError> {
        let dir = Path::new("/").join(self.info_name());
        staged.add_file(&dir.join("registration"), &self.registration, 0o444)?;
        let mut list = String::new();
        for p in &self.paths {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default();
            list.push_str(&format!("{STORE_DIR}/{name}\n"));
        }
        staged.add_file(&dir.join("store-paths"), list.as_bytes(), 0o444)
    }
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, NixError> {
    let argv = crate::tools::display_argv(cmd);
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NixError::Spawn {
            argv: argv.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(NixError::Failed {
            argv,
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// Copies each store path to `/<basename>` of the tree, as `cp -a` would (modes, links;
/// owners are made root's by the disk builder).
pub fn apply(paths: &[PathBuf], stage: &mut Stage) -> Result<(), RootfsError> {
    let mut links = HashMap::new();
    for path in paths {
        let Some(name) = path.file_name() else {
            continue;
        };
        let to = stage.root.join(name);
        let meta = fs::symlink_metadata(path).map_err(|e| fsops::io("reading", path, e))?;
        let ft = meta.file_type();
        fsops::clear(&to)?;
        if ft.is_dir() {
            fsops::ensure_dir(&to)?;
            directory::copy_dir(path, &to, stage, &mut links)?;
            fsops::set_owner_mode(&to, None, Some(meta.mode()))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(|e| fsops::io("reading link", path, e))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| fsops::io("creating symlink", &to, e))?;
        } else {
            fs::copy(path, &to).map_err(|e| fsops::io("copying to", &to, e))?;
            fsops::set_owner_mode(&to, None, Some(meta.mode()))?;
        }
        stage.record(&to);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::disk::{self, DiskOptions, DiskType};
    use crate::rootfs::{stage, RootSource};

    /// A fake store under `dir`: three paths (a system with an `init`, a library, a
    /// plain-file path) and a `nix-store` script that prints their closure and a
    /// registration, as the real one does.
    fn fake_store(dir: &Path) -> (PathBuf, PathBuf, Vec<PathBuf>) {
        let store = dir.join("nix/store");
        let system = store.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-vm-25.05");
        let lib = store.join("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc-2.40");
        let file = store.join("cccccccccccccccccccccccccccccccc-hosts");
        fs::create_dir_all(system.join("sw/bin")).expect("mkdir");
        fs::write(system.join("init"), "#!/bin/sh\n").expect("init");
        fs::set_permissions(system.join("init"), fs::Permissions::from_mode(0o555)).expect("chmod");
        std::os::unix::fs::symlink(lib.join("lib/libc.so.6"), system.join("sw/bin/libc"))
            .expect("symlink");
        fs::create_dir_all(lib.join("lib")).expect("mkdir");
        fs::write(lib.join("lib/libc.so.6"), "ELF").expect("lib");
        fs::write(&file, "127.0.0.1 localhost\n").expect("file");
        // Not in the closure: must not be packed.
        fs::create_dir_all(store.join("dddddddddddddddddddddddddddddddd-unrelated"))
            .expect("mkdir");
        let paths = vec![system.clone(), lib.clone(), file.clone()];
        let bin = dir.join("bin");
        fs::create_dir_all(&bin).expect("mkdir");
        let listed: String = paths.iter().map(|p| format!("{}\n", p.display())).collect();
        let script = format!(
            "#!/bin/sh\ncase \"$1\" in\n-qR) printf '%s' '{listed}' ;;\n--dump-db) shift; for p; do printf '%s\\nsha256:fake\\n\\n0\\n' \"$p\"; done ;;\n*) exit 2 ;;\nesac\n"
        );
        fs::write(bin.join(NIX_STORE), script).expect("script");
        fs::set_permissions(bin.join(NIX_STORE), fs::Permissions::from_mode(0o755)).expect("chmod");
        (bin, system, paths)
    }

    #[test]
    fn a_closure_is_packed_with_the_store_disk_layout() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (bin, system, paths) = fake_store(tmp.path());
        let tools = Toolbox::with_search_path(bin.as_os_str());
        let closure = Closure::query(&tools, &system).expect("query");
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(closure.paths, sorted);
        let registration = String::from_utf8(closure.registration.clone()).expect("utf8");
        assert!(registration.contains(&format!("{}\nsha256:fake", system.display())));

        let staged = stage(
            &[RootSource::NixStorePaths(closure.paths.clone())],
            &tmp.path().join("s"),
        )
        .expect("stage");
        closure.write_info(&staged).expect("info");
        let r = &staged.root;
        let mut top: Vec<String> = fs::read_dir(r)
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        let info = closure.info_name();
        assert!(
            info.ends_with("-closure-info") && info.len() == 32 + 13,
            "{info}"
        );
        assert!(
            info[..32].bytes().all(|b| NIX_BASE32.contains(&b)),
            "{info}"
        );
        let mut expected: Vec<String> = paths
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        expected.push(info.clone());
        expected.sort();
        assert_eq!(top, expected, "store paths at the image root, nothing else");
        let sys = r.join(system.file_name().expect("name"));
        assert_eq!(
            fs::read_to_string(sys.join("init")).expect("init"),
            "#!/bin/sh\n"
        );
        assert_eq!(
            fs::symlink_metadata(sys.join("init"))
                .expect("meta")
                .permissions()
                .mode()
                & 0o777,
            0o555
        );
        assert!(fs::symlink_metadata(sys.join("sw/bin/libc"))
            .expect("link")
            .is_symlink());
        assert_eq!(
            fs::read(r.join(&info).join("registration")).expect("registration"),
            closure.registration
        );
        let boot = closure.boot();
        assert_eq!(
            boot.init,
            format!(
                "/nix/store/{}/init",
                system.file_name().expect("n").to_string_lossy()
            )
        );
        assert_eq!(boot.reg_info, format!("/nix/store/{info}/registration"));

        // The disk: label and mount point where mkfs.erofs knows them.
        let Ok(mkfs) = Toolbox::from_env().locate("mkfs.erofs") else {
            eprintln!("SKIPPED the erofs part: mkfs.erofs is not installed (erofs-utils)");
            return;
        };
        let opts = DiskOptions {
            disk_type: DiskType::Erofs,
            label: Some(STORE_LABEL.into()),
            mount_point: Some(STORE_DIR.into()),
            ..Default::default()
        };
        let out = tmp.path().join("store.erofs");
        let report = disk::build_disk(r, &out, &opts).expect("mkfs");
        let argv = report.argv.join(" ");
        assert!(
            argv.contains("--all-root") && argv.contains("-T0"),
            "{argv}"
        );
        if report.tool_version >= crate::tools::Version::new(1, 6, 0) {
            assert!(argv.contains("-Lnix-store"), "{argv}");
            assert!(argv.contains("--mount-point=/nix/store"), "{argv}");
        } else {
            eprintln!(
                "{} is {}: no label or mount point (the guest finds the disk as /dev/vda)",
                mkfs.display(),
                report.tool_version
            );
        }
        assert!(report.bytes > 0);
    }

    #[test]
    fn without_nix_store_the_source_is_refused_clearly() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let tools = Toolbox::with_search_path(tmp.path().as_os_str());
        let err = Closure::query(&tools, Path::new("/nix/store/x-system")).expect_err("no nix");
        assert!(
            err.to_string().starts_with(
                "a nix root source needs nix-store on PATH; install Nix or use another source"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_real_closure_where_nix_exists() {
        let tools = Toolbox::from_env();
        if tools.locate(NIX_STORE).is_err() {
            eprintln!("SKIPPED a_real_closure_where_nix_exists: nix-store is not on PATH (no Nix on this host)");
            return;
        }
        let Some(path) = fs::read_link("/run/current-system")
            .ok()
            .or_else(|| fs::read_link("/nix/var/nix/profiles/default").ok())
        else {
            eprintln!(
                "SKIPPED a_real_closure_where_nix_exists: no system or default profile to query"
            );
            return;
        };
        let closure = Closure::query(&tools, &path).expect("query");
        assert!(!closure.paths.is_empty());
        assert!(!closure.registration.is_empty());
    }
}
