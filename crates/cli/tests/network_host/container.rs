//! A systemd container for tests/network_host.rs.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::workspace;

/// A booted `systemd-nspawn -D / --volatile=yes -b` container (as in tests/systemd.rs:
/// the host's /usr, an empty /etc and /var, the workspace bound, a private network);
/// powered off and reaped on drop.
pub struct Container {
    nspawn: Child,
    init: u32,
}

impl Container {
    pub fn boot(name: &str) -> Option<Container> {
        let mut bind = std::ffi::OsString::from("--bind=");
        bind.push(workspace());
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
            .arg(bind)
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
            let children = format!("/proc/{0}/task/{0}/children", c.nspawn.id());
            c.init = fs::read_to_string(children)
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            if c.init != 0 {
                let state = c.exec(&["systemctl", "is-system-running"]);
                let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
                if matches!(state.as_str(), "running" | "degraded") {
                    return Some(c);
                }
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        None
    }

    pub fn prefix(&self) -> [String; 4] {
        ["nsenter", "-t", &self.init.to_string(), "-a"].map(String::from)
    }

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

    pub fn ok(&self, argv: &[&str]) -> String {
        let out = self.exec(argv);
        assert!(out.status.success(), "{argv:?} in the container failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

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
