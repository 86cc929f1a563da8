//! A directory source: copied into the staging root without following symlinks,
//! keeping modes, owners (as root), hard links within the source, xattrs, device nodes
//! and fifos.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::fsops::{self, Special};
use super::{RootfsError, Stage};

pub fn apply(src: &Path, stage: &mut Stage) -> Result<(), RootfsError> {
    let meta = fs::metadata(src).map_err(|e| fsops::io("reading source directory", src, e))?;
    if !meta.is_dir() {
        return Err(RootfsError::NotADirectory {
            path: src.to_owned(),
        });
    }
    let mut links = HashMap::new();
    let root = stage.root.clone();
    copy_dir(src, &root, stage, &mut links)
}

/// Copies the entries of `src` into `dst` (a real directory inside the staging root).
pub(super) fn copy_dir(
    src: &Path,
    dst: &Path,
    stage: &mut Stage,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), RootfsError> {
    let mut entries: Vec<_> = fs::read_dir(src)
        .map_err(|e| fsops::io("reading directory", src, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| fsops::io("reading directory", src, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = fs::symlink_metadata(&from).map_err(|e| fsops::io("reading", &from, e))?;
        let owner = stage.as_root.then(|| (meta.uid(), meta.gid()));
        let mode = meta.mode();
        let ft = meta.file_type();
        if ft.is_dir() {
            fsops::ensure_dir(&to)?;
            copy_dir(&from, &to, stage, links)?;
            fsops::set_owner_mode(&to, owner, Some(mode))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|e| fsops::io("reading link", &from, e))?;
            fsops::clear(&to)?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| fsops::io("creating symlink", &to, e))?;
            fsops::set_owner_mode(&to, owner, None)?;
        } else if ft.is_file() {
            fsops::clear(&to)?;
            let key = (meta.dev(), meta.ino());
            if meta.nlink() > 1 {
                if let Some(first) = links.get(&key) {
                    fs::hard_link(first, &to).map_err(|e| fsops::io("hard linking", &to, e))?;
                    stage.record(&to);
                    continue;
                }
                links.insert(key, to.clone());
            }
            fs::copy(&from, &to).map_err(|e| fsops::io("copying to", &to, e))?;
            fsops::set_owner_mode(&to, owner, Some(mode))?;
        } else {
            let kind = if ft.is_fifo() {
                Special::Fifo
            } else if ft.is_char_device() {
                Special::Char
            } else if ft.is_block_device() {
                Special::Block
            } else {
                stage.skip(&to, "socket not copied".into());
                continue;
            };
            fsops::clear(&to)?;
            if let Err(e) = fsops::mknod(&to, kind, mode, meta.rdev()) {
                stage.skip(&to, format!("{kind:?} node not created: {e}"));
                continue;
            }
            fsops::set_owner_mode(&to, owner, Some(mode))?;
        }
        stage.record(&to);
        let failed = fsops::copy_xattrs(&from, &to);
        if !failed.is_empty() {
            stage.skip(&to, format!("xattrs not copied: {}", failed.join(", ")));
        }
    }
    Ok(())
}
