//! A tarball source: plain, gzip, xz or zstd (told apart by magic, not by name),
//! extracted with the `tar` crate's `unpack_in` (which refuses to write outside the
//! root); `..` entries are an error, device nodes and fifos are made with mknod.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use tar::EntryType;

use super::fsops::{self, Special};
use super::{RootfsError, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// From the first bytes of the file; `Err(name)` for a compression we cannot read.
    pub fn sniff(magic: &[u8]) -> Result<Self, &'static str> {
        Ok(match magic {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Compression::Xz,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            [b'B', b'Z', b'h', ..] => return Err("bzip2"),
            [0x04, 0x22, 0x4d, 0x18, ..] => return Err("lz4"),
            _ => Compression::None,
        })
    }
}

pub fn apply(tarball: &Path, stage: &mut Stage) -> Result<(), RootfsError> {
    let tar_err = |entry: &str, source| RootfsError::Tar {
        tarball: tarball.to_owned(),
        entry: entry.to_owned(),
        source,
    };
    let mut file = File::open(tarball).map_err(|e| fsops::io("opening tarball", tarball, e))?;
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| fsops::io("reading", tarball, e))?;
    let compression = Compression::sniff(&magic[..n]).map_err(|kind| RootfsError::Compression {
        tarball: tarball.to_owned(),
        kind,
    })?;
    let file = File::open(tarball).map_err(|e| fsops::io("opening tarball", tarball, e))?;
    let file = BufReader::new(file);
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
    archive.set_unpack_xattrs(true);
    archive.set_overwrite(true);

    let mut budget = Budget::default();
    for entry in archive.entries().map_err(|e| tar_err("", e))? {
        let mut entry = entry.map_err(|e| tar_err("<header>", e))?;
        let name = entry.path().map_err(|e| tar_err("<path>", e))?.into_owned();
        let shown = name.display().to_string();
        budget.take(tarball, &shown, entry.size())?;
        let Some(rel) = fsops::relative_in_root(&name) else {
            return Err(RootfsError::UnsafeEntry {
                tarball: tarball.to_owned(),
                entry: shown,
            });
        };
        if rel.as_os_str().is_empty() {
            continue; // `./`: the staging root keeps its own owner and mode
        }
        let kind = entry.header().entry_type();
        let dest = fsops::resolve_inside(&stage.canon_root, &stage.root.join(&rel))?;
        if kind.is_dir() {
            if std::fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                fsops::clear(&dest)?;
            }
        } else if !kind.is_pax_global_extensions() {
            fsops::clear(&dest)?;
        }
        let special = match kind {
            EntryType::Fifo => Some(Special::Fifo),
            EntryType::Char => Some(Special::Char),
            EntryType::Block => Some(Special::Block),
            _ => None,
        };
        if let Some(special) = special {
            make_special(&mut entry, &dest, special, stage).map_err(|e| tar_err(&shown, e))?;
            stage.record(&dest);
            continue;
        }
        let inside = entry
            .unpack_in(&stage.root)
            .map_err(|e| tar_err(&shown, e))?;
        if !inside {
            return Err(RootfsError::UnsafeEntry {
                tarball: tarball.to_owned(),
                entry: shown,
            });
        }
        stage.record(&dest);
    }
    Ok(())
}

/// tar-rs writes device nodes and fifos as empty regular files; make the real thing,
/// or record that it was skipped (device nodes need root).
pub(super) fn make_special<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    dest: &Path,
    kind: Special,
    stage: &mut Stage,
) -> std::io::Result<()> {
    let header = entry.header();
    let mode = header.mode()?;
    // A fifo has no device number (some writers leave the fields blank).
    let (major, minor) = match kind {
        Special::Fifo => (0, 0),
        _ => (
            header.device_major()?.unwrap_or(0),
            header.device_minor()?.unwrap_or(0),
        ),
    };
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let rdev = rustix::fs::makedev(major, minor);
    if let Err(e) = fsops::mknod(dest, kind, mode, rdev) {
        stage.skip(dest, format!("{kind:?} node not created: {e}"));
        return Ok(());
    }
    let owner = stage.as_root.then(|| (header.uid(), header.gid()));
    let owner = match owner {
        Some((Ok(u), Ok(g))) => Some((u as u32, g as u32)),
        _ => None,
    };
    fsops::set_owner_mode(dest, owner, Some(mode)).map_err(std::io::Error::other)
}

pub(super) fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The most entries and bytes one tarball (or OCI layer) may unpack: a decompression bomb
/// or an endless stream stops with an error instead of filling the disk.
pub(crate) const MAX_ENTRIES: u64 = 2_000_000;
pub(crate) const MAX_BYTES: u64 = 64 << 30;

/// What a tarball has unpacked so far.
#[derive(Debug, Default)]
pub(crate) struct Budget {
    entries: u64,
    bytes: u64,
}

impl Budget {
    /// Counts one entry of `size` bytes; an error past [`MAX_ENTRIES`] or [`MAX_BYTES`].
    pub(crate) fn take(
        &mut self,
        tarball: &Path,
        entry: &str,
        size: u64,
    ) -> Result<(), RootfsError> {
        self.entries += 1;
        self.bytes = self.bytes.saturating_add(size);
        let what = if self.entries > MAX_ENTRIES {
            format!("more than {MAX_ENTRIES} entries")
        } else if self.bytes > MAX_BYTES {
            format!("more than {} GiB of contents", MAX_BYTES >> 30)
        } else {
            return Ok(());
        };
        Err(RootfsError::TooLarge {
            tarball: tarball.to_owned(),
            entry: entry.to_owned(),
            what,
        })
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn entries_and_bytes_are_bounded() {
        let tar = Path::new("/x.tar");
        let mut b = Budget::default();
        b.take(tar, "a", MAX_BYTES).expect("exactly the limit");
        let err = b.take(tar, "b", 1).expect_err("one byte more");
        assert_eq!(
            err.to_string(),
            "tarball /x.tar: more than 64 GiB of contents (at entry \"b\"); a root image is smaller than that"
        );
        let mut b = Budget::default();
        for _ in 0..MAX_ENTRIES {
            b.take(tar, "e", 0).expect("within");
        }
        let err = b.take(tar, "last", 0).expect_err("too many");
        assert!(
            err.to_string().contains("more than 2000000 entries"),
            "{err}"
        );
    }
}
