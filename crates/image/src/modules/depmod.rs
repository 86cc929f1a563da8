//! Creating `modules.dep` with the real `depmod` (kmod) for trees that ship none.
//!
//! depmod only works on `<base>/lib/modules/<version>`. A writable tree of that shape is
//! indexed in place; any other tree gets a shadow `<cache>/depmod/<version>/lib/modules/
//! <version>` whose entries are symlinks to the real tree (depmod follows them), and the
//! index is written there. Module paths in the index are relative, so they resolve against
//! the real tree.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::ModulesError;

/// Index files depmod writes; they are not linked into the shadow tree.
const GENERATED: &[&str] = &[
    "modules.dep",
    "modules.dep.bin",
    "modules.alias",
    "modules.alias.bin",
    "modules.softdep",
    "modules.weakdep",
    "modules.symbols",
    "modules.symbols.bin",
    "modules.builtin.bin",
    "modules.builtin.alias.bin",
    "modules.devname",
];

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModulesError + '_ {
    move |source| ModulesError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Finds `depmod` on `PATH` or in the sbin directories (often not on a user's `PATH`).
fn find_depmod() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join("depmod"))
        .find(|p| p.is_file())
}

/// The `<base>` of `<base>/lib/modules/<version>`, if the tree has that shape.
fn base_of(modules_dir: &Path) -> Option<&Path> {
    let modules = modules_dir.parent()?;
    let lib = modules.parent()?;
    (modules.file_name()? == "modules" && lib.file_name()? == "lib").then_some(lib.parent()?)
}

fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".microvm-probe-{}", std::process::id()));
    let ok = fs::write(&probe, b"").is_ok();
    let _ = fs::remove_file(&probe);
    ok
}

/// Runs depmod for `modules_dir` and returns the directory holding the new index.
pub(super) fn run(
    modules_dir: &Path,
    version: &str,
    cache_dir: &Path,
) -> Result<PathBuf, ModulesError> {
    if !modules_dir.is_dir() {
        return Err(ModulesError::Io {
            path: modules_dir.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such directory"),
        });
    }
    let depmod = find_depmod().ok_or_else(|| ModulesError::DepmodMissing {
        dir: modules_dir.to_path_buf(),
    })?;
    if let Some(base) = base_of(modules_dir).filter(|_| writable(modules_dir)) {
        invoke(&depmod, base, version, modules_dir)?;
        return Ok(modules_dir.to_path_buf());
    }
    let base = cache_dir.join("depmod").join(version);
    let shadow = base.join("lib/modules").join(version);
    if shadow.join("modules.dep").is_file() {
        return Ok(shadow);
    }
    fs::create_dir_all(&shadow).map_err(io(&shadow))?;
    let real = fs::canonicalize(modules_dir).map_err(io(modules_dir))?;
    for entry in fs::read_dir(&real).map_err(io(&real))? {
        let entry = entry.map_err(io(&real))?;
        let name = entry.file_name();
        if GENERATED.iter().any(|g| name == *g) {
            continue;
        }
        let link = shadow.join(&name);
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), &link).map_err(io(&link))?;
    }
    invoke(&depmod, &base, version, modules_dir)?;
    Ok(shadow)
}

fn invoke(
    depmod: &Path,
    base: &Path,
    version: &str,
    modules_dir: &Path,
) -> Result<(), ModulesError> {
    tracing::debug!(depmod = %depmod.display(), base = %base.display(), version, "running depmod");
    let output = Command::new(depmod)
        .arg("-b")
        .arg(base)
        .arg(version)
        .output()
        .map_err(io(depmod))?;
    if !output.status.success() {
        return Err(ModulesError::Depmod {
            version: version.to_string(),
            dir: modules_dir.to_path_buf(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}
