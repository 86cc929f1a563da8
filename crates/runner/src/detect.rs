//! Hypervisor version detection, at the edge: [`detect`] runs the binary a plan would
//! start with its version argument (`--version`; `crosvm version`, `lkvm version`) and
//! reads the first `N.N[.N]` of its output. The result is a host fact
//! ([`HostFacts::versions`](crate::HostFacts)) the pure planners choose syntax from; a
//! configured `<hypervisor>.version` wins over detection, and a binary that is missing
//! or says nothing usable leaves the version unknown, which every planner reads as "the
//! newest syntax".
//!
//! Outputs are cached by the binary's canonical path, size and modification time (a JSON
//! file the caller names, e.g. under `$XDG_CACHE_HOME/microvm`), so `plan` does not start
//! the hypervisor every time.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use microvm_spec::config::Config;
use microvm_spec::types::Hypervisor;
use serde::{Deserialize, Serialize};

use crate::common::program;
use crate::version::Version;

/// How long a version command may take before it is killed.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The most output kept from a version command, and cache entries kept.
const MAX_OUTPUT: u64 = 4096;
const MAX_ENTRIES: usize = 64;
/// A cache file larger than this is ignored (and rewritten).
const MAX_CACHE_BYTES: u64 = 1 << 20;

/// Where a plan's version came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "source")]
pub enum Detection {
    /// `<hypervisor>.version` in the definition.
    Configured { version: Version },
    /// The binary's own answer (`cached`: read from the cache, not run now).
    Detected {
        program: PathBuf,
        version: Version,
        output: String,
        cached: bool,
    },
    /// The binary is not there: planned for the newest syntax.
    Missing { program: String },
    /// The binary ran but its version is unknown (`reason`): planned for the newest syntax.
    Unknown { program: PathBuf, reason: String },
}

impl Detection {
    /// The version the planner gets (`None`: the newest syntax).
    pub fn version(&self) -> Option<Version> {
        match self {
            Detection::Configured { version } | Detection::Detected { version, .. } => {
                Some(*version)
            }
            Detection::Missing { .. } | Detection::Unknown { .. } => None,
        }
    }

    /// One line for `plan` and `check`: which version the plan is for, and why.
    pub fn describe(&self, hypervisor: Hypervisor) -> String {
        match self {
            Detection::Configured { version } => {
                format!("{hypervisor} {version} (configured `version`)")
            }
            Detection::Detected {
                program,
                version,
                cached,
                ..
            } => format!(
                "{hypervisor} {version} (detected from {}{})",
                program.display(),
                if *cached { ", cached" } else { "" }
            ),
            Detection::Missing { program } => {
                format!("{program} not found: planned for the newest {hypervisor} syntax")
            }
            Detection::Unknown { program, reason } => format!(
                "version of {} unknown ({reason}): planned for the newest {hypervisor} syntax",
                program.display()
            ),
        }
    }
}

/// The binary a plan for `hypervisor` starts (as the planner writes it).
pub fn program_of(hypervisor: Hypervisor, config: &Config) -> String {
    let qemu = format!("qemu-system-{}", config.arch.name());
    let (package, name) = match hypervisor {
        Hypervisor::Qemu => (config.qemu.package.as_deref(), qemu.as_str()),
        Hypervisor::CloudHypervisor => (
            config.cloud_hypervisor.package.as_deref(),
            "cloud-hypervisor",
        ),
        Hypervisor::Firecracker => (config.firecracker.package.as_deref(), "firecracker"),
        Hypervisor::Crosvm => (config.crosvm.package.as_deref(), "crosvm"),
        Hypervisor::Kvmtool => (config.kvmtool.package.as_deref(), "lkvm"),
        Hypervisor::Stratovirt => (config.stratovirt.package.as_deref(), "stratovirt"),
        Hypervisor::Alioth => (config.alioth.package.as_deref(), "alioth"),
        Hypervisor::Vfkit => (None, "vfkit"),
    };
    program(package, name)
}

/// The argument that makes `hypervisor`'s binary print its version and exit.
pub fn version_args(hypervisor: Hypervisor) -> &'static [&'static str] {
    match hypervisor {
        // `crosvm --version` is not an option (hypervisor-cli-notes).
        Hypervisor::Crosvm | Hypervisor::Kvmtool => &["version"],
        // stratovirt's own parser takes single-dash options.
        Hypervisor::Stratovirt => &["-V"],
        _ => &["--version"],
    }
}

/// The configured `<hypervisor>.version`, if any (qemu has none).
fn configured(hypervisor: Hypervisor, config: &Config) -> Option<&str> {
    match hypervisor {
        Hypervisor::CloudHypervisor => config.cloud_hypervisor.version.as_deref(),
        Hypervisor::Firecracker => config.firecracker.version.as_deref(),
        Hypervisor::Crosvm => config.crosvm.version.as_deref(),
        Hypervisor::Kvmtool => config.kvmtool.version.as_deref(),
        Hypervisor::Stratovirt => config.stratovirt.version.as_deref(),
        Hypervisor::Alioth => config.alioth.version.as_deref(),
        Hypervisor::Qemu | Hypervisor::Vfkit => None,
    }
}

/// Which version a plan for `hypervisor` should use. `cache`: the cache file (`None`: no
/// cache). A configured version that does not parse is left to the planner, which
/// reports it.
pub fn detect(hypervisor: Hypervisor, config: &Config, cache: Option<&Path>) -> Detection {
    if let Some(version) = configured(hypervisor, config).and_then(|v| v.parse().ok()) {
        return Detection::Configured { version };
    }
    let name = program_of(hypervisor, config);
    let Some(path) = resolve(&name) else {
        return Detection::Missing { program: name };
    };
    detect_binary(hypervisor, &path, cache)
}

/// Runs (or reads from the cache) the version command of the binary at `path`.
pub fn detect_binary(hypervisor: Hypervisor, path: &Path, cache: Option<&Path>) -> Detection {
    let key = match Key::of(path) {
        Ok(k) => k,
        Err(e) => {
            return Detection::Unknown {
                program: path.to_owned(),
                reason: e.to_string(),
            }
        }
    };
    let mut entries = cache.map(read_cache).unwrap_or_default();
    let (output, cached) = match entries.iter().find(|e| e.key == key) {
        Some(e) => (e.output.clone(), true),
        None => match run_version(path, version_args(hypervisor)) {
            Ok(output) => (output, false),
            Err(reason) => {
                return Detection::Unknown {
                    program: path.to_owned(),
                    reason,
                }
            }
        },
    };
    if let (Some(file), false) = (cache, cached) {
        entries.retain(|e| e.key.path != key.path);
        entries.push(Entry {
            key: key.clone(),
            output: output.clone(),
        });
        let skip = entries.len().saturating_sub(MAX_ENTRIES);
        // A cache that cannot be written only costs a run next time.
        let _ = write_cache(file, &entries[skip..]);
    }
    match parse_output(hypervisor, &output) {
        Some(version) => Detection::Detected {
            program: path.to_owned(),
            version,
            output: output.trim().to_owned(),
            cached,
        },
        None => Detection::Unknown {
            program: path.to_owned(),
            reason: format!("no version in its output {:?}", first_line(&output)),
        },
    }
}

/// The version in a version command's output. crosvm prints its crate version (`0.1.0`),
/// which says nothing about the release: unknown.
pub fn parse_output(hypervisor: Hypervisor, output: &str) -> Option<Version> {
    let v = Version::find_in(output)?;
    (hypervisor != Hypervisor::Crosvm || v.major >= 1).then_some(v)
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or_default()
}

/// `name` itself when it names a path, else the first executable `name` on `PATH`.
fn resolve(name: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exec(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| is_exec(p))
}

/// Runs `path args…` with no input, kills it after [`TIMEOUT`], and returns up to
/// [`MAX_OUTPUT`] bytes of its stdout, then stderr.
fn run_version(path: &Path, args: &[&str]) -> Result<String, String> {
    let mut child = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|r| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.take(MAX_OUTPUT).read_to_end(&mut buf);
            buf
        })
    })
    .collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("it did not exit within {}s", TIMEOUT.as_secs()));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    }
    let mut out = Vec::new();
    for r in readers {
        out.extend(r.join().unwrap_or_default());
        out.push(b'\n');
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// What identifies one build of a binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Key {
    path: PathBuf,
    size: u64,
    mtime_ns: i128,
}

impl Key {
    fn of(path: &Path) -> std::io::Result<Key> {
        let canonical = path.canonicalize()?;
        let m = canonical.metadata()?;
        Ok(Key {
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            path: canonical,
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    key: Key,
    output: String,
}

/// The cache's entries; a missing, oversized or unreadable cache is empty.
fn read_cache(file: &Path) -> Vec<Entry> {
    let Ok(f) = std::fs::File::open(file) else {
        return Vec::new();
    };
    let mut text = String::new();
    if f.take(MAX_CACHE_BYTES + 1)
        .read_to_string(&mut text)
        .is_err()
        || text.len() as u64 > MAX_CACHE_BYTES
    {
        return Vec::new();
    }
    serde_json::from_str(&text).unwrap_or_default()
}

/// Replaces the cache atomically (a temporary file renamed over it).
fn write_cache(file: &Path, entries: &[Entry]) -> std::io::Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = file.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(
        &tmp,
        serde_json::to_vec(entries).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests;
