//! Applying one OCI layer (a plain, gzip or zstd tar) to the staging tree, with the
//! image-spec's change-set semantics:
//!
//! - `.wh.NAME` deletes `NAME` from the lower layers; `.wh..wh..opq` makes its directory
//!   opaque (everything the lower layers had there is removed). Whiteouts never remove
//!   what the same layer adds, whatever the order of the entries.
//! - An entry replaces what is at its path, except a directory over a directory, which
//!   is merged (its mode and owner become the layer's).
//! - Paths resolve like inside a chroot: a symlink on the way, absolute or relative, is
//!   followed *within* the staging root, never out of it; the entry's own last component
//!   is never followed (a symlink there is replaced).
//! - Hard links point at a path already in the tree (this or a lower layer); modes,
//!   setuid bits, numeric owners (when staging as root) and `SCHILY.xattr.*` extended
//!   attributes are kept; device nodes and fifos are made with mknod.

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::MediaType;
use tar::EntryType;

use super::super::fsops::{self, Special};
use super::super::tarball::{self, Compression};
use super::super::{RootfsError, Stage};
use super::{LayerRef, OciError};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
/// How many symlinks one path may go through (as Linux's MAXSYMLINKS).
const MAX_SYMLINKS: usize = 40;

/// The compression a layer media type declares; `None` for a media type that is not a
/// filesystem layer microvm can apply.
pub(super) fn compression_of(mt: &MediaType) -> Option<Compression> {
    Some(match mt {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Compression::None,
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => Compression::Gzip,
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => Compression::Zstd,
        MediaType::Other(s) => match s.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => Compression::None,
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Compression::Gzip,
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Compression::Zstd,
            _ => return None,
        },
        _ => return None,
    })
}

/// Resolves `rel` below `root` as a chroot would: `..` stops at the root, symlinks are
/// followed inside the root (absolute ones from the root). The last component is
/// followed only when `follow_last`. Missing components are kept as they are.
pub(crate) fn resolve_in_root(
    root: &Path,
    rel: &Path,
    follow_last: bool,
) -> Result<PathBuf, RootfsError> {
    let mut pending: VecDeque<OsString> = parts(rel);
    let mut out = PathBuf::new();
    let mut hops = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            out.pop();
            continue;
        }
        let candidate = out.join(&part);
        if pending.is_empty() && !follow_last {
            out = candidate;
            break;
        }
        let here = root.join(&candidate);
        match fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                let target =
                    fs::read_link(&here).map_err(|e| fsops::io("reading link", &here, e))?;
                if hops > MAX_SYMLINKS {
                    return Err(RootfsError::Escapes {
                        path: root.join(rel),
                        target,
                    });
                }
                if target.is_absolute() {
                    out = PathBuf::new();
                }
                let mut next = parts(&target);
                next.extend(pending);
                pending = next;
            }
            _ => out = candidate,
        }
    }
    Ok(root.join(out))
}

/// The components of `p` as names and `..`; `/` and `.` dropped.
fn parts(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Makes every component of `dir` (below `root`, already resolved) a real directory:
/// missing ones are created 0755, anything else in the way is replaced.
fn ensure_dirs(root: &Path, dir: &Path) -> Result<(), RootfsError> {
    let rel = dir.strip_prefix(root).unwrap_or(Path::new(""));
    let mut at = root.to_path_buf();
    for part in rel.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fsops::clear(&at)?;
                fs::create_dir(&at).map_err(|e| fsops::io("creating directory", &at, e))?;
            }
            Err(_) => {
                fs::create_dir(&at).map_err(|e| fsops::io("creating directory", &at, e))?;
                fsops::set_owner_mode(&at, None, Some(0o755))?;
            }
        }
    }
    Ok(())
}

/// Whether this layer wrote `rel` or something below it.
fn touched(created: &BTreeSet<PathBuf>, rel: &Path) -> bool {
    created
        .range(rel.to_path_buf()..)
        .next()
        .is_some_and(|p| p.starts_with(rel))
}

/// Removes what lower layers left in `dir` (an opaque directory), keeping what this
/// layer wrote.
fn prune_opaque(
    root: &Path,
    dir: &Path,
    created: &BTreeSet<PathBuf>,
    stage: &mut Stage,
) -> Result<(), RootfsError> {
    if !fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let entries: Vec<_> = fs::read_dir(dir)
        .map_err(|e| fsops::io("listing", dir, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| fsops::io("listing", dir, e))?;
    for entry in entries {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if touched(created, &rel) {
            if !created.contains(&rel) || fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                prune_opaque(root, &path, created, stage)?;
            }
        } else {
            fsops::clear(&path)?;
            stage.forget(&path);
        }
    }
    Ok(())
}

pub(super) fn apply(
    blob: &Path,
    layout: &Path,
    l: &LayerRef,
    stage: &mut Stage,
) -> Result<(), RootfsError> {
    let layer_err = |reason: String| OciError::Layer {
        layout: layout.to_owned(),
        digest: l.digest.clone(),
        reason,
    };
    let tar_err = |entry: &str, source| RootfsError::Tar {
        tarball: blob.to_owned(),
        entry: entry.to_owned(),
        source,
    };
    let mut file = File::open(blob).map_err(|e| fsops::io("opening OCI layer", blob, e))?;
    let mut magic = [0u8; 6];
    let n = tarball::read_up_to(&mut file, &mut magic)
        .map_err(|e| fsops::io("reading OCI layer", blob, e))?;
    let by_magic = Compression::sniff(&magic[..n])
        .map_err(|kind| layer_err(format!("{kind} compression is not an OCI layer format")))?;
    let declared = compression_of(&MediaType::from(l.media_type.as_str()))
        .ok_or_else(|| layer_err(format!("media type {} is not a layer", l.media_type)))?;
    let compression = match (by_magic, declared) {
        (Compression::None, Compression::None) => Compression::None,
        (Compression::None, declared) => {
            return Err(layer_err(format!(
                "media type {} says {declared:?}, but the blob is not compressed that way",
                l.media_type
            ))
            .into())
        }
        // The bytes decide (some tools label zstd layers as gzip, or the reverse).
        (found, _) => found,
    };
    let file = BufReader::new(File::open(blob).map_err(|e| fsops::io("opening", blob, e))?);
    let reader: Box<dyn Read> = match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Xz => Box::new(xz2::read::XzDecoder::new_multi_decoder(file)),
        Compression::Zstd => {
            Box::new(zstd::Decoder::with_buffer(file).map_err(|e| tar_err("", e))?)
        }
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(stage.as_root);
    archive.set_preserve_mtime(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);

    let root = stage.canon_root.clone();
    let mut created: BTreeSet<PathBuf> = BTreeSet::new();
    let mut budget = tarball::Budget::default();
    for entry in archive.entries().map_err(|e| tar_err("", e))? {
        let mut entry = entry.map_err(|e| tar_err("<header>", e))?;
        let name = entry.path().map_err(|e| tar_err("<path>", e))?.into_owned();
        let shown = name.display().to_string();
        budget.take(blob, &shown, entry.size())?;
        let unsafe_entry = || RootfsError::UnsafeEntry {
            tarball: blob.to_owned(),
            entry: shown.clone(),
        };
        let rel = fsops::relative_in_root(&name).ok_or_else(unsafe_entry)?;
        let kind = entry.header().entry_type();
        let (Some(file_name), Some(parent)) = (rel.file_name(), rel.parent()) else {
            continue; // `./`: the root keeps its own owner and mode
        };
        if kind.is_pax_global_extensions() {
            continue;
        }
        let file_name = file_name.to_owned();
        let name_str = file_name.to_string_lossy();
        if name_str == OPAQUE {
            let dir = resolve_in_root(&root, parent, true)?;
            prune_opaque(&root, &dir, &created, stage)?;
            continue;
        }
        if let Some(victim) = name_str.strip_prefix(WHITEOUT_PREFIX) {
            if victim.starts_with(WHITEOUT_PREFIX) || victim.is_empty() {
                continue; // other aufs metadata (`.wh..wh.plnk`, …)
            }
            let path = resolve_in_root(&root, parent, true)?.join(victim);
            let rel = path.strip_prefix(&root).unwrap_or(&path).to_path_buf();
            if !touched(&created, &rel) {
                fsops::clear(&path)?;
                stage.forget(&path);
            }
            continue;
        }
        let dir = resolve_in_root(&root, parent, true)?;
        ensure_dirs(&root, &dir)?;
        let dest = dir.join(&file_name);
        match kind {
            EntryType::Directory => {
                if fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    fsops::clear(&dest)?;
                }
                entry.unpack(&dest).map_err(|e| tar_err(&shown, e))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| tar_err(&shown, e))?
                    .ok_or_else(unsafe_entry)?
                    .into_owned();
                let target = fsops::relative_in_root(&target).ok_or_else(unsafe_entry)?;
                let source = resolve_in_root(&root, &target, false)?;
                if source == dest {
                    continue;
                }
                fsops::clear(&dest)?;
                fs::hard_link(&source, &dest).map_err(|e| tar_err(&shown, e))?;
            }
            EntryType::Fifo | EntryType::Char | EntryType::Block => {
                let special = match kind {
                    EntryType::Fifo => Special::Fifo,
                    EntryType::Char => Special::Char,
                    _ => Special::Block,
                };
                fsops::clear(&dest)?;
                tarball::make_special(&mut entry, &dest, special, stage)
                    .map_err(|e| tar_err(&shown, e))?;
            }
            _ => {
                fsops::clear(&dest)?;
                entry.unpack(&dest).map_err(|e| tar_err(&shown, e))?;
            }
        }
        set_xattrs(&mut entry, &dest, stage).map_err(|e| tar_err(&shown, e))?;
        let rel = dest.strip_prefix(&root).unwrap_or(&dest).to_path_buf();
        created.insert(rel);
        stage.record(&dest);
    }
    Ok(())
}

/// Sets the entry's `SCHILY.xattr.*` attributes on `dest` (not following a symlink);
/// one the staging filesystem refuses is recorded as skipped.
fn set_xattrs<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    stage: &mut Stage,
) -> std::io::Result<()> {
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(());
    };
    let mut failed = Vec::new();
    for ext in exts {
        let ext = ext?;
        let Ok(key) = ext.key() else { continue };
        let Some(name) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if let Err(e) = rustix::fs::lsetxattr(
            dest,
            name,
            ext.value_bytes(),
            rustix::fs::XattrFlags::empty(),
        ) {
            failed.push(format!("{name} ({e})"));
        }
    }
    if !failed.is_empty() {
        stage.skip(dest, format!("xattrs not set: {}", failed.join(", ")));
    }
    Ok(())
}
