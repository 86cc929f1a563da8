//! The guest root tree: sources composed in order into a staging directory, which the
//! disk builder then packs. Later sources overwrite earlier files; a directory replaces
//! a non-directory and vice versa (OCI layer semantics, without whiteouts for now).
//!
//! Each source kind is a module with an `apply(&source, &mut Stage)`; OCI image layouts,
//! Debian suites (mmdebstrap) and Nix closures are added as further [`RootSource`]
//! variants the same way.

mod directory;
mod fsops;
mod tarball;

pub use tarball::Compression;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where guest root contents come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSource {
    /// A host directory, copied without following symlinks.
    Directory(PathBuf),
    /// A tar archive: plain, gzip, xz or zstd (detected by magic).
    Tarball(PathBuf),
}

impl RootSource {
    pub fn path(&self) -> &Path {
        match self {
            RootSource::Directory(p) | RootSource::Tarball(p) => p,
        }
    }

    fn apply(&self, stage: &mut Stage) -> Result<(), RootfsError> {
        match self {
            RootSource::Directory(dir) => directory::apply(dir, stage),
            RootSource::Tarball(tarball) => tarball::apply(tarball, stage),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("staging directory {} is not empty", dir.display())]
    StagingNotEmpty { dir: PathBuf },
    #[error("root source {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tarball {} uses {kind} compression; use plain, gzip, xz or zstd", tarball.display())]
    Compression {
        tarball: PathBuf,
        kind: &'static str,
    },
    #[error("tarball {}: entry {entry:?} points outside the root", tarball.display())]
    UnsafeEntry { tarball: PathBuf, entry: String },
    #[error("extracting tarball {} at entry {entry:?}", tarball.display())]
    Tar {
        tarball: PathBuf,
        entry: String,
        source: std::io::Error,
    },
    #[error("{} resolves outside the staging root (to {})", path.display(), target.display())]
    Escapes { path: PathBuf, target: PathBuf },
    #[error("path {} in the root is not a plain relative path", path.display())]
    BadPathInRoot { path: PathBuf },
    #[error("{} in the staged root is not a directory (a symlink or file is in the way)", path.display())]
    NotADirectoryInRoot { path: PathBuf },
}

/// Something a source had that staging could not reproduce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// The state sources write into.
#[derive(Debug)]
pub struct Stage {
    root: PathBuf,
    canon_root: PathBuf,
    as_root: bool,
    skipped: Vec<Skipped>,
}

impl Stage {
    fn skip(&mut self, path: &Path, reason: String) {
        let path = path
            .strip_prefix(&self.canon_root)
            .or_else(|_| path.strip_prefix(&self.root));
        let path = Path::new("/").join(path.unwrap_or(Path::new("?")));
        tracing::warn!(path = %path.display(), "{reason}");
        self.skipped.push(Skipped { path, reason });
    }
}

/// A composed root tree.
#[derive(Debug)]
pub struct StagedRoot {
    pub root: PathBuf,
    /// False when staging ran unprivileged: everything is owned by the current user (the
    /// disk builder's `--all-root` then makes it root's).
    pub ownership_preserved: bool,
    pub skipped: Vec<Skipped>,
}

/// Composes `sources` in order into `staging_dir` (created if missing; must be empty).
pub fn stage(sources: &[RootSource], staging_dir: &Path) -> Result<StagedRoot, RootfsError> {
    fs::create_dir_all(staging_dir).map_err(|e| fsops::io("creating", staging_dir, e))?;
    let mut entries =
        fs::read_dir(staging_dir).map_err(|e| fsops::io("reading", staging_dir, e))?;
    if entries.next().is_some() {
        return Err(RootfsError::StagingNotEmpty {
            dir: staging_dir.to_owned(),
        });
    }
    fs::set_permissions(staging_dir, fs::Permissions::from_mode(0o755))
        .map_err(|e| fsops::io("setting mode of", staging_dir, e))?;
    let canon_root =
        fs::canonicalize(staging_dir).map_err(|e| fsops::io("resolving", staging_dir, e))?;
    let as_root = fsops::is_root();
    let mut stage = Stage {
        root: canon_root.clone(),
        canon_root,
        as_root,
        skipped: Vec::new(),
    };
    for source in sources {
        tracing::debug!(source = %source.path().display(), "staging");
        source.apply(&mut stage)?;
    }
    Ok(StagedRoot {
        root: stage.root,
        ownership_preserved: as_root,
        skipped: stage.skipped,
    })
}

impl StagedRoot {
    /// Writes `bytes` at `path_in_root` (e.g. `/etc/hostname`) with `mode`, owned by
    /// root, creating missing parent directories (0755). A symlink on the way is an error
    /// rather than something to follow.
    pub fn add_file(
        &self,
        path_in_root: &Path,
        bytes: &[u8],
        mode: u32,
    ) -> Result<(), RootfsError> {
        let bad = || RootfsError::BadPathInRoot {
            path: path_in_root.to_owned(),
        };
        let rel = fsops::relative_in_root(path_in_root).ok_or_else(bad)?;
        let (Some(parent), Some(_)) = (rel.parent(), rel.file_name()) else {
            return Err(bad());
        };
        let mut dir = self.root.clone();
        for part in parent.components() {
            dir.push(part);
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(RootfsError::NotADirectoryInRoot { path: dir }),
                Err(_) => {
                    fs::create_dir(&dir).map_err(|e| fsops::io("creating directory", &dir, e))?;
                    fsops::set_owner_mode(&dir, None, Some(0o755))?;
                }
            }
        }
        let dest = self.root.join(&rel);
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) {
            return Err(RootfsError::BadPathInRoot {
                path: path_in_root.to_owned(),
            });
        }
        fsops::clear(&dest)?;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&dest)
            .map_err(|e| fsops::io("creating", &dest, e))?;
        file.write_all(bytes)
            .map_err(|e| fsops::io("writing", &dest, e))?;
        let owner = self.ownership_preserved.then_some((0, 0));
        fsops::set_owner_mode(&dest, owner, Some(mode))
    }
}

#[cfg(test)]
mod tests;
