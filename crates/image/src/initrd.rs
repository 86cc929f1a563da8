//! The initrd: a reproducible cpio (newc) archive with the guest init as `/init`, its plan,
//! and the kernel modules the VM needs.
//!
//! Reproducible: entries sorted by path, mtime 0, uid/gid 0, inode numbers counted up
//! from 1, a fixed compression level (uncompressed by default: [`InitrdCompression`]), so
//! the same inputs give the same bytes. After compression the file is zero-padded to `size % 4096 == 64`: qemu's `microvm` machine
//! (SeaBIOS) loads the initrd at the top of RAM, where its tail would overwrite the ACPI
//! tables for most other sizes (trap C of the TCG notes); the kernel skips trailing zeros.
//!
//! The `cpio` crate's newc writer is used for every entry: it takes a full mode and
//! `rdev`, so the `/dev/console` character node (5, 1) needs no hand-written header.

#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use microvm_init::plan::{GuestPlan, MODULES_DIR, PLAN_PATH};

use crate::modules::{ModulesError, ResolvedModule};

/// Errors of initrd building.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write initrd {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initrd entry {path} is {size} bytes; cpio newc allows at most 4 GiB")]
    TooLarge { path: String, size: usize },
    #[error("initrd entry {path} is not an absolute path with plain components")]
    BadPath { path: String },
    #[error("cannot compress the initrd")]
    Compress(#[source] std::io::Error),
    #[error(transparent)]
    Module(#[from] ModulesError),
}

/// How the cpio archive is compressed. Every kernel with initrd support unpacks a plain
/// cpio; Debian kernels also unpack gzip, xz and zstd, microvm's own gzip and zstd.
///
/// The default is none: the guest kernel's decompression is boot time, and under TCG it
/// costs more than the larger file (microvm kernel, 1.5 MB cpio: unpacked in 14 ms plain,
/// 64 ms from gzip, 139 ms from zstd, guest uptime; cloud kernel with its modules, 2.5 MB:
/// 125 ms against 173 ms from gzip; docs/benchmarks.md). Reading the larger file costs
/// the hypervisor next to nothing (page cache), under KVM too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitrdCompression {
    #[default]
    None,
    /// gzip at level 6 (flate2's Rust backend).
    Gzip,
    /// zstd at level 9.
    Zstd,
}

const GZIP_LEVEL: u32 = 6;
const ZSTD_LEVEL: i32 = 9;
/// The padded size satisfies `size % PAD_BLOCK == PAD_REMAINDER`.
pub const PAD_BLOCK: usize = 4096;
pub const PAD_REMAINDER: usize = 64;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Char { mode: u32, major: u32, minor: u32 },
}

/// Builds an initrd in memory.
#[derive(Debug, Clone)]
pub struct InitrdBuilder {
    /// Keyed by the path without its leading `/`.
    entries: BTreeMap<String, Node>,
    compression: InitrdCompression,
}

impl Default for InitrdBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// `/a/b` → `a/b`, refusing empty, relative, `.` and `..` components.
fn key(path: &str) -> Result<String, InitrdError> {
    let bad = || InitrdError::BadPath {
        path: path.to_string(),
    };
    let rel = path.strip_prefix('/').ok_or_else(bad)?;
    if rel.is_empty()
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(rel.to_string())
}

impl InitrdBuilder {
    /// An initrd with `/dev /proc /sys /run /newroot /tmp` and `/dev/console` (5, 1), so
    /// the kernel has a console for the init before devtmpfs is mounted.
    pub fn new() -> Self {
        let mut entries = BTreeMap::new();
        for dir in ["dev", "proc", "sys", "run", "newroot"] {
            entries.insert(dir.to_string(), Node::Dir { mode: 0o755 });
        }
        entries.insert("tmp".to_string(), Node::Dir { mode: 0o1777 });
        entries.insert(
            "dev/console".to_string(),
            Node::Char {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        Self {
            entries,
            compression: InitrdCompression::default(),
        }
    }

    pub fn compression(mut self, compression: InitrdCompression) -> Self {
        self.compression = compression;
        self
    }

    /// Adds a directory (and its parents).
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<&mut Self, InitrdError> {
        let key = key(path)?;
        self.parents(&key);
        self.entries.insert(
            key,
            Node::Dir {
                mode: mode & 0o7777,
            },
        );
        Ok(self)
    }

    /// Adds a regular file (and its parent directories, mode 0755).
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        data: Vec<u8>,
    ) -> Result<&mut Self, InitrdError> {
        let key = key(path)?;
        if u32::try_from(data.len()).is_err() {
            return Err(InitrdError::TooLarge {
                path: path.to_string(),
                size: data.len(),
            });
        }
        self.parents(&key);
        self.entries.insert(
            key,
            Node::File {
                mode: mode & 0o7777,
                data,
            },
        );
        Ok(self)
    }

    fn parents(&mut self, key: &str) {
        let mut at = 0;
        while let Some(i) = key[at..].find('/') {
            let parent = &key[..at + i];
            self.entries
                .entry(parent.to_string())
                .or_insert(Node::Dir { mode: 0o755 });
            at += i + 1;
        }
    }

    /// The guest init as `/init` (mode 0755).
    pub fn init(&mut self, binary: Vec<u8>) -> Result<&mut Self, InitrdError> {
        self.add_file("/init", 0o755, binary)
    }

    /// The guest init read from a file.
    pub fn init_from(&mut self, path: &Path) -> Result<&mut Self, InitrdError> {
        let data = fs::read(path).map_err(|source| InitrdError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        self.init(data)
    }

    /// The guest plan as JSON at [`PLAN_PATH`].
    pub fn plan(&mut self, plan: &GuestPlan) -> Result<&mut Self, InitrdError> {
        self.add_file(PLAN_PATH, 0o644, plan.to_json().into_bytes())
    }

    /// Adds the modules, decompressed to plain `.ko` (no `Invalid ELF header magic` noise
    /// and faster to load), as `MODULES_DIR/<name>.ko`. Returns their paths in the initrd,
    /// in the given (load) order, for [`GuestPlan::modules`].
    pub fn add_modules(&mut self, modules: &[ResolvedModule]) -> Result<Vec<String>, InitrdError> {
        let mut paths = Vec::with_capacity(modules.len());
        for m in modules {
            let path = format!("{MODULES_DIR}/{}.ko", m.name);
            self.add_file(&path, 0o644, m.read_plain()?)?;
            paths.push(path);
        }
        Ok(paths)
    }

    /// The uncompressed cpio archive.
    pub fn cpio(&self) -> Result<Vec<u8>, InitrdError> {
        let mut out = Vec::new();
        for (i, (name, node)) in self.entries.iter().enumerate() {
            let ino = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let header = cpio::newc::Builder::new(name)
                .ino(ino)
                .uid(0)
                .gid(0)
                .mtime(0);
            let (header, data): (_, &[u8]) = match node {
                Node::Dir { mode } => (header.mode(S_IFDIR | mode).nlink(2), &[]),
                Node::File { mode, data } => (header.mode(S_IFREG | mode).nlink(1), data),
                Node::Char { mode, major, minor } => (
                    header
                        .mode(S_IFCHR | mode)
                        .nlink(1)
                        .rdev_major(*major)
                        .rdev_minor(*minor),
                    &[],
                ),
            };
            // `add_file` checked the size.
            let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
            let mut w = header.write(&mut out, size);
            w.write_all(data).map_err(InitrdError::Compress)?;
            w.finish().map_err(InitrdError::Compress)?;
        }
        cpio::newc::trailer(&mut out).map_err(InitrdError::Compress)?;
        Ok(out)
    }

    /// The finished initrd: compressed and padded.
    pub fn build(&self) -> Result<Vec<u8>, InitrdError> {
        let cpio = self.cpio()?;
        let mut out = match self.compression {
            InitrdCompression::None => cpio,
            InitrdCompression::Gzip => {
                let mut enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::new(GZIP_LEVEL));
                enc.write_all(&cpio).map_err(InitrdError::Compress)?;
                enc.finish().map_err(InitrdError::Compress)?
            }
            InitrdCompression::Zstd => {
                zstd::encode_all(&cpio[..], ZSTD_LEVEL).map_err(InitrdError::Compress)?
            }
        };
        pad(&mut out);
        Ok(out)
    }

    /// Builds and writes the initrd atomically (temporary file in the same directory,
    /// then rename). Returns its size.
    pub fn write_to(&self, path: &Path) -> Result<u64, InitrdError> {
        let bytes = self.build()?;
        write_atomic(path, &bytes)?;
        Ok(bytes.len() as u64)
    }
}

/// Appends zeros until `len % PAD_BLOCK == PAD_REMAINDER`.
pub fn pad(out: &mut Vec<u8>) {
    let rem = out.len() % PAD_BLOCK;
    let add = (PAD_REMAINDER + PAD_BLOCK - rem) % PAD_BLOCK;
    out.resize(out.len() + add, 0);
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), InitrdError> {
    let err = |source| InitrdError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests;
