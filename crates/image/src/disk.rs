//! The read-only root/store disk: an erofs or squashfs image of a staged tree, built by
//! the real mkfs tool with flags chosen from its detected version and the guest kernel,
//! reproducibly (fixed timestamps, ownership and UUID: same tree, same bytes), and
//! written to a temp file beside the output that is renamed into place.

pub mod flags;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::tools::{self, ToolError, Toolbox, Version};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiskType {
    #[default]
    Erofs,
    Squashfs,
}

impl DiskType {
    /// The mkfs tool that builds this type.
    pub fn tool(self) -> &'static str {
        match self {
            DiskType::Erofs => "mkfs.erofs",
            DiskType::Squashfs => "mksquashfs",
        }
    }
}

/// Ownership in the image. `AllRoot` is microvm.nix's store disk (`--all-root`);
/// `Preserve` keeps the staged tree's uids/gids (a distribution root staged as root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    #[default]
    AllRoot,
    Preserve,
}

#[derive(Debug, Clone, Default)]
pub struct DiskOptions {
    pub disk_type: DiskType,
    /// Filesystem label (`nix-store` for a Nix store layout); none for root disks.
    pub label: Option<String>,
    /// Where the guest mounts it (erofs `--mount-point`, for SELinux file contexts).
    pub mount_point: Option<String>,
    /// `storeDiskErofsFlags` / `storeDiskSquashfsFlags`: when given, they replace the
    /// default compression/tuning flags; the reproducibility flags are always added.
    pub extra_flags: Option<Vec<String>>,
    /// The guest kernel's version: newer erofs features only when it can read them.
    pub kernel_version: Option<Version>,
    /// Filesystem UUID (erofs); the caller may derive it from its input hash. Default
    /// all-zero, which keeps the image reproducible.
    pub uuid: [u8; 16],
    pub ownership: Ownership,
    /// mksquashfs `-processors`; default: the available parallelism.
    pub processors: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct DiskReport {
    pub path: PathBuf,
    pub bytes: u64,
    pub duration: Duration,
    pub tool_version: Version,
    pub argv: Vec<String>,
    /// Options this tool or kernel could not honour (e.g. a label on mkfs.erofs 1.5).
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("disk input {} is not a directory", tree.display())]
    NotADirectory { tree: PathBuf },
    #[error("disk output {} has no file name", out.display())]
    BadOutput { out: PathBuf },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("building {} disk {}", tool, out.display())]
    Tool {
        tool: &'static str,
        out: PathBuf,
        source: ToolError,
    },
}

/// [`build_disk_with`] using tools from `$PATH` (plus sbin).
pub fn build_disk(tree: &Path, out: &Path, opts: &DiskOptions) -> Result<DiskReport, DiskError> {
    build_disk_with(&Toolbox::from_env(), tree, out, opts)
}

/// Builds an image of `tree` at `out` (replaced atomically if it exists).
pub fn build_disk_with(
    tools: &Toolbox,
    tree: &Path,
    out: &Path,
    opts: &DiskOptions,
) -> Result<DiskReport, DiskError> {
    let started = Instant::now();
    if !fs::metadata(tree).is_ok_and(|m| m.is_dir()) {
        return Err(DiskError::NotADirectory {
            tree: tree.to_owned(),
        });
    }
    let tool = opts.disk_type.tool();
    let tool_err = |source| DiskError::Tool {
        tool,
        out: out.to_owned(),
        source,
    };
    let (Some(dir), Some(name)) = (out.parent(), out.file_name()) else {
        return Err(DiskError::BadOutput {
            out: out.to_owned(),
        });
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    fs::create_dir_all(dir).map_err(|source| io("creating directory", dir, source))?;
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.partial-{}-{}",
        name.to_string_lossy(),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_file(&tmp);
    let guard = RemoveOnDrop(&tmp);

    let (mut cmd, version, plan) = match opts.disk_type {
        DiskType::Erofs => {
            let version = tools.version(tool, &["--version"]).map_err(tool_err)?;
            let plan = flags::erofs(version, opts);
            let mut cmd = tools.command(tool).map_err(tool_err)?;
            cmd.args(&plan.args).arg(&tmp).arg(tree);
            (cmd, version, plan)
        }
        DiskType::Squashfs => {
            let version = tools.version(tool, &["-version"]).map_err(tool_err)?;
            let has_zstd = squashfs_has_zstd(tools).map_err(tool_err)?;
            let processors = opts
                .processors
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let plan = flags::squashfs(has_zstd, processors, opts);
            let mut cmd = tools.command(tool).map_err(tool_err)?;
            cmd.arg(tree).arg(&tmp).args(&plan.args);
            (cmd, version, plan)
        }
    };
    for note in &plan.notes {
        tracing::warn!(out = %out.display(), "{note}");
    }
    let argv = tools::argv_strings(&cmd);
    tools::run(&mut cmd).map_err(tool_err)?;

    let file = fs::File::open(&tmp).map_err(|source| io("opening built image", &tmp, source))?;
    file.sync_all()
        .map_err(|source| io("syncing built image", &tmp, source))?;
    let bytes = file
        .metadata()
        .map_err(|source| io("reading size of", &tmp, source))?
        .len();
    fs::rename(&tmp, out).map_err(|source| io("renaming image into place at", out, source))?;
    std::mem::forget(guard);
    Ok(DiskReport {
        path: out.to_owned(),
        bytes,
        duration: started.elapsed(),
        tool_version: version,
        argv,
        notes: plan.notes,
    })
}

/// Whether this mksquashfs was built with zstd (its help lists the compressors).
fn squashfs_has_zstd(tools: &Toolbox) -> Result<bool, ToolError> {
    let mut cmd = tools.command("mksquashfs")?;
    cmd.arg("-help").stdin(std::process::Stdio::null());
    let argv = tools::display_argv(&cmd);
    let out = cmd
        .output()
        .map_err(|source| ToolError::Spawn { argv, source })?;
    let text = [out.stdout, out.stderr].concat();
    let text = String::from_utf8_lossy(&text);
    let compressors = text.split("Compressors available").nth(1).unwrap_or("");
    Ok(compressors.split_whitespace().any(|t| t == "zstd"))
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> DiskError {
    DiskError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}
