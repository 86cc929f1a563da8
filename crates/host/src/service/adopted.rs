//! Runners built elsewhere (`microvm create --runner DIR`), such as microvm.nix's: no
//! `share/microvm/invocation.json`, only the runner contract of microvm.nix (inventory
//! §2.0 and §5): `bin/tap-up` and `bin/macvtap-up` before the start (as root),
//! `bin/virtiofsd-run` as a helper (as root, its sockets named by
//! `share/microvm/virtiofs/<tag>/socket`), `bin/microvm-run` as the hypervisor (as the
//! unprivileged user, in the VM directory), `bin/microvm-shutdown` for a graceful stop,
//! `bin/tap-down`/`macvtap-down` afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microvm_runner::{Capabilities, Helper, HelperKind, Invocation, Shutdown};
use microvm_spec::types::Hypervisor;

use crate::supervise::StopHandle;

/// Whether `dir` is an adopted runner: `bin/microvm-run` without `invocation.json`.
pub fn is_adopted(dir: &Path) -> bool {
    !dir.join("share/microvm/invocation.json").exists() && dir.join("bin/microvm-run").is_file()
}

/// The plan the supervisor runs for an adopted runner: `bin/microvm-run` as the
/// hypervisor (SIGTERM when there is no `bin/microvm-shutdown`), `bin/virtiofsd-run` as
/// its one helper. No control channel: the VM counts as ready once it started.
pub fn invocation(dir: &Path) -> Invocation {
    let share = dir.join("share/microvm");
    let hypervisor = std::fs::read_to_string(share.join("hypervisor"))
        .ok()
        .and_then(|h| h.trim().parse().ok())
        .unwrap_or(Hypervisor::Qemu);
    let mut helpers = Vec::new();
    let virtiofsd = dir.join("bin/virtiofsd-run");
    if virtiofsd.is_file() {
        let (tag, socket) = first_share(&share).unzip();
        helpers.push(Helper {
            name: "virtiofsd-run".into(),
            kind: HelperKind::Virtiofsd {
                tag: tag.unwrap_or_default(),
            },
            program: virtiofsd.display().to_string(),
            args: Vec::new(),
            socket,
        });
    }
    Invocation {
        hypervisor,
        program: dir.join("bin/microvm-run").display().to_string(),
        args: Vec::new(),
        process_name: None,
        env: Vec::new(),
        files: Vec::new(),
        helpers,
        pre_start: Vec::new(),
        control_socket: None,
        shutdown: Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
        control_channel: None,
        taps: Vec::new(),
        macvtap_fds: Vec::new(),
        kernel_cmdline: String::new(),
        capabilities: Capabilities {
            can_shutdown: dir.join("bin/microvm-shutdown").is_file(),
            supports_notify_socket: false,
            tap_multi_queue: false,
            readiness: false,
        },
        warnings: Vec::new(),
    }
}

/// The first virtiofs share's tag and socket (`share/microvm/virtiofs/<tag>/socket`).
fn first_share(share: &Path) -> Option<(String, String)> {
    let mut tags: Vec<PathBuf> = std::fs::read_dir(share.join("virtiofs"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    tags.sort();
    tags.into_iter().find_map(|t| {
        let socket = std::fs::read_to_string(t.join("socket")).ok()?;
        let tag = t.file_name()?.to_string_lossy().into_owned();
        Some((tag, socket.trim().to_owned()))
    })
}

/// Runs `bin/NAME` of the runner, if it exists, as root in `workdir`; its output goes to
/// the supervisor's log. `Err` carries a message when it fails.
pub fn script(dir: &Path, name: &str, workdir: &Path) -> Result<bool, String> {
    let path = dir.join("bin").join(name);
    if !path.is_file() {
        return Ok(false);
    }
    let status = Command::new(&path)
        .current_dir(workdir)
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", path.display()))?;
    if status.success() {
        Ok(true)
    } else {
        Err(format!("{} failed ({status})", path.display()))
    }
}

/// Runs the runner's `bin/microvm-shutdown` (microvm.nix's: it asks the guest to power
/// off and waits for the hypervisor to end) as `user`, in `workdir`. `Ok(false)` when the
/// runner has none.
pub fn shutdown(dir: &Path, workdir: &Path, user: Option<(u32, u32)>) -> Result<bool, String> {
    let script = dir.join("bin/microvm-shutdown");
    if !script.is_file() {
        return Ok(false);
    }
    run_as(&script, workdir, user).map(|()| true)
}

fn run_as(script: &Path, workdir: &Path, user: Option<(u32, u32)>) -> Result<(), String> {
    let mut cmd = Command::new(script);
    cmd.current_dir(workdir).stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt as _;
        cmd.uid(uid).gid(gid);
    }
    match cmd.status() {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("{} failed ({s})", script.display())),
        Err(e) => Err(format!("cannot run {}: {e}", script.display())),
    }
}

/// A graceful stop through `bin/microvm-shutdown`: the first stop request on `outer`
/// runs it (as the hypervisor's user, in `workdir`); only a second request, a failing
/// script or `timeout` passing forward the stop to `inner` (the supervisor's SIGTERM and,
/// after its own deadline, SIGKILL). Ends when `done` is set.
#[derive(Debug)]
pub struct GracefulStop {
    done: Arc<AtomicBool>,
}

impl GracefulStop {
    pub fn start(
        script: PathBuf,
        workdir: PathBuf,
        user: Option<(u32, u32)>,
        outer: StopHandle,
        inner: StopHandle,
        timeout: Duration,
        report: impl Fn(String) + Send + 'static,
    ) -> GracefulStop {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let base = outer.count();
        std::thread::spawn(move || {
            let wait = |until: Option<Instant>, n: usize| loop {
                if flag.load(Ordering::SeqCst) {
                    return false;
                }
                if outer.count() >= base + n || until.is_some_and(|u| Instant::now() >= u) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if !wait(None, 1) {
                return;
            }
            report(format!("shutting down ({})", script.display()));
            let graceful = match run_as(&script, &workdir, user) {
                Ok(()) => true,
                Err(e) => {
                    report(format!("{e}; sending SIGTERM"));
                    false
                }
            };
            if graceful && !wait(Some(Instant::now() + timeout), 2) {
                return;
            }
            inner.request();
            while !flag.load(Ordering::SeqCst) {
                if outer.count() >= base + 2 {
                    inner.request();
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        GracefulStop { done }
    }
}

impl Drop for GracefulStop {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nix_runner_is_planned_from_its_bin_scripts() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        std::fs::create_dir_all(dir.join("share/microvm/virtiofs/home")).expect("mkdir");
        assert!(!is_adopted(dir), "no microvm-run");
        for s in ["microvm-run", "virtiofsd-run"] {
            std::fs::write(dir.join("bin").join(s), "#!/bin/sh\n").expect("script");
        }
        std::fs::write(dir.join("share/microvm/hypervisor"), "cloud-hypervisor\n").expect("h");
        std::fs::write(
            dir.join("share/microvm/virtiofs/home/socket"),
            "vm1-virtiofs-home.sock\n",
        )
        .expect("socket");
        assert!(is_adopted(dir));
        let inv = invocation(dir);
        assert_eq!(inv.hypervisor, Hypervisor::CloudHypervisor);
        assert!(inv.program.ends_with("bin/microvm-run"));
        assert!(!inv.capabilities.can_shutdown, "no microvm-shutdown");
        assert_eq!(inv.helpers.len(), 1);
        assert_eq!(
            inv.helpers[0].socket.as_deref(),
            Some("vm1-virtiofs-home.sock")
        );
        std::fs::write(dir.join("share/microvm/invocation.json"), "{}").expect("write");
        assert!(!is_adopted(dir), "microvm's own runner");
    }

    #[test]
    fn scripts_run_when_present_and_fail_loudly() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path();
        std::fs::create_dir_all(dir.join("bin")).expect("mkdir");
        assert_eq!(script(dir, "tap-up", dir), Ok(false));
        let up = dir.join("bin/tap-up");
        std::fs::write(&up, "#!/bin/sh\ntouch ran\nexit 3\n").expect("script");
        std::fs::set_permissions(&up, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = script(dir, "tap-up", dir).expect_err("exit 3");
        assert!(err.contains("tap-up failed"), "{err}");
        assert!(dir.join("ran").exists(), "ran in the working directory");
    }
}
