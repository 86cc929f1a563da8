//! Fetching a Debian kernel package by name (`kernel = { package = "…" }`) with
//! `apt-get download`, following a meta-package (such as `linux-image-cloud-amd64`) to the
//! versioned image package it depends on. Downloads are cached by file name; a cached
//! `.deb` is used while it is the version apt offers (a newer one in apt's lists is
//! downloaded, and `MICROVM_REFRESH=1` / `--refresh` downloads again).

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("apt-get download {package} failed: {stderr}")]
    Download { package: String, stderr: String },
    #[error("cannot run {tool}: {source}; kernel packages by name need apt (Debian or Ubuntu)")]
    Tool {
        tool: &'static str,
        source: std::io::Error,
    },
    #[error("package {package} holds no kernel and depends on no linux-image package")]
    NoKernel { package: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Downloads `package` (or the kernel image it depends on) into `dir`; returns the `.deb`.
pub fn debian_kernel(package: &str, dir: &Path) -> Result<PathBuf, FetchError> {
    let refresh = refresh_requested();
    std::fs::create_dir_all(dir).map_err(|source| FetchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut name = package.to_owned();
    for _ in 0..4 {
        let deb = download(&name, dir, refresh)?;
        let listing = Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .map_err(|source| FetchError::Tool {
                tool: "dpkg-deb",
                source,
            })?;
        if String::from_utf8_lossy(&listing.stdout).contains("/boot/vmlinuz") {
            return Ok(deb);
        }
        let depends = Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Depends")
            .output()
            .map_err(|source| FetchError::Tool {
                tool: "dpkg-deb",
                source,
            })?;
        let depends = String::from_utf8_lossy(&depends.stdout).into_owned();
        match depends
            .split([',', '|'])
            .map(|d| d.split_whitespace().next().unwrap_or(""))
            .find(|d| d.starts_with("linux-image-"))
        {
            Some(next) => name = next.to_owned(),
            None => {
                return Err(FetchError::NoKernel {
                    package: package.to_owned(),
                })
            }
        }
    }
    Err(FetchError::NoKernel {
        package: package.to_owned(),
    })
}

/// Whether `MICROVM_REFRESH` (or `--refresh`) asks for cached downloads to be fetched
/// again.
fn refresh_requested() -> bool {
    std::env::var("MICROVM_REFRESH").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The file name of the version apt would install now (`Filename:` of
/// `apt-cache show`), when apt's package lists know the package.
fn candidate_file(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions", "--", package])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Filename:"))
        .and_then(|f| f.trim().rsplit('/').next().map(str::to_owned))
        .filter(|f| !f.is_empty() && !f.contains(".."))
}

/// The cached `.deb`s of `package` in `dir`, newest first.
fn cached(package: &str, dir: &Path) -> Vec<PathBuf> {
    let prefix = format!("{package}_");
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .map(|e| {
            let mtime = e.metadata().and_then(|m| m.modified());
            (mtime.unwrap_or(std::time::UNIX_EPOCH), e.path())
        })
        .collect();
    debs.sort_by_key(|d| std::cmp::Reverse(d.0));
    debs.into_iter().map(|(_, p)| p).collect()
}

/// The `.deb` of `package` in `dir`: the cached one when it is the version apt offers
/// now, else a fresh download (older cached versions are then removed). When apt's
/// lists do not know the package, a cached `.deb` is used as it is, with a warning.
fn download(package: &str, dir: &Path, refresh: bool) -> Result<PathBuf, FetchError> {
    let candidate = candidate_file(package);
    let old = cached(package, dir);
    match (&candidate, old.first()) {
        (Some(file), _) if !refresh && dir.join(file).exists() => return Ok(dir.join(file)),
        (None, Some(deb)) if !refresh => {
            tracing::warn!(
                "apt-cache does not know {package} (run `apt-get update`?); using the cached {}",
                deb.display()
            );
            return Ok(deb.clone());
        }
        _ => {}
    }
    if let Some(file) = &candidate {
        // `apt-get download` does not replace a file that is there (a refresh).
        let _ = std::fs::remove_file(dir.join(file));
    }
    let out = Command::new("apt-get")
        .args(["download", "-q", "--", package])
        .current_dir(dir)
        .output()
        .map_err(|source| FetchError::Tool {
            tool: "apt-get",
            source,
        })?;
    if !out.status.success() {
        return Err(FetchError::Download {
            package: package.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let fetched = match &candidate {
        Some(file) => Some(dir.join(file)).filter(|p| p.exists()),
        None => cached(package, dir).into_iter().next(),
    };
    let fetched = fetched.ok_or_else(|| FetchError::Download {
        package: package.to_owned(),
        stderr: "apt-get reported success but no .deb appeared".into(),
    })?;
    for stale in old.iter().filter(|p| **p != fetched) {
        let _ = std::fs::remove_file(stale);
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real apt: `linux-image-cloud-amd64` from the Debian archive, cached by version.
    /// Skipped (and says so) where apt's lists do not know the package.
    #[test]
    fn real_kernel_package_is_fetched_cached_and_refreshed() {
        const META: &str = "linux-image-cloud-amd64";
        if candidate_file(META).is_none() {
            eprintln!("skipped: apt-cache does not know {META} (not Debian, or no apt lists)");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        // An older kernel of that name in the cache: not what apt offers now.
        let image = {
            let meta = download(META, dir.path(), false).expect("the meta package");
            let depends = Command::new("dpkg-deb")
                .arg("-f")
                .arg(&meta)
                .arg("Depends")
                .output()
                .expect("dpkg-deb");
            let depends = String::from_utf8_lossy(&depends.stdout).into_owned();
            depends
                .split([',', '|'])
                .map(|d| d.split_whitespace().next().unwrap_or("").to_owned())
                .find(|d| d.starts_with("linux-image-"))
                .expect("a linux-image dependency")
        };
        let stale = dir.path().join(format!("{image}_0.1-1_amd64.deb"));
        std::fs::write(&stale, b"an old download").expect("write");

        let deb = debian_kernel(META, dir.path()).expect("fetches");
        let name = deb.file_name().and_then(|n| n.to_str()).expect("name");
        assert_eq!(
            Some(name.to_owned()),
            candidate_file(&image),
            "the version apt offers"
        );
        assert!(!stale.exists(), "the older cached version is removed");
        let listing = Command::new("dpkg-deb")
            .arg("-c")
            .arg(&deb)
            .output()
            .expect("dpkg-deb");
        assert!(String::from_utf8_lossy(&listing.stdout).contains("/boot/vmlinuz"));

        // Cached: the same file, not downloaded again.
        let mtime = |p: &Path| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .expect("mtime")
        };
        let first = mtime(&deb);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(debian_kernel(META, dir.path()).expect("cached"), deb);
        assert_eq!(mtime(&deb), first);

        // A refresh downloads again (the small meta package here).
        let meta = download(META, dir.path(), false).expect("cached meta");
        let before = mtime(&meta);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(download(META, dir.path(), true).expect("refreshed"), meta);
        assert!(mtime(&meta) > before, "downloaded again");
    }
}
