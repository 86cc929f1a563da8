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
/// off and waits for the hypervisor to end) as `user`, in `workdir`, for at most
/// `timeout`. `Ok(false)` when the runner has none.
pub fn shutdown(
    dir: &Path,
    workdir: &Path,
    user: Option<(u32, u32)>,
    timeout: Duration,
) -> Result<bool, String> {
    let script = dir.join("bin/microvm-shutdown");
    if !script.is_file() {
        return Ok(false);
    }
    let deadline = Instant::now() + timeout;
    run_bounded(&script, workdir, user, &|| Instant::now() >= deadline).map(|()| true)
}

/// Runs `script` as `user` in `workdir`; kills it once `give_up` says so.
fn run_bounded(
    script: &Path,
    workdir: &Path,
    user: Option<(u32, u32)>,
    give_up: &dyn Fn() -> bool,
) -> Result<(), String> {
    let mut cmd = Command::new(script);
    cmd.current_dir(workdir).stdin(Stdio::null());
    if let Some((uid, gid)) = user {
        use std::os::unix::process::CommandExt as _;
        cmd.uid(uid).gid(gid);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => return Err(format!("{} failed ({s})", script.display())),
            Ok(None) if give_up() => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{} did not finish in time", script.display()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {}: {e}", script.display())),
        }
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
            let ended = || flag.load(Ordering::SeqCst);
            let stops = || outer.count() - base;
            let pause = || std::thread::sleep(Duration::from_millis(50));
            while stops() == 0 {
                if ended() {
                    return;
                }
                pause();
            }
            report(format!("shutting down ({})", script.display()));
            let deadline = Instant::now() + timeout;
            let give_up = || ended() || stops() >= 2 || Instant::now() >= deadline;
            match run_bounded(&script, &workdir, user, &give_up) {
                // The guest powers off: wait for the VM's end within the deadline.
                Ok(()) => {
                    while !give_up() {
                        pause();
                    }
                }
                Err(e) => report(format!("{e}; sending SIGTERM")),
            }
            if ended() {
                return;
            }
            inner.request();
            let forwarded = stops();
            while !ended() {
                if stops() > forwarded {
                    inner.request(); // one more stop: the supervisor kills at once
                    return;
                }
                pause();
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

    fn watcher(
        script_text: &str,
        timeout: Duration,
    ) -> (tempfile::TempDir, StopHandle, StopHandle, GracefulStop) {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().expect("tempdir");
        let script = tmp.path().join("microvm-shutdown");
        std::fs::write(&script, script_text).expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let (outer, inner) = (StopHandle::default(), StopHandle::default());
        let w = GracefulStop::start(
            script,
            tmp.path().to_path_buf(),
            None,
            outer.clone(),
            inner.clone(),
            timeout,
            |_| {},
        );
        (tmp, outer, inner, w)
    }

    fn eventually(what: &str, ok: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(Instant::now() < end, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_hanging_shutdown_script_is_cut_short_at_the_deadline() {
        let (tmp, outer, inner, _w) = watcher(
            "#!/bin/sh\ntouch ran\nexec sleep 1000\n",
            Duration::from_millis(300),
        );
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(inner.count(), 0, "nothing before a stop");
        outer.request();
        eventually("the script ran", || tmp.path().join("ran").exists());
        eventually("the stop is forwarded after the deadline", || {
            inner.count() == 1
        });
        outer.request();
        eventually("a second stop forces", || inner.count() == 2);
    }

    #[test]
    fn a_second_stop_forwards_at_once() {
        let (_tmp, outer, inner, _w) =
            watcher("#!/bin/sh\nexec sleep 1000\n", Duration::from_secs(600));
        outer.request();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(inner.count(), 0, "the script has its time");
        outer.request();
        eventually("forwarded", || inner.count() >= 1);
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
