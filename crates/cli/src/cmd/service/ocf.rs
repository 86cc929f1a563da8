//! The Pacemaker resource agent `ocf:microvm:vm` (scripts/ocf/microvm-vm, built into the
//! binary), installed by `microvm host install` where Pacemaker's OCF tree exists.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The agent's text.
pub const AGENT: &str = include_str!("../../../../../scripts/ocf/microvm-vm");
/// Where Pacemaker looks for OCF agents.
pub const OCF_ROOT: &str = "/usr/lib/ocf";

/// Writes `<ocf_root>/resource.d/microvm/vm` (0755) when `<ocf_root>/resource.d` exists;
/// `None` when it does not (Pacemaker is not installed).
pub fn install(ocf_root: &Path) -> anyhow::Result<Option<PathBuf>> {
    let providers = ocf_root.join("resource.d");
    if !providers.is_dir() {
        return Ok(None);
    }
    let dir = providers.join("microvm");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("vm");
    let tmp = dir.join(".vm.tmp");
    std::fs::write(&tmp, AGENT).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("installing {}", path.display()))?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_only_into_an_existing_ocf_tree() {
        let root = tempfile::tempdir().expect("tempdir");
        assert_eq!(install(root.path()).expect("no tree"), None);
        std::fs::create_dir(root.path().join("resource.d")).expect("mkdir");
        let path = install(root.path()).expect("install").expect("installed");
        assert_eq!(path, root.path().join("resource.d/microvm/vm"));
        assert_eq!(std::fs::read_to_string(&path).expect("read"), AGENT);
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
