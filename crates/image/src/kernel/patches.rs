//! microvm's own patches to the guest kernel's source, applied to a tarball's tree when it
//! is unpacked (a source tree the user points at is built as it is: microvm does not
//! write into it). Each patch says in its header what it changes and why; the store key
//! covers them, so a changed patch builds a new kernel, and `build-info.json` names the
//! ones that applied (one written for another kernel version is skipped with a warning).

use std::fs;
use std::path::Path;
use std::process::Command;

use super::build::{io, KernelBuildError};
use crate::tools;

/// A patch: its file name and text.
pub type Patch = (&'static str, &'static str);

/// microvm's patches, applied in order with `patch -p1`.
pub const PATCHES: &[Patch] = &[(
    "qemu-tcg-lapic-timer.patch",
    include_str!("patches/qemu-tcg-lapic-timer.patch"),
)];

/// What identifies the patch set (names and texts): part of the tree's stamp and the key.
pub fn identity(patches: &[Patch]) -> String {
    let mut hasher = blake3::Hasher::new();
    for (name, text) in patches {
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(text.as_bytes());
        hasher.update(&[0]);
    }
    hasher.finalize().to_hex()[..16].to_owned()
}

/// Applies `patches` to the freshly unpacked tree `src`, writing each one to `dir` first;
/// the names of those that applied. A patch that does not apply to this source (written
/// for another kernel version) is skipped with a warning and patch's own words: the
/// kernel builds as before, without what that patch saves.
pub fn apply(
    src: &Path,
    patches: &[Patch],
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<Vec<&'static str>, KernelBuildError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let mut applied = Vec::new();
    for (name, text) in patches {
        let file = dir.join(name);
        fs::write(&file, text).map_err(io("writing", &file))?;
        let patch = |dry_run: bool| {
            let mut cmd = Command::new("patch");
            cmd.current_dir(src)
                .args(["-p1", "--forward", "--batch", "--reject-file=-"]);
            if dry_run {
                cmd.arg("--dry-run");
            }
            tools::run(cmd.arg("-i").arg(&file))
        };
        if let Err(e) = patch(true) {
            progress(&format!(
                "warning: microvm's patch {name} does not apply to this source, building without it: {e}"
            ));
            continue;
        }
        progress(&format!("applying the patch {name}"));
        patch(false)?;
        applied.push(*name);
    }
    Ok(applied)
}
