//! `registerWithMachined`: under systemd (`$NOTIFY_SOCKET` set: the `microvm@` unit) the
//! supervisor runs the runner's `bin/microvm-register HYPERVISOR_PID` once the VM is up,
//! before `READY=1`, and `bin/microvm-unregister` once the hypervisor has ended. The VM
//! then shows in `machinectl list` as class `vm`, and `machinectl terminate` stops its
//! unit. A failure is reported in the log and the VM runs on.

use std::path::Path;
use std::process::{Command, Stdio};

/// Whether the supervisor runs under a service manager that hands it `$NOTIFY_SOCKET`.
pub fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

/// One run's registration: tried once the VM is up, undone if it was made.
#[derive(Debug, Default)]
pub struct Registration {
    enabled: bool,
    tried: bool,
    registered: bool,
}

impl Registration {
    /// Enabled under systemd for microvm's own runners (microvm.nix's scripts take no
    /// pid).
    pub fn new(adopted_runner: bool) -> Registration {
        Registration {
            enabled: !adopted_runner && under_systemd(),
            ..Registration::default()
        }
    }

    /// Registers the hypervisor `pid` the first time it is called with one.
    pub fn register(&mut self, runner: &Path, pid: Option<u32>, report: &mut dyn FnMut(&str)) {
        let Some(pid) = pid.filter(|_| self.enabled && !self.tried) else {
            return;
        };
        self.tried = true;
        match register(runner, pid) {
            Some(Ok(m)) => {
                self.registered = true;
                report(&m);
            }
            Some(Err(m)) => report(&m),
            None => {}
        }
    }

    /// Unregisters what [`Registration::register`] registered.
    pub fn unregister(&self, runner: &Path, report: &mut dyn FnMut(&str)) {
        if self.registered {
            if let Some(Ok(m) | Err(m)) = unregister(runner) {
                report(&m);
            }
        }
    }
}

/// Registers the VM (leader: the hypervisor `pid`); `None` when the runner has no
/// `bin/microvm-register`, else what to report: `Ok` when it is registered, `Err` (a
/// warning) when not.
pub fn register(runner: &Path, pid: u32) -> Option<Result<String, String>> {
    run(runner, "microvm-register", Some(pid))
}

/// Unregisters the VM; `None` when the runner has no `bin/microvm-unregister`.
pub fn unregister(runner: &Path) -> Option<Result<String, String>> {
    run(runner, "microvm-unregister", None)
}

fn run(runner: &Path, name: &str, pid: Option<u32>) -> Option<Result<String, String>> {
    let path = runner.join("bin").join(name);
    if !path.is_file() {
        return None;
    }
    let mut cmd = Command::new(&path);
    cmd.args(pid.map(|p| p.to_string()))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    Some(match cmd.output() {
        Ok(o) if o.status.success() => Ok(match pid {
            Some(_) => "registered with systemd-machined".into(),
            None => "unregistered from systemd-machined".into(),
        }),
        Ok(o) => Err(format!(
            "warning: {name} failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("warning: cannot run {}: {e}", path.display())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_scripts_with_the_pid_and_reports_failure() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(register(dir.path(), 7), None);
        std::fs::create_dir(dir.path().join("bin")).expect("mkdir");
        let seen = dir.path().join("seen");
        let write = |name: &str, body: &str| {
            let p = dir.path().join("bin").join(name);
            std::fs::write(&p, body).expect("script");
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .expect("chmod");
        };
        write(
            "microvm-register",
            &format!("#!/bin/sh\necho \"$@\" > {}\n", seen.display()),
        );
        write(
            "microvm-unregister",
            "#!/bin/sh\necho no machine >&2\nexit 1\n",
        );
        assert_eq!(
            register(dir.path(), 4242),
            Some(Ok("registered with systemd-machined".into()))
        );
        assert_eq!(std::fs::read_to_string(&seen).expect("seen"), "4242\n");
        let msg = unregister(dir.path()).expect("ran").expect_err("failed");
        assert!(
            msg.starts_with("warning: microvm-unregister failed") && msg.ends_with("no machine"),
            "{msg}"
        );
    }
}
