//! The guest root tree: sources composed in order into a staging directory, which the
//! disk builder then packs. Later sources overwrite earlier files; a directory replaces
//! a non-directory and vice versa (OCI layer semantics; OCI layers add whiteouts).
//!
//! Each source kind is a module with an `apply(&source, &mut Stage)`: directories,
//! tarballs, OCI image layouts (verified blobs, layers with whiteouts) and Nix closures
//! (store paths at the root of the tree). While staging, every path written is recorded
//! with the source that wrote it (last writer wins): [`StagedRoot::manifest`].

pub mod debian;
pub mod defaults;
mod directory;
mod fsops;
pub mod nix;
pub mod oci;
mod tarball;

pub use tarball::Compression;

use std::collections::BTreeMap;
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
    /// An OCI image from a layout directory, its manifest resolved and verified
    /// ([`oci::OciImage::open`]); layers are verified as they are applied.
    Oci(Box<oci::OciImage>),
    /// Nix store paths, each copied to `/<basename>` of the tree (a store disk's layout).
    NixStorePaths(Vec<PathBuf>),
}

impl RootSource {
    pub fn path(&self) -> &Path {
        match self {
            RootSource::Directory(p) | RootSource::Tarball(p) => p,
            RootSource::Oci(image) => &image.layout,
            RootSource::NixStorePaths(paths) => paths.first().map_or(Path::new(""), |p| p),
        }
    }

    /// How `--list-root` names this source.
    pub fn label(&self) -> String {
        match self {
            RootSource::Directory(p) => format!("directory {}", p.display()),
            RootSource::Tarball(p) => format!("tarball {}", p.display()),
            RootSource::Oci(image) => image.label(),
            RootSource::NixStorePaths(_) => "nix closure".into(),
        }
    }

    fn apply(&self, stage: &mut Stage) -> Result<(), RootfsError> {
        match self {
            RootSource::Directory(dir) => directory::apply(dir, stage),
            RootSource::Tarball(tarball) => tarball::apply(tarball, stage),
            RootSource::Oci(image) => oci::apply(image, stage),
            RootSource::NixStorePaths(paths) => nix::apply(paths, stage),
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
    #[error("tarball {}: {what} (at entry {entry:?}); a root image is smaller than that", tarball.display())]
    TooLarge {
        tarball: PathBuf,
        entry: String,
        what: String,
    },
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
    #[error(transparent)]
    Oci(#[from] oci::OciError),
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
    /// What wrote each path (relative to the root): an index into `labels`.
    origins: BTreeMap<PathBuf, usize>,
    labels: Vec<String>,
}

impl Stage {
    /// Names the source (or OCI layer) that the following writes come from.
    fn set_label(&mut self, label: String) {
        self.labels.push(label);
    }

    /// Records that the current source wrote `path` (inside the staging root).
    fn record(&mut self, path: &Path) {
        let Ok(rel) = path
            .strip_prefix(&self.canon_root)
            .or_else(|_| path.strip_prefix(&self.root))
        else {
            return;
        };
        if let Some(current) = self.labels.len().checked_sub(1) {
            self.origins.insert(rel.to_owned(), current);
        }
    }

    /// Forgets `path` and everything below it (removed by a whiteout).
    fn forget(&mut self, path: &Path) {
        let Ok(rel) = path
            .strip_prefix(&self.canon_root)
            .or_else(|_| path.strip_prefix(&self.root))
        else {
            return;
        };
        let below: Vec<PathBuf> = self
            .origins
            .range(rel.to_owned()..)
            .take_while(|(p, _)| p.starts_with(rel))
            .map(|(p, _)| p.clone())
            .collect();
        for p in below {
            self.origins.remove(&p);
        }
    }

    fn skip(&mut self, path: &Path, reason: String) {
        let path = path
            .strip_prefix(&self.canon_root)
            .or_else(|_| path.strip_prefix(&self.root));
        let path = Path::new("/").join(path.unwrap_or(Path::new("?")));
        // The build sums them up in one warning; each is listed at debug level.
        tracing::debug!(path = %path.display(), "{reason}");
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
    origins: BTreeMap<PathBuf, usize>,
    labels: Vec<String>,
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
        origins: BTreeMap::new(),
        labels: Vec::new(),
    };
    for source in sources {
        tracing::debug!(source = %source.path().display(), "staging");
        stage.set_label(source.label());
        source.apply(&mut stage)?;
    }
    Ok(StagedRoot {
        root: stage.root,
        ownership_preserved: as_root,
        skipped: stage.skipped,
        origins: stage.origins,
        labels: stage.labels,
    })
}

/// Where a path of the staged root came from, when nothing recorded it (a file added
/// after staging).
pub const ADDED_BY_MICROVM: &str = "microvm";

impl StagedRoot {
    /// Every path of the staged tree (`/`-rooted, sorted) with the source that wrote it
    /// last. A directory no source wrote itself (a missing parent, created implicitly)
    /// is credited to the source of its first entry.
    pub fn manifest(&self) -> Result<Vec<(PathBuf, String)>, RootfsError> {
        let mut out = Vec::new();
        self.manifest_dir(&self.root, Path::new(""), &mut out)?;
        Ok(out)
    }

    /// Walks `dir` (at `rel`), appending its entries; returns the label index of its
    /// first entry, for an unrecorded parent.
    fn manifest_dir(
        &self,
        dir: &Path,
        rel: &Path,
        out: &mut Vec<(PathBuf, String)>,
    ) -> Result<Option<usize>, RootfsError> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .map_err(|e| fsops::io("listing", dir, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| fsops::io("listing", dir, e))?;
        names.sort();
        let mut first = None;
        for name in names {
            let path = dir.join(&name);
            let rel = rel.join(&name);
            let slot = out.len();
            out.push((Path::new("/").join(&rel), String::new()));
            let is_dir = fs::symlink_metadata(&path)
                .map_err(|e| fsops::io("reading", &path, e))?
                .is_dir();
            let below = if is_dir {
                self.manifest_dir(&path, &rel, out)?
            } else {
                None
            };
            let origin = self.origins.get(&rel).copied().or(below);
            out[slot].1 = origin
                .and_then(|i| self.labels.get(i))
                .map_or(ADDED_BY_MICROVM.to_owned(), Clone::clone);
            first = first.or(origin);
        }
        Ok(first)
    }

    /// Writes [`Self::manifest`] to `out`: one `PATH<TAB>SOURCE` line each, with
    /// backslash, tab and newline in paths escaped (`\\`, `\t`, `\n`).
    pub fn write_manifest(&self, out: &Path) -> Result<(), RootfsError> {
        let mut text = String::new();
        for (path, label) in self.manifest()? {
            let shown = path
                .to_string_lossy()
                .replace('\\', "\\\\")
                .replace('\t', "\\t")
                .replace('\n', "\\n");
            text.push_str(&shown);
            text.push('\t');
            text.push_str(&label);
            text.push('\n');
        }
        fs::write(out, text).map_err(|e| fsops::io("writing", out, e))
    }
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
