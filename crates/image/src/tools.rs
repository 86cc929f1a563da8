//! External tools (mkfs.erofs, mksquashfs, mkfs.<fs>, …): found on a search path or at an
//! explicit override, version-detected, and run with their stderr captured so a failure
//! names the full argv and what the tool said.

mod version;

pub use version::Version;

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// Directories searched after `$PATH`: mkfs tools live in sbin, which a non-root `$PATH`
/// often lacks.
const SBIN_DIRS: &str = "/usr/local/sbin:/usr/sbin:/sbin";

/// How many trailing bytes of a failed tool's stderr an error carries.
const STDERR_TAIL_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("`{name}` not found in {searched}{}", install_hint(*package))]
    Missing {
        name: String,
        package: Option<&'static str>,
        searched: String,
    },
    #[error("`{name}` override {} is not an executable file", path.display())]
    BadOverride { name: String, path: PathBuf },
    #[error("could not start `{argv}`")]
    Spawn {
        argv: String,
        source: std::io::Error,
    },
    #[error("`{argv}` failed ({status}): {stderr_tail}")]
    Failed {
        argv: String,
        status: ExitStatus,
        stderr_tail: String,
    },
    #[error("no version number in the output of `{argv}`: {output:?}")]
    NoVersion { argv: String, output: String },
}

fn install_hint(package: Option<&'static str>) -> String {
    match package {
        Some(p) => format!("; install the Debian package {p}"),
        None => String::new(),
    }
}

/// The Debian package that ships a tool, for "not found" errors.
pub fn debian_package(name: &str) -> Option<&'static str> {
    Some(match name {
        "mkfs.erofs" | "fsck.erofs" | "dump.erofs" => "erofs-utils",
        "mksquashfs" | "unsquashfs" => "squashfs-tools",
        "mkfs.ext2" | "mkfs.ext3" | "mkfs.ext4" | "mke2fs" | "e2label" | "chattr" => "e2fsprogs",
        "mkfs.xfs" => "xfsprogs",
        "mkfs.btrfs" => "btrfs-progs",
        "mkfs.vfat" | "mkfs.fat" | "mkfs.msdos" => "dosfstools",
        "depmod" | "modinfo" => "kmod",
        "blkid" => "util-linux",
        _ => return None,
    })
}

/// Where tools are looked up: a search path plus per-tool override paths. Injected so
/// tests (and users with tools outside `$PATH`) control exactly which binary runs.
#[derive(Debug, Clone, Default)]
pub struct Toolbox {
    search_path: OsString,
    overrides: BTreeMap<String, PathBuf>,
}

impl Toolbox {
    /// `$PATH` followed by the sbin directories.
    pub fn from_env() -> Self {
        let mut search_path = std::env::var_os("PATH").unwrap_or_default();
        if !search_path.is_empty() {
            search_path.push(":");
        }
        search_path.push(SBIN_DIRS);
        Self::with_search_path(search_path)
    }

    /// Exactly this colon-separated search path.
    pub fn with_search_path(search_path: impl Into<OsString>) -> Self {
        Self {
            search_path: search_path.into(),
            overrides: BTreeMap::new(),
        }
    }

    /// Use `path` for the tool `name` instead of searching for it.
    pub fn with_override(mut self, name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        self.overrides.insert(name.into(), path.into());
        self
    }

    /// The absolute path of the tool `name`.
    pub fn locate(&self, name: &str) -> Result<PathBuf, ToolError> {
        if let Some(path) = self.overrides.get(name) {
            return if is_executable(path) {
                Ok(path.clone())
            } else {
                Err(ToolError::BadOverride {
                    name: name.to_owned(),
                    path: path.clone(),
                })
            };
        }
        std::env::split_paths(&self.search_path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| ToolError::Missing {
                name: name.to_owned(),
                package: debian_package(name),
                searched: format!("search path {}", self.search_path.to_string_lossy()),
            })
    }

    /// A `Command` for the tool `name` with a cleared environment: only `PATH` (the
    /// search path) and `LC_ALL=C`, so output is parseable and runs are reproducible.
    pub fn command(&self, name: &str) -> Result<Command, ToolError> {
        let mut cmd = Command::new(self.locate(name)?);
        cmd.env_clear()
            .env("PATH", &self.search_path)
            .env("LC_ALL", "C");
        die_with_parent(&mut cmd);
        Ok(cmd)
    }

    /// Runs `name version_args…` and parses the first version number it prints (on
    /// stdout or stderr, whatever the exit status: mkfs.erofs 1.5 has no `--version`
    /// but prints `mkfs.erofs 1.5` before complaining).
    pub fn version(&self, name: &str, version_args: &[&str]) -> Result<Version, ToolError> {
        let mut cmd = self.command(name)?;
        cmd.args(version_args).stdin(Stdio::null());
        let argv = display_argv(&cmd);
        let out = cmd.output().map_err(|source| ToolError::Spawn {
            argv: argv.clone(),
            source,
        })?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push('\n');
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Version::find_in(&text).ok_or_else(|| ToolError::NoVersion {
            argv,
            output: text.lines().take(3).collect::<Vec<_>>().join("\n"),
        })
    }
}

/// The tool gets SIGKILL when the thread that started it dies: a `kill -9` of `update`
/// once left `mkfs.erofs` running as an orphan, writing into a scratch directory.
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only makes one prctl(2) call,
    // which is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `cmd` to completion with stdin closed, capturing stdout and stderr; a non-zero
/// exit becomes [`ToolError::Failed`] with the argv and the tail of stderr.
pub fn run(cmd: &mut Command) -> Result<Output, ToolError> {
    let argv = display_argv(cmd);
    tracing::debug!(%argv, "running");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            argv: argv.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(out);
    }
    let stream = if out.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
        &out.stderr
    } else {
        &out.stdout
    };
    Err(ToolError::Failed {
        argv,
        status: out.status,
        stderr_tail: tail(stream),
    })
}

fn tail(bytes: &[u8]) -> String {
    let start = bytes.len().saturating_sub(STDERR_TAIL_BYTES);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let text = text.trim();
    if start > 0 {
        format!("…{text}")
    } else {
        text.to_owned()
    }
}

/// The program and its arguments, shell-quoted where needed, for messages and reports.
pub fn display_argv(cmd: &Command) -> String {
    argv_strings(cmd)
        .iter()
        .map(|a| shell_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The program and its arguments as (lossy) strings.
pub fn argv_strings(cmd: &Command) -> Vec<String> {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a: &OsStr| a.to_string_lossy().into_owned())
        .collect()
}

fn shell_quote(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests;
