//! A real systemd for the tests that need one: PID 1 of a `systemd-nspawn -D /
//! --volatile=yes -b` container (the host's /usr, an empty /etc and /var, a private
//! network), reached with `nsenter` (machinectl needs a host systemd).

use std::ffi::OsString;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A booted container; powered off and reaped on drop.
pub struct Container {
    nspawn: Child,
    init: u32,
}

impl Container {
    /// Boots the container `name` with `binds` bound into it (and the `extra` arguments
    /// of systemd-nspawn); `None` when its systemd is not running within 90 s.
    pub fn boot(name: &str, binds: &[&Path], extra: &[&str]) -> Option<Container> {
        let binds = binds.iter().map(|b| {
            let mut arg = OsString::from("--bind=");
            arg.push(b);
            arg
        });
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "-q",
                "-D",
                "/",
                "--volatile=yes",
                "--register=no",
                "--keep-unit",
            ])
            .args(["-M", name, "--private-network"])
            .args(extra)
            .args(binds)
            // The container's /usr is the host's, read-only: where Pacemaker is installed
            // `host install` would write its OCF agent there.
            .args(
                Path::new("/usr/lib/ocf")
                    .is_dir()
                    .then_some("--tmpfs=/usr/lib/ocf"),
            )
            .args(["--console=read-only", "-b"])
            .args(["systemd.unit=basic.target", "systemd.firstboot=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn");
        let mut c = Container { nspawn, init: 0 };
        let end = Instant::now() + Duration::from_secs(90);
        while Instant::now() < end {
            c.init = child_of(c.nspawn.id()).unwrap_or(0);
            if c.init != 0 {
                let out = c.exec(&["systemctl", "is-system-running"]);
                let state = String::from_utf8_lossy(&out.stdout);
                if matches!(state.trim(), "running" | "degraded") {
                    return Some(c);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        eprintln!("timed out waiting for the container's systemd");
        None
    }

    /// The command prefix that runs a command in the container.
    pub fn prefix(&self) -> [String; 4] {
        ["nsenter", "-t", &self.init.to_string(), "-a"].map(String::from)
    }

    /// `nsenter -t INIT -a ARGV…`, printed with its output.
    pub fn exec(&self, argv: &[&str]) -> Output {
        let out = Command::new("nsenter")
            .args(["-t", &self.init.to_string(), "-a"])
            .args(argv)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env_remove("MICROVM_SERVICE_MANAGER")
            .stdin(Stdio::null())
            .output()
            .expect("nsenter");
        eprintln!(
            "[container] $ {} → {}\n{}{}",
            argv.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// [`Container::exec`], which must succeed; its stdout.
    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(out.status.success(), "{argv:?} in the container failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `systemctl show -P PROPERTY UNIT`.
    pub fn show(&self, unit: &str, property: &str) -> String {
        self.ok(&["systemctl", "show", "-P", property, unit])
            .trim()
            .to_string()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.nspawn.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.nspawn.wait();
    }
}

/// The first child of `pid` (the container's PID 1 under nspawn).
fn child_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}
