//! The state directory of managed VMs (`/var/lib/microvms` by default), with the layout of
//! microvm.nix so its habits carry over:
//!
//! ```text
//! <state>/
//!   .store/               content-addressed store (runners, artifacts, kernel caches)
//!   .lock                 exclusive: `host apply`, `gc`; shared: `create`, `update`
//!   autostart             names of the VMs to start at boot, one a line
//!   <name>/               the VM's working directory: relative volume and socket paths resolve here
//!     current -> runner   the runner to start next (absolute symlink into the store)
//!     booted  -> runner   the runner that is running (set by the supervisor, removed when it stops)
//!     old     -> runner   the previous `current` (rollback, diff, kept by gc)
//!     source              absolute path of the definition file it was built from
//!     runner-source       instead of `source`: the adopted runner directory (`create --runner`)
//!     managed-by          absolute path of the host file that installed it (`host apply`)
//!     inputs.json         fingerprint of the inputs `current` was built from (`list`)
//!     status.json         the supervisor's last known state (`Status`)
//!     supervisor.pid, supervisor.log, console.log
//!     .lock               flock(2): one microvm command at a time per VM
//! ```
//!
//! Every change is atomic: symlinks and files are written under a temporary name and
//! renamed over the old one, so a crash leaves either the old or the new generation.

mod lock;
mod status;
#[cfg(test)]
mod tests;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use microvm_spec::types::VmName;

pub use lock::{HostLock, VmLock};
pub use status::{now, pid_alive, Status, VmState};

/// The most bytes read of one record of a VM directory (status, paths).
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Default time a command waits for another command's lock.
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("another microvm command holds the lock of VM {name} (waited {}s)", timeout.as_secs())]
    Locked {
        name: VmName,
        timeout: std::time::Duration,
    },
    #[error("another microvm command holds the lock of the state directory {} (waited {}s)", path.display(), timeout.as_secs())]
    HostLocked {
        path: PathBuf,
        timeout: std::time::Duration,
    },
    #[error("VM {name} does not exist (no {})", path.display())]
    NotFound { name: VmName, path: PathBuf },
    #[error("{} is not a valid status file: {source}", path.display())]
    BadStatus {
        path: PathBuf,
        source: serde_json::Error,
    },
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// The state directory. Nothing is created until something is written.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> StateDir {
        StateDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<state>/.store`.
    pub fn store_root(&self) -> PathBuf {
        self.root.join(".store")
    }

    /// `<state>/autostart`: the names of the VMs to start at boot, one a line.
    pub fn autostart_path(&self) -> PathBuf {
        self.root.join("autostart")
    }

    /// The VM directory of `name` (which need not exist).
    pub fn vm(&self, name: &VmName) -> VmDir {
        VmDir {
            name: name.clone(),
            path: self.root.join(name.as_str()),
        }
    }

    /// The managed VMs: directories with a `current` link, sorted by name. Dot-entries
    /// (`.store`, `.tmp-*`) and names that are not valid VM names are skipped. A missing
    /// state directory has no VMs.
    pub fn list(&self) -> Result<Vec<VmName>, StateError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err("read", &self.root)(e)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err("read", &self.root))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let Ok(name) = name.parse::<VmName>() else {
                continue;
            };
            if fs::symlink_metadata(entry.path().join("current")).is_ok() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The names in `autostart` (missing file: none; invalid lines are skipped).
    pub fn autostart(&self) -> Result<Vec<VmName>, StateError> {
        let path = self.autostart_path();
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text
                .lines()
                .filter_map(|l| l.trim().parse::<VmName>().ok())
                .collect()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Replaces `autostart` atomically.
    pub fn write_autostart(&self, names: &[VmName]) -> Result<(), StateError> {
        let mut text = String::new();
        for n in names {
            text.push_str(n.as_str());
            text.push('\n');
        }
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        write_atomic(&self.autostart_path(), text.as_bytes())
    }

    /// Takes the state directory's own lock (`<state>/.lock`) exclusively, for whole-host
    /// operations (`host apply`, `gc`) that must not interleave with each other or with a
    /// build that has not yet linked its runner.
    pub fn lock(&self, timeout: std::time::Duration) -> Result<HostLock, StateError> {
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        lock::lock_host(&self.root.join(".lock"), timeout, false)
    }

    /// Takes the state directory's lock shared: commands that build into the store and
    /// link the result (`create`, `update`) hold it, so `gc` never runs between the two.
    /// They run concurrently with each other.
    pub fn lock_shared(&self, timeout: std::time::Duration) -> Result<HostLock, StateError> {
        fs::create_dir_all(&self.root).map_err(io_err("create", &self.root))?;
        lock::lock_host(&self.root.join(".lock"), timeout, true)
    }
}

/// One VM's directory, `<state>/<name>`.
#[derive(Debug, Clone)]
pub struct VmDir {
    name: VmName,
    path: PathBuf,
}

impl VmDir {
    /// A VM directory at an explicit path (e.g. the temporary directory of `create`).
    pub fn at(name: &VmName, path: impl Into<PathBuf>) -> VmDir {
        VmDir {
            name: name.clone(),
            path: path.into(),
        }
    }

    pub fn name(&self) -> &VmName {
        &self.name
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the VM exists (its `current` link does).
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(self.path.join("current")).is_ok()
    }

    /// Fails with [`StateError::NotFound`] unless the VM exists.
    pub fn require(&self) -> Result<(), StateError> {
        if self.exists() {
            Ok(())
        } else {
            Err(StateError::NotFound {
                name: self.name.clone(),
                path: self.path.join("current"),
            })
        }
    }

    /// The runner `current` points to.
    pub fn current(&self) -> Option<PathBuf> {
        self.link("current")
    }

    /// The runner that is running (`booted`).
    pub fn booted(&self) -> Option<PathBuf> {
        self.link("booted")
    }

    /// The previous `current`.
    pub fn old(&self) -> Option<PathBuf> {
        self.link("old")
    }

    fn link(&self, name: &str) -> Option<PathBuf> {
        // Only links root wrote: the directory is writable by the hypervisors' group.
        let target = crate::trust::read_link_owned(&self.path.join(name))?;
        Some(if target.is_absolute() {
            target
        } else {
            self.path.join(target)
        })
    }

    /// Points `current` at `runner` (made absolute). The previous `current`, if it differs,
    /// becomes `old` first. Each link is replaced by rename(2), so a crash leaves either the
    /// old generation (`current` unchanged; `old` possibly equal to it) or the new one.
    /// Returns the previous `current`.
    pub fn set_current(&self, runner: &Path) -> Result<Option<PathBuf>, StateError> {
        self.set_current_with(runner, &mut |_| Ok(()))
    }

    /// `set_current` with a checkpoint called after each step ("old", "current"), so tests
    /// can simulate a crash between them.
    pub(crate) fn set_current_with(
        &self,
        runner: &Path,
        checkpoint: &mut dyn FnMut(&'static str) -> Result<(), StateError>,
    ) -> Result<Option<PathBuf>, StateError> {
        let runner = absolute(runner)?;
        let previous = self.current();
        if previous.as_deref() == Some(runner.as_path()) {
            return Ok(previous);
        }
        if let Some(prev) = &previous {
            self.replace_link("old", prev)?;
            checkpoint("old")?;
        }
        self.replace_link("current", &runner)?;
        checkpoint("current")?;
        Ok(previous)
    }

    /// Points `booted` at `runner` (what the supervisor does before starting it).
    pub fn set_booted(&self, runner: &Path) -> Result<(), StateError> {
        let runner = absolute(runner)?;
        self.replace_link("booted", &runner)
    }

    /// Removes `booted` (the VM stopped). No error when it is absent.
    pub fn clear_booted(&self) -> Result<(), StateError> {
        remove_if_exists(&self.path.join("booted"))
    }

    /// The definition file the VM was created from (`source`).
    pub fn source(&self) -> Option<PathBuf> {
        self.read_path("source")
    }

    /// Records the definition file (made absolute).
    pub fn set_source(&self, file: &Path) -> Result<(), StateError> {
        self.write_path("source", file)
    }

    /// The runner directory an adopted VM was created from (`runner-source`).
    pub fn runner_source(&self) -> Option<PathBuf> {
        self.read_path("runner-source")
    }

    pub fn set_runner_source(&self, dir: &Path) -> Result<(), StateError> {
        self.write_path("runner-source", dir)
    }

    /// The host file that installed the VM (`managed-by`), if `host apply` did.
    pub fn managed_by(&self) -> Option<PathBuf> {
        self.read_path("managed-by")
    }

    pub fn set_managed_by(&self, host_file: &Path) -> Result<(), StateError> {
        self.write_path("managed-by", host_file)
    }

    /// Forgets `managed-by` (the VM becomes imperatively managed).
    pub fn clear_managed_by(&self) -> Result<(), StateError> {
        remove_if_exists(&self.path.join("managed-by"))
    }

    pub fn status_path(&self) -> PathBuf {
        self.path.join("status.json")
    }

    pub fn supervisor_pid_path(&self) -> PathBuf {
        self.path.join("supervisor.pid")
    }

    pub fn supervisor_log_path(&self) -> PathBuf {
        self.path.join("supervisor.log")
    }

    pub fn console_log_path(&self) -> PathBuf {
        self.path.join("console.log")
    }

    pub fn lock_path(&self) -> PathBuf {
        self.path.join(".lock")
    }

    /// The recorded status, as written (`None` if the VM never ran).
    pub fn status(&self) -> Result<Option<Status>, StateError> {
        let path = self.status_path();
        match crate::trust::read_owned(&path, MAX_RECORD_BYTES) {
            Ok(Some(bytes)) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|source| StateError::BadStatus { path, source }),
            Ok(None) => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// The recorded status, corrected by a liveness check: a `Starting`/`Running`/`Stopping`
    /// status whose supervisor process is gone reads as `Failed` ("supervisor … is gone").
    pub fn live_status(&self) -> Result<Option<Status>, StateError> {
        Ok(self.status()?.map(Status::checked))
    }

    /// Writes `status.json` atomically.
    pub fn write_status(&self, status: &Status) -> Result<(), StateError> {
        let mut bytes =
            serde_json::to_vec_pretty(status).map_err(|source| StateError::BadStatus {
                path: self.status_path(),
                source,
            })?;
        bytes.push(b'\n');
        write_atomic(&self.status_path(), &bytes)
    }

    /// The pid in `supervisor.pid`, if the file exists and parses.
    pub fn supervisor_pid(&self) -> Option<u32> {
        // Only a file root wrote: a planted pid would be signalled as root.
        let bytes = crate::trust::read_owned(&self.supervisor_pid_path(), 64).ok()??;
        String::from_utf8(bytes).ok()?.trim().parse().ok()
    }

    /// Writes `supervisor.pid` atomically.
    pub fn write_supervisor_pid(&self, pid: u32) -> Result<(), StateError> {
        write_atomic(&self.supervisor_pid_path(), format!("{pid}\n").as_bytes())
    }

    /// Takes the VM's lock (flock(2) on `<dir>/.lock`), waiting up to `timeout`. Commands on
    /// one VM serialise; commands on different VMs do not interact. Fails with
    /// [`StateError::NotFound`] if the directory does not exist, or was removed while
    /// waiting.
    pub fn lock(&self, timeout: std::time::Duration) -> Result<VmLock, StateError> {
        if !self.path.is_dir() {
            return Err(StateError::NotFound {
                name: self.name.clone(),
                path: self.path.clone(),
            });
        }
        lock::lock_vm(self, timeout)
    }

    /// Writes a file of the VM directory atomically (temp + rename).
    pub fn write_file(&self, name: &str, contents: &[u8]) -> Result<(), StateError> {
        write_atomic(&self.path.join(name), contents)
    }

    fn read_path(&self, name: &str) -> Option<PathBuf> {
        let bytes = crate::trust::read_owned(&self.path.join(name), MAX_RECORD_BYTES).ok()??;
        let text = String::from_utf8(bytes).ok()?;
        let line = text.lines().next()?.trim_end();
        (!line.is_empty()).then(|| PathBuf::from(line))
    }

    fn write_path(&self, name: &str, value: &Path) -> Result<(), StateError> {
        let value = absolute(value)?;
        let mut text = value.as_os_str().as_encoded_bytes().to_vec();
        text.push(b'\n');
        write_atomic(&self.path.join(name), &text)
    }

    /// Replaces the symlink `name` by one to `target`: a new link under a temporary name,
    /// then rename(2) over the old one.
    fn replace_link(&self, name: &str, target: &Path) -> Result<(), StateError> {
        let link = self.path.join(name);
        let tmp = temp_sibling(&link);
        let _ = fs::remove_file(&tmp);
        symlink(target, &tmp).map_err(io_err("create the symlink", &tmp))?;
        fs::rename(&tmp, &link).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("replace", &link)(e)
        })?;
        sync_dir(&self.path);
        Ok(())
    }
}

/// `path` made absolute against the current directory (not canonicalised: symlinks stay).
pub fn absolute(path: &Path) -> Result<PathBuf, StateError> {
    std::path::absolute(path).map_err(io_err("resolve", path))
}

/// Writes `path` atomically: a fresh temporary sibling created with
/// `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted symlink is never followed), fsync, rename, fsync
/// of the directory. See [`crate::trust`].
pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<(), StateError> {
    let (mut f, tmp) =
        crate::trust::create_temp_sibling(path, 0o644).map_err(io_err("write", path))?;
    let result = (|| {
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("write", path)(e));
    }
    if let Some(parent) = path.parent() {
        sync_dir(parent);
    }
    Ok(())
}

fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .unwrap_or(OsStr::new("x"))
        .to_string_lossy();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    path.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn remove_if_exists(path: &Path) -> Result<(), StateError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}
