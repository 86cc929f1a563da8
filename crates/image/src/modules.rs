//! Kernel module resolution: which `.ko` files, in which order, give the guest the
//! modules it needs.
//!
//! The closure comes from `modules.dep` (plus the `pre:` soft dependencies of
//! `modules.softdep`), in load order: dependencies before dependents, each module once.
//! Modules listed in `modules.builtin` need nothing. A tree without `modules.dep` (Debian
//! packages ship none) is indexed with the real `depmod` from kmod: in place when the tree
//! is writable, otherwise in a cache directory that links to the tree.

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

mod depmod;
mod index;

/// Errors of module resolution.
#[derive(Debug, thiserror::Error)]
pub enum ModulesError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module {module} is neither built into kernel {version} nor in {dir}")]
    NotFound {
        module: String,
        version: String,
        dir: PathBuf,
    },
    #[error("{dir} has no modules.dep and depmod (from kmod) is not installed to create it")]
    DepmodMissing { dir: PathBuf },
    #[error("depmod failed for kernel {version} (modules in {dir}): {stderr}")]
    Depmod {
        version: String,
        dir: PathBuf,
        stderr: String,
    },
    #[error("{path} line {line}: {reason}")]
    BadIndex {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("kernel modules of {version} depend on each other in a cycle through {module}")]
    Cycle { module: String, version: String },
    #[error("cannot decompress kernel module {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How a module file is compressed (by its name: `.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModuleCompression {
    None,
    Xz,
    Zstd,
    Gzip,
}

impl ModuleCompression {
    fn of(file_name: &str) -> Option<Self> {
        if file_name.ends_with(".ko") {
            Some(Self::None)
        } else if file_name.ends_with(".ko.xz") {
            Some(Self::Xz)
        } else if file_name.ends_with(".ko.zst") {
            Some(Self::Zstd)
        } else if file_name.ends_with(".ko.gz") {
            Some(Self::Gzip)
        } else {
            None
        }
    }
}

/// One module to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    /// Canonical name (underscores), e.g. `virtio_blk`.
    pub name: String,
    /// Absolute path of the module file on the host.
    pub path: PathBuf,
    pub compression: ModuleCompression,
}

impl ResolvedModule {
    /// The plain `.ko` bytes (decompressed when needed), checked to be an ELF.
    pub fn read_plain(&self) -> Result<Vec<u8>, ModulesError> {
        let file = fs::File::open(&self.path).map_err(|source| ModulesError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut out = Vec::new();
        let reader = std::io::BufReader::new(file);
        let result = match self.compression {
            ModuleCompression::None => {
                let mut r = reader;
                r.read_to_end(&mut out)
            }
            ModuleCompression::Xz => {
                xz2::read::XzDecoder::new_multi_decoder(reader).read_to_end(&mut out)
            }
            ModuleCompression::Zstd => {
                zstd::stream::read::Decoder::new(reader).and_then(|mut d| d.read_to_end(&mut out))
            }
            ModuleCompression::Gzip => {
                flate2::read::MultiGzDecoder::new(reader).read_to_end(&mut out)
            }
        };
        let decompress = |source| ModulesError::Decompress {
            path: self.path.clone(),
            source,
        };
        result.map_err(decompress)?;
        if !out.starts_with(b"\x7fELF") {
            return Err(decompress(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the module is not an ELF object",
            )));
        }
        Ok(out)
    }
}

/// Canonical module name: `-` and `_` are the same to the kernel.
pub fn canonical_name(name: &str) -> String {
    name.replace('-', "_")
}

/// The module index of one kernel (`lib/modules/<version>`).
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    version: String,
    dir: PathBuf,
    index: index::Index,
}

impl ModuleIndex {
    /// Reads the index of `modules_dir` (named after the kernel version), running
    /// `depmod` first when there is no `modules.dep`: in place if the tree is writable,
    /// otherwise under `cache_dir`.
    pub fn open(modules_dir: &Path, cache_dir: &Path) -> Result<Self, ModulesError> {
        let version = modules_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let index_dir = if modules_dir.join("modules.dep").is_file() {
            modules_dir.to_path_buf()
        } else {
            depmod::run(modules_dir, &version, cache_dir)?
        };
        let index = index::Index::read(&index_dir, modules_dir)?;
        Ok(Self {
            version,
            dir: modules_dir.to_path_buf(),
            index,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Whether the module is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.index.builtin.contains(&canonical_name(name))
    }

    /// Whether the module exists as a file.
    pub fn has_module(&self, name: &str) -> bool {
        self.index.modules.contains_key(&canonical_name(name))
    }

    /// The modules to load for `wanted`, with their dependencies, in load order. Built-in
    /// modules are skipped; a module that is neither built in nor present is an error.
    pub fn resolve<S: AsRef<str>>(
        &self,
        wanted: &[S],
    ) -> Result<Vec<ResolvedModule>, ModulesError> {
        let mut walk = Walk {
            index: self,
            done: HashSet::new(),
            visiting: HashSet::new(),
            out: Vec::new(),
        };
        for name in wanted {
            walk.visit(&canonical_name(name.as_ref()), false)?;
        }
        Ok(walk.out)
    }
}

/// Depth-first walk in post-order (dependencies first). `modules.dep` already lists the
/// whole closure of each module, but in an order that is not documented; walking it gives
/// a valid order whatever that order is.
struct Walk<'a> {
    index: &'a ModuleIndex,
    done: HashSet<String>,
    visiting: HashSet<String>,
    out: Vec<ResolvedModule>,
}

impl Walk<'_> {
    fn visit(&mut self, name: &str, soft: bool) -> Result<(), ModulesError> {
        if self.done.contains(name) || self.index.is_builtin(name) {
            return Ok(());
        }
        let Some(entry) = self.index.index.modules.get(name) else {
            if soft {
                return Ok(());
            }
            return Err(ModulesError::NotFound {
                module: name.to_string(),
                version: self.index.version.clone(),
                dir: self.index.dir.clone(),
            });
        };
        if !self.visiting.insert(name.to_string()) {
            return Err(ModulesError::Cycle {
                module: name.to_string(),
                version: self.index.version.clone(),
            });
        }
        for pre in self.index.index.soft_pre(name) {
            if pre != name && !self.visiting.contains(&pre) {
                self.visit(&pre, true)?;
            }
        }
        for dep in &entry.deps {
            self.visit(dep, false)?;
        }
        self.visiting.remove(name);
        self.done.insert(name.to_string());
        self.out.push(ResolvedModule {
            name: name.to_string(),
            path: entry.path.clone(),
            compression: entry.compression,
        });
        Ok(())
    }
}

/// [`ModuleIndex::open`] then [`ModuleIndex::resolve`].
pub fn resolve_modules<S: AsRef<str>>(
    modules_dir: &Path,
    wanted: &[S],
    cache_dir: &Path,
) -> Result<Vec<ResolvedModule>, ModulesError> {
    ModuleIndex::open(modules_dir, cache_dir)?.resolve(wanted)
}

#[cfg(test)]
mod tests;
