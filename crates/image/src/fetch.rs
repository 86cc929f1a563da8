//! Fetching a Debian kernel package by name (`kernel = { package = "…" }`) with
//! `apt-get download`, following a meta-package (such as `linux-image-cloud-amd64`) to the
//! versioned image package it depends on. Downloads are cached by file name.

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
    std::fs::create_dir_all(dir).map_err(|source| FetchError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut name = package.to_owned();
    for _ in 0..4 {
        let deb = download(&name, dir)?;
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

fn download(package: &str, dir: &Path) -> Result<PathBuf, FetchError> {
    let existing = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = existing(dir) {
        return Ok(deb);
    }
    let out = Command::new("apt-get")
        .args(["download", "-q", package])
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
    existing(dir).ok_or_else(|| FetchError::Download {
        package: package.to_owned(),
        stderr: "apt-get reported success but no .deb appeared".into(),
    })
}
