//! A Debian source (`debian = { suite, packages, mirror, variant }`): a root built by
//! the real `mmdebstrap`, written as a tarball into the store and then staged like any
//! other tarball source.
//!
//! - **Mode.** As root `--mode=root`; otherwise `--mode=unshare` (user namespaces and
//!   `newuidmap`/`newgidmap` with subordinate ids in `/etc/subuid` and `/etc/subgid`).
//!   The tarball carries root ownership either way.
//! - **Cache.** The tarball is cached under the hash of its inputs: suite, the sorted
//!   and deduplicated packages, mirror, variant, architecture and the mmdebstrap version
//!   — never the time. A suite moves (security updates, point releases); the cache does
//!   not notice. `MICROVM_REFRESH=1` rebuilds it in place (the root disk follows, since
//!   its key includes the tarball's contents); pinning `mirror` to a
//!   snapshot.debian.org URL makes the root reproducible instead.
//! - **Progress.** On a terminal mmdebstrap's lines stream through, prefixed; otherwise
//!   (logs) only a start and an end line. On failure the last lines are in the error.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, IsTerminal};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::store::{self, combine, Store};

/// The mirror when none is given.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Bump when the way the tarball is made changes (options, hooks).
const RECIPE: &str = "1";
/// How many of mmdebstrap's last lines a failure shows.
const TAIL: usize = 40;

/// What a `debian` source asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebianRoot {
    pub suite: String,
    pub packages: Vec<String>,
    /// `None`: [`DEFAULT_MIRROR`].
    pub mirror: Option<String>,
    /// mmdebstrap's `--variant`; `None`: mmdebstrap's default.
    pub variant: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error("cannot run mmdebstrap ({source}); Debian root sources need it: `apt-get install mmdebstrap` (scripts/setup-host.sh installs it)")]
    Missing { source: std::io::Error },
    #[error("mmdebstrap for Debian {suite} failed ({status}); its last lines:\n{tail}")]
    Failed {
        suite: String,
        status: String,
        tail: String,
    },
    #[error("a Debian package name {0:?} is not valid")]
    BadPackage(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

impl DebianRoot {
    /// The packages as passed to mmdebstrap: sorted, without duplicates.
    pub fn sorted_packages(&self) -> Vec<String> {
        let mut p: Vec<String> = self.packages.iter().map(|s| s.trim().to_owned()).collect();
        p.retain(|s| !s.is_empty());
        p.sort();
        p.dedup();
        p
    }

    pub fn mirror(&self) -> &str {
        self.mirror.as_deref().unwrap_or(DEFAULT_MIRROR)
    }

    /// The cache key: every input of the tarball, given mmdebstrap's `version`.
    pub fn key(&self, version: &str) -> String {
        combine(&[
            ("recipe", RECIPE),
            ("suite", &self.suite),
            ("packages", &self.sorted_packages().join(",")),
            ("mirror", self.mirror()),
            ("variant", self.variant.as_deref().unwrap_or("")),
            ("arch", std::env::consts::ARCH),
            ("mmdebstrap", version),
        ])
    }

    /// The mmdebstrap command line writing the tarball `out`.
    fn command(&self, out: &std::path::Path, as_root: bool) -> Command {
        let mut c = Command::new("mmdebstrap");
        c.arg(if as_root {
            "--mode=root"
        } else {
            "--mode=unshare"
        });
        c.arg("--format=tar");
        c.arg("--aptopt=Acquire::Retries \"3\"");
        if let Some(v) = &self.variant {
            c.arg(format!("--variant={v}"));
        }
        let packages = self.sorted_packages();
        if !packages.is_empty() {
            c.arg(format!("--include={}", packages.join(",")));
        }
        c.arg(&self.suite).arg(out).arg(self.mirror());
        c
    }
}

/// mmdebstrap's version (`mmdebstrap 1.3.5` → `1.3.5`).
pub fn mmdebstrap_version() -> Result<String, DebianError> {
    let out = Command::new("mmdebstrap")
        .arg("--version")
        .output()
        .map_err(|source| DebianError::Missing { source })?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .last()
        .unwrap_or("unknown")
        .to_owned())
}

/// Whether `MICROVM_REFRESH` asks for cached Debian roots to be rebuilt.
fn refresh_requested() -> bool {
    std::env::var("MICROVM_REFRESH").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The tarball of `root` in `store`, built with mmdebstrap when it is not cached (or
/// when `MICROVM_REFRESH` is set). Returns its path and whether it was cached.
pub fn ensure(root: &DebianRoot, store: &Store) -> Result<(PathBuf, bool), DebianError> {
    for p in &root.packages {
        let ok = p
            .trim()
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.:=_~/".contains(c));
        if !ok || p.trim().starts_with('-') {
            return Err(DebianError::BadPackage(p.clone()));
        }
    }
    let version = mmdebstrap_version()?;
    let suite_name: String = root
        .suite
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dest = store.path(&root.key(&version), &format!("debian-{suite_name}.tar"));
    if dest.exists() && !refresh_requested() {
        return Ok((dest, true));
    }
    let scratch = store.scratch("debian")?;
    let tar = scratch.join("root.tar");
    build(root, &tar)?;
    store.publish(&tar, &dest)?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok((dest, false))
}

/// Runs mmdebstrap, streaming or summarising its output.
fn build(root: &DebianRoot, out: &std::path::Path) -> Result<(), DebianError> {
    let terminal = std::io::stderr().is_terminal();
    let packages = root.sorted_packages();
    let what = format!(
        "Debian {} ({}{}{})",
        root.suite,
        root.variant.as_deref().unwrap_or("default variant"),
        if packages.is_empty() { "" } else { " + " },
        packages.join(" ")
    );
    eprintln!(
        "microvm: building the {what} root with mmdebstrap from {}",
        root.mirror()
    );
    let started = Instant::now();
    let as_root = rustix::process::geteuid().is_root();
    let mut child = root
        .command(out, as_root)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| DebianError::Missing { source })?;
    let mut tail = VecDeque::with_capacity(TAIL);
    if let Some(stderr) = child.stderr.take() {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if terminal {
                eprintln!("microvm: mmdebstrap: {line}");
            }
            if tail.len() == TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
    let status = child
        .wait()
        .map_err(|source| DebianError::Missing { source })?;
    if !status.success() {
        let _ = std::fs::remove_file(out);
        return Err(DebianError::Failed {
            suite: root.suite.clone(),
            status: status.to_string(),
            tail: Vec::from(tail).join("\n"),
        });
    }
    eprintln!(
        "microvm: built the {what} root in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(packages: &[&str]) -> DebianRoot {
        DebianRoot {
            suite: "bookworm".into(),
            packages: packages.iter().map(|s| s.to_string()).collect(),
            mirror: None,
            variant: Some("minbase".into()),
        }
    }

    #[test]
    fn key_ignores_package_order_and_duplicates() {
        let a = root(&["systemd-sysv", "busybox"]);
        let b = root(&["busybox", "systemd-sysv", "busybox"]);
        assert_eq!(a.key("1.3.5"), b.key("1.3.5"));
        assert_ne!(
            a.key("1.3.5"),
            a.key("1.4.0"),
            "the mmdebstrap version counts"
        );
        let mut c = a.clone();
        c.mirror = Some("http://snapshot.debian.org/archive/debian/20240601T000000Z".into());
        assert_ne!(a.key("1.3.5"), c.key("1.3.5"), "the mirror counts");
        let mut d = a.clone();
        d.variant = None;
        assert_ne!(a.key("1.3.5"), d.key("1.3.5"), "the variant counts");
    }

    #[test]
    fn command_line() {
        let r = root(&["systemd-sysv", "busybox"]);
        let c = r.command(std::path::Path::new("/tmp/out.tar"), false);
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "--mode=unshare",
                "--format=tar",
                "--aptopt=Acquire::Retries \"3\"",
                "--variant=minbase",
                "--include=busybox,systemd-sysv",
                "bookworm",
                "/tmp/out.tar",
                DEFAULT_MIRROR,
            ]
        );
    }

    #[test]
    fn option_like_packages_are_refused() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let store = Store::open(tmp.path()).expect("store");
        for bad in ["--hook-dir=/x", "a b", "x;y"] {
            assert!(
                matches!(
                    ensure(&root(&[bad]), &store),
                    Err(DebianError::BadPackage(_))
                ),
                "{bad}"
            );
        }
    }
}
