//! Where the parts of a kernel lie in the forms it comes in.
//!
//! - A Nix kernel output: `bzImage` (or `Image`/`vmlinux`) at the top, `lib/modules/<ver>`,
//!   the ELF in the `dev` output (`dev/vmlinux`) when present, the config at
//!   `dev/lib/modules/<ver>/build/.config` or `.config`/`config` at the top.
//! - An unpacked tree (a Debian package, `/`): `boot/vmlinuz-<ver>`, `boot/config-<ver>`,
//!   `lib/modules/<ver>` or `usr/lib/modules/<ver>`.
//! - A single image file: `config-<ver>` beside a `vmlinuz-<ver>`, and `../lib/modules/<ver>`.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::bzimage::{self, ImageFormat};
use super::{elf, KernelConfig, KernelError, KernelInfo};

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |source| KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads the first `n` bytes of a file (fewer if it is shorter).
fn head(path: &Path, n: u64) -> Result<Vec<u8>, KernelError> {
    let mut out = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(n).read_to_end(&mut out))
        .map_err(io(path))?;
    Ok(out)
}

/// The version named in a bzImage header, or `None` for an ELF (or an old header).
fn image_version(path: &Path) -> Result<(ImageFormat, Option<String>), KernelError> {
    // The version string sits in the setup code, well inside the first 64 KiB.
    let bytes = head(path, 64 * 1024)?;
    match bzimage::detect_format(&bytes) {
        Some(ImageFormat::Elf) => Ok((ImageFormat::Elf, None)),
        Some(ImageFormat::BzImage) => Ok((ImageFormat::BzImage, bzimage::header_version(&bytes))),
        None => Err(KernelError::UnknownFormat {
            path: path.to_path_buf(),
        }),
    }
}

fn read_config(path: &Path) -> Result<Option<KernelConfig>, KernelError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = fs::read_to_string(path).map_err(io(path))?;
    Ok(Some(KernelConfig::parse(&text)))
}

fn first_config(candidates: &[PathBuf]) -> Result<Option<KernelConfig>, KernelError> {
    for c in candidates {
        if let Some(config) = read_config(c)? {
            return Ok(Some(config));
        }
    }
    Ok(None)
}

/// `lib/modules/<ver>` under `root` (or `usr/lib/modules/<ver>`); with no version, the
/// only one there is.
fn modules_dir(root: &Path, version: Option<&str>) -> Option<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let base = root.join(base);
        if let Some(v) = version {
            if base.join(v).is_dir() {
                return Some(base.join(v));
            }
            continue;
        }
        let dirs: Vec<PathBuf> = fs::read_dir(&base)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        if let [only] = dirs.as_slice() {
            return Some(only.clone());
        }
    }
    None
}

fn dir_version(dir: &Option<PathBuf>) -> Option<String> {
    dir.as_ref()?.file_name()?.to_str().map(String::from)
}

pub(super) fn from_file(path: &Path) -> Result<KernelInfo, KernelError> {
    let (format, mut version) = image_version(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let name_version = name
        .strip_prefix("vmlinuz-")
        .or_else(|| name.strip_prefix("vmlinux-"))
        .map(String::from);
    version = version.or(name_version);
    let dir = path.parent().unwrap_or(Path::new("/"));
    let root = dir.parent().unwrap_or(dir);
    let modules = modules_dir(root, version.as_deref());
    let version = version.or_else(|| dir_version(&modules));
    let mut configs = Vec::new();
    if let Some(v) = &version {
        configs.push(dir.join(format!("config-{v}")));
    }
    configs.push(dir.join(".config"));
    Ok(KernelInfo {
        version,
        image: path.to_path_buf(),
        vmlinux: (format == ImageFormat::Elf).then(|| path.to_path_buf()),
        vmlinux_pvh: None,
        modules_dir: modules,
        config: first_config(&configs)?,
    })
}

pub(super) fn from_dir(dir: &Path) -> Result<KernelInfo, KernelError> {
    // Nix output first: a fixed name at the top.
    let top = ["bzImage", "Image", "vmlinuz", "vmlinux"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file());
    let image = match top {
        Some(p) => p,
        None => boot_image(dir)?,
    };
    let (format, header_version) = image_version(&image)?;
    let boot_version = image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(String::from);
    let version = header_version.or(boot_version);
    let modules = modules_dir(dir, version.as_deref()).or_else(|| modules_dir(dir, None));
    let version = version.or_else(|| dir_version(&modules));
    let mut configs = vec![dir.join(".config"), dir.join("config")];
    if let Some(v) = &version {
        configs.insert(0, dir.join(format!("boot/config-{v}")));
        configs.push(dir.join(format!("dev/lib/modules/{v}/build/.config")));
        configs.push(dir.join(format!("lib/modules/{v}/build/.config")));
    }
    // An ELF beside the image: the Nix `dev` output, or one extracted by hand.
    let vmlinux = if format == ImageFormat::Elf {
        Some(image.clone())
    } else {
        [dir.join("dev/vmlinux"), dir.join("vmlinux")]
            .into_iter()
            .find(|p| head(p, 4).is_ok_and(|h| h == elf::MAGIC))
    };
    Ok(KernelInfo {
        version,
        image,
        vmlinux,
        vmlinux_pvh: None,
        modules_dir: modules,
        config: first_config(&configs)?,
    })
}

/// The one `boot/vmlinuz-*` of an unpacked tree.
fn boot_image(dir: &Path) -> Result<PathBuf, KernelError> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir.join("boot"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    match found.len() {
        0 => Err(KernelError::NoImage {
            dir: dir.to_path_buf(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(KernelError::Ambiguous {
            dir: dir.to_path_buf(),
            candidates: found.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// Extracts the ELF of `image` into `cache_dir`, once per image (keyed by version, size
/// and mtime); the file is written to a temporary name and renamed. Returns the path and
/// whether it has the PVH note.
pub(super) fn extract_cached(
    image: &Path,
    version: Option<&str>,
    cache_dir: &Path,
) -> Result<(PathBuf, bool), KernelError> {
    let meta = fs::metadata(image).map_err(io(image))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let name = format!(
        "vmlinux-{}-{:x}-{:x}",
        version.unwrap_or("unknown"),
        meta.len(),
        mtime
    );
    let out = cache_dir.join(name);
    remove_stale_scratch(cache_dir);
    if out.is_file() {
        let pvh = elf::file_has_pvh_note(&out).map_err(io(&out))?;
        return Ok((out, pvh));
    }
    let vmlinux = bzimage::extract_vmlinux(image, &bzimage::read_file(image)?)?;
    fs::create_dir_all(cache_dir).map_err(io(cache_dir))?;
    let tmp = scratch_path(cache_dir, "vmlinux");
    let written = write_synced(&tmp, &vmlinux.elf).and_then(|()| fs::rename(&tmp, &out));
    if let Err(e) = written {
        // A full disk must not leave a half-written copy behind (95 MB after 3 failures).
        let _ = fs::remove_file(&tmp);
        return Err(io(&out)(e));
    }
    Ok((out, vmlinux.has_pvh_note))
}

/// Writes `bytes` to `path` and fsyncs it (before a rename publishes it).
fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// A scratch path in the kernel cache, `.STEM.tmp-<pid>-<seq>`: unique per call, since two
/// threads of one process may write the same entry at once.
pub(super) fn scratch_path(cache_dir: &Path, stem: &str) -> PathBuf {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    cache_dir.join(format!(".{stem}.tmp-{}-{seq}", std::process::id()))
}

/// Removes scratch entries of the kernel cache (`.NAME.tmp-<pid>-<seq>`: a vmlinux being
/// written, a package being unpacked) whose process is gone: a build killed half-way
/// leaves them (95 MB each) and nothing else would.
pub fn remove_stale_scratch(cache_dir: &Path) {
    let Ok(entries) = fs::read_dir(cache_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.starts_with('.'))
            .and_then(|n| n.rsplit_once(".tmp-"))
            .and_then(|(_, p)| p.split('-').next()?.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let path = e.path();
            let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
        }
    }
}

#[cfg(test)]
#[path = "layout_tests.rs"]
mod tests;
