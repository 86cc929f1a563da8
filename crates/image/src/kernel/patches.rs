//! microvm's own patches to the guest kernel's source, applied to a tarball's tree when it
//! is unpacked (a source tree the user points at is built as it is: microvm does not
//! write into it). Each patch says in its header what it changes and why; the store key
//! and `build-info.json` name them, so a changed patch builds a new kernel.

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

/// The patches' names, in order.
pub fn names(patches: &[Patch]) -> Vec<&'static str> {
    patches.iter().map(|(name, _)| *name).collect()
}

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

/// Applies `patches` to the freshly unpacked tree `src`, writing each one to `dir`
/// first; a patch that does not apply (another kernel version) fails the build with
/// patch's own words.
pub fn apply(
    src: &Path,
    patches: &[Patch],
    dir: &Path,
    progress: &mut dyn FnMut(&str),
) -> Result<(), KernelBuildError> {
    fs::create_dir_all(dir).map_err(io("creating", dir))?;
    for (name, text) in patches {
        progress(&format!("applying the patch {name}"));
        let file = dir.join(name);
        fs::write(&file, text).map_err(io("writing", &file))?;
        tools::run(
            Command::new("patch")
                .current_dir(src)
                .args(["-p1", "--forward", "--batch", "--reject-file=-", "-i"])
                .arg(&file),
        )?;
    }
    Ok(())
}
