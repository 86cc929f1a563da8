//! Unpacking a Debian kernel package (`linux-image-*.deb`) without dpkg.
//!
//! A `.deb` is an `ar` archive whose `data.tar.{xz,zst,gz}` member holds the files. Only
//! what a VM needs is unpacked: `boot/` (vmlinuz, config, System.map) and the module tree
//! (`lib/modules/` or, on merged-/usr releases, `usr/lib/modules/`). The result lives in
//! `<cache>/<package file stem>/` and is reused; it is built in a temporary directory and
//! renamed into place, so a crash never leaves a half-unpacked tree behind.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::KernelError;

/// Marker written last into a complete unpacked tree.
const COMPLETE: &str = ".microvm-unpacked";

/// Unpacks `deb` under `cache_dir` (once) and returns the root of the unpacked tree.
pub fn unpack_deb(deb: &Path, cache_dir: &Path) -> Result<PathBuf, KernelError> {
    let stem = deb
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| !s.is_empty() && !s.starts_with('.'))
        .ok_or_else(|| {
            deb_error(
                deb,
                "the package file name is not usable as a directory name",
            )
        })?;
    let out = cache_dir.join(stem);
    super::layout::remove_stale_scratch(cache_dir);
    if out.join(COMPLETE).is_file() {
        return Ok(out);
    }
    fs::create_dir_all(cache_dir).map_err(|source| io_error(cache_dir, source))?;
    let tmp = super::layout::scratch_path(cache_dir, stem);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|source| io_error(&tmp, source))?;
    }
    let result = unpack_into(deb, &tmp);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    fs::write(tmp.join(COMPLETE), b"").map_err(|source| io_error(&tmp, source))?;
    if out.exists() {
        // An older incomplete unpack, or another process finished first.
        if out.join(COMPLETE).is_file() {
            let _ = fs::remove_dir_all(&tmp);
            return Ok(out);
        }
        fs::remove_dir_all(&out).map_err(|source| io_error(&out, source))?;
    }
    fs::rename(&tmp, &out).map_err(|source| io_error(&out, source))?;
    Ok(out)
}

fn io_error(path: &Path, source: std::io::Error) -> KernelError {
    KernelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `e` and its root cause (tar's unpack error hides the one that matters, e.g. "No
/// space left on device", in its sources), said once.
fn causes(e: &std::io::Error) -> String {
    let mut text = e.to_string();
    let mut root: Option<&(dyn std::error::Error + 'static)> = None;
    let mut next = e.get_ref().and_then(|inner| inner.source());
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    if let Some(line) = root.map(ToString::to_string) {
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
    }
    text
}

fn deb_error(deb: &Path, reason: &str) -> KernelError {
    KernelError::Deb {
        path: deb.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Whether an entry of the data archive is one we keep.
fn wanted(path: &Path) -> bool {
    let parts: Vec<_> = path
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .filter_map(|c| match c {
            Component::Normal(s) => s.to_str(),
            _ => None,
        })
        .collect();
    matches!(
        parts.as_slice(),
        ["boot", ..] | ["lib", "modules", ..] | ["usr", "lib", "modules", ..]
    )
}

fn unpack_into(deb: &Path, dest: &Path) -> Result<(), KernelError> {
    let file = fs::File::open(deb).map_err(|source| io_error(deb, source))?;
    let mut archive = ar::Archive::new(std::io::BufReader::new(file));
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|e| deb_error(deb, &format!("not an ar archive: {e}")))?;
        let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
        let Some(kind) = name.strip_prefix("data.tar") else {
            continue;
        };
        let reader: Box<dyn Read> = match kind {
            ".xz" => Box::new(xz2::read::XzDecoder::new(entry)),
            ".zst" => Box::new(
                zstd::stream::read::Decoder::new(entry).map_err(|source| io_error(deb, source))?,
            ),
            ".gz" => Box::new(flate2::read::GzDecoder::new(entry)),
            "" => Box::new(entry),
            other => {
                return Err(deb_error(
                    deb,
                    &format!("data.tar{other} uses an unsupported compression"),
                ))
            }
        };
        return unpack_tar(deb, reader, dest);
    }
    Err(deb_error(deb, "the package has no data.tar member"))
}

fn unpack_tar(deb: &Path, reader: impl Read, dest: &Path) -> Result<(), KernelError> {
    fs::create_dir_all(dest).map_err(|source| io_error(dest, source))?;
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    let entries = tar
        .entries()
        .map_err(|e| deb_error(deb, &format!("reading data.tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| deb_error(deb, &format!("reading data.tar: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| deb_error(deb, &format!("reading data.tar: {e}")))?
            .into_owned();
        if !wanted(&path) {
            continue;
        }
        entry.unpack_in(dest).map_err(|e| {
            deb_error(
                deb,
                &format!("unpacking {}: {}", path.display(), causes(&e)),
            )
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).expect("tar");
        }
        b.into_inner().expect("tar")
    }

    fn deb_with(data_tar: &[u8]) -> Vec<u8> {
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        xz.write_all(data_tar).expect("xz");
        let data = xz.finish().expect("xz");
        let mut ar = ar::Builder::new(Vec::new());
        for (name, body) in [("debian-binary", &b"2.0\n"[..]), ("data.tar.xz", &data)] {
            let header = ar::Header::new(name.as_bytes().to_vec(), body.len() as u64);
            ar.append(&header, body).expect("ar");
        }
        ar.into_inner().expect("ar")
    }

    #[test]
    fn unpacks_boot_and_modules_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tar = tar_with(&[
            ("./boot/vmlinuz-1.0-test", b"kernel"),
            ("./lib/modules/1.0-test/kernel/a.ko.xz", b"ko"),
            ("./usr/share/doc/x/changelog", b"doc"),
        ]);
        let deb = dir.path().join("linux-image-1.0_amd64.deb");
        fs::write(&deb, deb_with(&tar)).expect("write");
        let cache = dir.path().join("cache");
        let root = unpack_deb(&deb, &cache).expect("unpack");
        assert_eq!(root, cache.join("linux-image-1.0_amd64"));
        assert_eq!(
            fs::read(root.join("boot/vmlinuz-1.0-test")).expect("read"),
            b"kernel"
        );
        assert!(root.join("lib/modules/1.0-test/kernel/a.ko.xz").is_file());
        assert!(!root.join("usr/share").exists());
        // A second call reuses the tree.
        fs::remove_file(&deb).expect("rm");
        assert_eq!(unpack_deb(&deb, &cache).expect("cached"), root);
    }

    #[test]
    fn rejects_non_deb() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deb = dir.path().join("bogus.deb");
        fs::write(&deb, b"not an archive at all").expect("write");
        let msg = unpack_deb(&deb, &dir.path().join("c"))
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains("bogus.deb"), "{msg}");
    }
}
