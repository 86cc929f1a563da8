//! Kernel intake: find the boot image, its uncompressed ELF, its module tree and its
//! configuration, whatever form the kernel comes in, and say what the kernel can do.
//!
//! Sources ([`KernelSource`]): a single image file (bzImage or ELF `vmlinux`), a directory
//! (a Nix kernel output, or an unpacked tree with `boot/vmlinuz-*`), or a Debian
//! `linux-image-*.deb`, unpacked in Rust into a cache directory.
//!
//! firecracker, cloud-hypervisor and crosvm boot only the ELF (with its PVH note), and qemu
//! boots it faster than the bzImage under TCG, so [`KernelInfo::ensure_vmlinux`] extracts
//! it from the bzImage when the source has none.

#![forbid(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};

pub mod build;
pub mod bzimage;
pub mod config;
mod deb;
pub mod elf;
mod layout;
pub mod patches;

pub use bzimage::{extract_vmlinux, ImageFormat, PayloadCompression, Vmlinux};
pub use config::{Availability, FsCompression, KernelConfig, KernelFeature};
pub use deb::unpack_deb;

/// Errors of kernel intake.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel {path} does not exist")]
    NotFound { path: PathBuf },
    #[error("{path} is neither a bzImage nor an ELF kernel")]
    UnknownFormat { path: PathBuf },
    #[error("kernel image {path} is malformed: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("cannot decompress the {compression:?} payload of kernel {path}")]
    Decompress {
        path: PathBuf,
        compression: PayloadCompression,
        #[source]
        source: std::io::Error,
    },
    #[error("the payload of kernel {path} is {compression:?}-compressed, which microvm cannot decompress; use a gzip, xz, zstd or lz4 kernel, or give its vmlinux")]
    UnsupportedCompression {
        path: PathBuf,
        compression: PayloadCompression,
    },
    #[error("no kernel image in {dir} (looked for bzImage, Image, vmlinux, boot/vmlinuz-*)")]
    NoImage { dir: PathBuf },
    #[error("{dir} holds several kernels ({}); give the image file instead", candidates.join(", "))]
    Ambiguous {
        dir: PathBuf,
        candidates: Vec<String>,
    },
    #[error("debian package {path}: {reason}")]
    Deb { path: PathBuf, reason: String },
    #[error("kernel {kernel} has no {feature} support ({option} is not set); {hint}")]
    MissingFeature {
        kernel: PathBuf,
        feature: KernelFeature,
        option: String,
        hint: &'static str,
    },
}

/// Where a kernel comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KernelSource {
    /// A bzImage or an ELF `vmlinux`.
    File(PathBuf),
    /// A Nix kernel output or an unpacked tree (`boot/`, `lib/modules/`).
    Directory(PathBuf),
    /// A Debian kernel package.
    Deb(PathBuf),
}

impl KernelSource {
    /// Classifies a path: a directory, a `.deb` (by its `ar` magic), or an image file.
    pub fn from_path(path: &Path) -> Result<Self, KernelError> {
        let meta = fs::metadata(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => KernelError::NotFound {
                path: path.to_path_buf(),
            },
            _ => KernelError::Io {
                path: path.to_path_buf(),
                source,
            },
        })?;
        if meta.is_dir() {
            return Ok(Self::Directory(path.to_path_buf()));
        }
        let mut magic = [0u8; 8];
        let n = {
            use std::io::Read;
            let mut f = fs::File::open(path).map_err(|source| KernelError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            f.read(&mut magic).map_err(|source| KernelError::Io {
                path: path.to_path_buf(),
                source,
            })?
        };
        if &magic[..n] == b"!<arch>\n" {
            Ok(Self::Deb(path.to_path_buf()))
        } else {
            Ok(Self::File(path.to_path_buf()))
        }
    }
}

/// Everything known about one kernel.
#[derive(Debug, Clone)]
pub struct KernelInfo {
    /// The kernel release (`uname -r`), e.g. `6.12.117+deb12-cloud-amd64`.
    pub version: Option<String>,
    /// The boot image: the bzImage, or the ELF when only an ELF was given.
    pub image: PathBuf,
    /// The uncompressed ELF, when the source has one or it was extracted.
    pub vmlinux: Option<PathBuf>,
    /// Whether [`Self::vmlinux`] has the PVH entry note; `None` until checked.
    pub vmlinux_pvh: Option<bool>,
    /// `lib/modules/<version>`.
    pub modules_dir: Option<PathBuf>,
    pub config: Option<KernelConfig>,
}

impl KernelInfo {
    /// Finds the parts of a kernel. A `.deb` is unpacked under `cache_dir`; nothing is
    /// decompressed yet (see [`Self::ensure_vmlinux`]).
    pub fn load(source: &KernelSource, cache_dir: &Path) -> Result<Self, KernelError> {
        match source {
            KernelSource::File(path) => layout::from_file(path),
            KernelSource::Directory(dir) => layout::from_dir(dir),
            KernelSource::Deb(deb) => layout::from_dir(&unpack_deb(deb, cache_dir)?),
        }
    }

    /// [`KernelSource::from_path`] then [`Self::load`].
    pub fn from_path(path: &Path, cache_dir: &Path) -> Result<Self, KernelError> {
        Self::load(&KernelSource::from_path(path)?, cache_dir)
    }

    /// What the configuration says about `feature` (`Unknown` without a configuration).
    pub fn supports(&self, feature: KernelFeature) -> Availability {
        config::availability(self.config.as_ref(), feature)
    }

    /// Like [`Self::supports`], but a missing feature is an error naming the kernel.
    pub fn require(&self, feature: KernelFeature) -> Result<Availability, KernelError> {
        match self.supports(feature) {
            Availability::Missing { option } => Err(KernelError::MissingFeature {
                kernel: self.image.clone(),
                feature,
                option,
                hint: feature.hint(),
            }),
            other => Ok(other),
        }
    }

    /// The modules to load for `features`, each once, in the order given (their
    /// dependencies come from [`crate::modules::ModuleIndex::resolve`]). Built-in features
    /// need none; with no configuration every module the feature may need is listed, and
    /// the module index skips the built-in ones. A missing feature is an error.
    pub fn modules_for(&self, features: &[KernelFeature]) -> Result<Vec<String>, KernelError> {
        let mut out: Vec<String> = Vec::new();
        for &feature in features {
            let names = match self.require(feature)? {
                Availability::Module(names) => names,
                Availability::Unknown => feature
                    .module_names()
                    .into_iter()
                    .map(String::from)
                    .collect(),
                Availability::Builtin | Availability::Missing { .. } => Vec::new(),
            };
            for name in names {
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
        Ok(out)
    }

    /// Makes sure [`Self::vmlinux`] exists: extracts it from the bzImage into `cache_dir`
    /// when needed (named by version and image size and mtime, and reused), and checks its
    /// PVH note. Returns its path.
    pub fn ensure_vmlinux(&mut self, cache_dir: &Path) -> Result<&Path, KernelError> {
        if let Some(path) = &self.vmlinux {
            if self.vmlinux_pvh.is_none() {
                let pvh = elf::file_has_pvh_note(path).map_err(|source| KernelError::Io {
                    path: path.clone(),
                    source,
                })?;
                self.vmlinux_pvh = Some(pvh);
            }
        } else {
            let (path, pvh) =
                layout::extract_cached(&self.image, self.version.as_deref(), cache_dir)?;
            self.vmlinux = Some(path);
            self.vmlinux_pvh = Some(pvh);
        }
        Ok(self.vmlinux.as_deref().unwrap_or(&self.image))
    }
}

#[cfg(test)]
mod real_tests;
