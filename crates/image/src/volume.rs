//! Volume autocreation (microvm.nix's `microvm-run` step, inventory §3.6): a missing
//! image with `autoCreate` becomes a sparse file of `size` MiB, marked NOCOW where the
//! host filesystem allows, formatted with `mkfs.<fsType>` (labelled where the tool can).
//! An existing image is never resized, reformatted or relabelled (issue #315).
//!
//! Unlike the shell original, mkfs runs on a temp file beside the image that is linked
//! into place only once formatted, so a crash or a failed mkfs never leaves a
//! half-made image that later starts would take for the user's data.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::tools::{self, ToolError, Toolbox};

const MIB: u64 = 1024 * 1024;

/// One volume, resolved: `image` is absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    pub image: PathBuf,
    /// Size in MiB; required to create the image.
    pub size_mib: Option<u64>,
    pub fs_type: String,
    pub label: Option<String>,
    pub mkfs_extra_args: Vec<String>,
    pub auto_create: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeOutcome {
    /// The image was missing and has been created and formatted.
    Created {
        bytes_allocated: u64,
        argv: Vec<String>,
    },
    /// The image was there already and was left untouched.
    Existing,
}

#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume image {} does not exist and autoCreate is false", image.display())]
    Missing { image: PathBuf },
    #[error("volume image {} does not exist and has no size to create it with", image.display())]
    NoSize { image: PathBuf },
    #[error("volume image {}: invalid fsType {fs_type:?}", image.display())]
    BadFsType { image: PathBuf, fs_type: String },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("formatting volume image {} as {fs_type}", image.display())]
    Mkfs {
        image: PathBuf,
        fs_type: String,
        source: ToolError,
    },
}

/// [`ensure_volume_with`] using tools from `$PATH` (plus sbin).
pub fn ensure_volume(spec: &VolumeSpec) -> Result<VolumeOutcome, VolumeError> {
    ensure_volume_with(&Toolbox::from_env(), spec)
}

pub fn ensure_volume_with(
    tools: &Toolbox,
    spec: &VolumeSpec,
) -> Result<VolumeOutcome, VolumeError> {
    let image = spec.image.as_path();
    // Anything at the path, even a dangling symlink, is the user's: never touch it.
    if fs::symlink_metadata(image).is_ok() {
        return Ok(VolumeOutcome::Existing);
    }
    if !spec.auto_create {
        return Err(VolumeError::Missing {
            image: image.to_owned(),
        });
    }
    let size_mib = match spec.size_mib {
        Some(s) if s > 0 => s,
        _ => {
            return Err(VolumeError::NoSize {
                image: image.to_owned(),
            })
        }
    };
    let fs_type = spec.fs_type.as_str();
    if fs_type.is_empty() || !fs_type.chars().all(|c| c.is_ascii_alphanumeric()) {
        let fs_type = fs_type.to_owned();
        return Err(VolumeError::BadFsType {
            image: image.to_owned(),
            fs_type,
        });
    }
    let mkfs_err = |source| VolumeError::Mkfs {
        image: image.to_owned(),
        fs_type: fs_type.to_owned(),
        source,
    };
    let mut cmd = tools
        .command(&format!("mkfs.{fs_type}"))
        .map_err(mkfs_err)?;
    if let Some(label) = &spec.label {
        match label_flag(fs_type) {
            Some(flag) => {
                cmd.arg(flag).arg(label);
            }
            None => tracing::warn!(
                image = %image.display(),
                "will not label volume {label} with filesystem type {fs_type}"
            ),
        }
    }
    cmd.args(&spec.mkfs_extra_args);

    let (Some(dir), Some(name)) = (image.parent(), image.file_name()) else {
        return Err(io(
            "volume image path has no file name:",
            image,
            ErrorKind::InvalidInput.into(),
        ));
    };
    fs::create_dir_all(dir).map_err(|e| io("creating directory", dir, e))?;
    let tmp = dir.join(format!(
        ".{}.partial-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    let result = create_formatted(&tmp, size_mib, &mut cmd, mkfs_err).and_then(|argv| {
        let outcome = link_into_place(&tmp, image)?;
        Ok(match outcome {
            VolumeOutcome::Created { .. } => {
                let meta = fs::metadata(image).map_err(|e| io("reading", image, e))?;
                VolumeOutcome::Created {
                    bytes_allocated: meta.blocks() * 512,
                    argv,
                }
            }
            VolumeOutcome::Existing => VolumeOutcome::Existing,
        })
    });
    let _ = fs::remove_file(&tmp);
    result
}

/// The mkfs option that sets a label, for the filesystems microvm.nix labels.
fn label_flag(fs_type: &str) -> Option<&'static str> {
    match fs_type {
        "ext2" | "ext3" | "ext4" | "xfs" | "btrfs" => Some("-L"),
        "vfat" => Some("-n"),
        _ => None,
    }
}

/// Creates `tmp` sparse and NOCOW, then runs `cmd tmp`; returns the argv that ran.
fn create_formatted(
    tmp: &Path,
    size_mib: u64,
    cmd: &mut std::process::Command,
    mkfs_err: impl Fn(ToolError) -> VolumeError,
) -> Result<Vec<String>, VolumeError> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)
        .map_err(|e| io("creating", tmp, e))?;
    // `chattr +C`: copy-on-write hurts disk images on btrfs; other filesystems refuse it,
    // and that is fine (the original ignores the failure too).
    if let Err(e) = set_nocow(&file) {
        tracing::debug!(path = %tmp.display(), "NOCOW not set: {e}");
    }
    let bytes = size_mib
        .checked_mul(MIB)
        .ok_or_else(|| io("sizing", tmp, ErrorKind::InvalidInput.into()))?;
    file.set_len(bytes)
        .map_err(|e| io("setting size of", tmp, e))?;
    drop(file);
    cmd.arg(tmp);
    let argv = tools::argv_strings(cmd);
    tools::run(cmd).map_err(mkfs_err)?;
    Ok(argv)
}

fn set_nocow(file: &fs::File) -> rustix::io::Result<()> {
    use rustix::fs::{ioctl_getflags, ioctl_setflags, IFlags};
    let flags = ioctl_getflags(file)?;
    ioctl_setflags(file, flags | IFlags::NOCOW)
}

/// Puts the formatted `tmp` at `image` without ever replacing something that appeared
/// there meanwhile (another start of the same VM): a hard link fails if it exists.
fn link_into_place(tmp: &Path, image: &Path) -> Result<VolumeOutcome, VolumeError> {
    let created = VolumeOutcome::Created {
        bytes_allocated: 0,
        argv: Vec::new(),
    };
    match fs::hard_link(tmp, image) {
        Ok(()) => Ok(created),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(VolumeOutcome::Existing),
        // Filesystems without hard links: rename, checking first (a small race window).
        Err(_) if fs::symlink_metadata(image).is_err() => {
            fs::rename(tmp, image).map_err(|e| io("renaming into place", image, e))?;
            Ok(created)
        }
        Err(_) => Ok(VolumeOutcome::Existing),
    }
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> VolumeError {
    VolumeError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
