//! A network's supervisor: `microvm network supervise NAME` keeps the network's bridge
//! and NAT table in place and runs its dnsmasq in the foreground, restarting it with a
//! backoff (1 s doubling to 30 s; a run of 30 s or more starts again at 1 s) whenever it
//! exits, until SIGTERM. A dnsmasq that exits before it ever served (the host refuses
//! its configuration) ends the supervisor with that error instead. Without systemd `network create`/`host apply` start it detached
//! (its own session) with its output in `dnsmasq.log`, rotated at [`LOG_LIMIT`]; under
//! systemd it is `microvm-network@NAME.service` (`Type=notify`), whose output is the
//! journal, and which systemd starts again if the supervisor itself dies.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{bridge, dnsmasq, io_err, nat, NetworkConfig, NetworkError, NetworkName, Networks};
use crate::service::detach;

/// The supervisor's pid file in the network's directory.
pub(super) const SUPERVISOR_PID: &str = "supervisor.pid";
/// `dnsmasq.log` is rotated to `dnsmasq.log.1` at this size.
pub const LOG_LIMIT: u64 = 1 << 20;
/// How long `network create` waits for dnsmasq to run.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Who keeps a network's dnsmasq running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Supervision {
    /// A detached `MICROVM --state-dir STATE network supervise NAME`.
    Process { microvm: PathBuf },
    /// systemd, through `microvm-network@NAME.service` (installed by `host install`).
    Systemd { systemctl: PathBuf },
}

/// The systemd unit of a network.
pub fn unit_name(name: &NetworkName) -> String {
    format!("microvm-network@{name}.service")
}

/// The pause before restarting dnsmasq after it exited.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_secs(1);
    const MAX: Duration = Duration::from_secs(30);
    /// A run at least this long counts as healthy: the next pause is the first again.
    const STABLE: Duration = Duration::from_secs(30);

    pub fn new() -> Backoff {
        Backoff { next: Self::FIRST }
    }

    /// The pause after a run of `ran`.
    pub fn after(&mut self, ran: Duration) -> Duration {
        if ran >= Self::STABLE {
            self.next = Self::FIRST;
        }
        let pause = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        pause
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

/// Whether `args` (a process's argv) is `… network supervise NAME`.
fn is_supervisor_of(args: &[&[u8]], name: &NetworkName) -> bool {
    args.windows(3)
        .any(|w| w[0] == b"network" && w[1] == b"supervise" && w[2] == name.as_str().as_bytes())
}

/// A flag that SIGTERM and SIGINT set (the supervisor's stop request).
pub fn stop_on_signals() -> std::io::Result<std::sync::Arc<AtomicBool>> {
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    Ok(stop)
}

/// Sleeps `d`, waking early when `stop` is set; returns whether it was.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.load(Ordering::Relaxed)
}

impl Networks {
    /// The pid of the network's supervisor, when it runs.
    pub fn supervisor_pid(&self, name: &NetworkName) -> Option<u32> {
        let file = self.dir(name).join(SUPERVISOR_PID);
        dnsmasq::pid_running(&self.tools, &file, |a| is_supervisor_of(a, name))
            .filter(|pid| *pid != std::process::id())
    }

    /// Runs the network until `stop` is set: bridge and NAT made to match the record,
    /// then dnsmasq, restarted whenever it exits. `log` gets the supervisor's own lines;
    /// `ready` is called with dnsmasq's pid each time it runs. Returns when `stop` is set
    /// or the network's record is removed.
    pub fn supervise(
        &self,
        name: &NetworkName,
        stop: &AtomicBool,
        log: &mut dyn FnMut(&str),
        ready: &mut dyn FnMut(u32),
    ) -> Result<(), NetworkError> {
        let config = self
            .get(name)?
            .ok_or_else(|| NetworkError::NotFound(name.to_string()))?;
        if let Some(pid) = self.supervisor_pid(name) {
            return Err(NetworkError::Invalid(format!(
                "network {name} is supervised already (pid {pid})"
            )));
        }
        let dir = self.dir(name);
        let pid_file = dir.join(SUPERVISOR_PID);
        fs::write(&pid_file, format!("{}\n", std::process::id()))
            .map_err(io_err("write", &pid_file))?;
        bridge::ensure(&self.tools, &config)?;
        nat::apply(&self.tools, &config)?;
        let result = self.run_dnsmasq(name, &dir, stop, log, ready);
        if dnsmasq::read_pid(&pid_file) == Some(std::process::id()) {
            let _ = fs::remove_file(&pid_file);
        }
        let _ = fs::remove_file(dir.join(dnsmasq::PID));
        result
    }

    fn run_dnsmasq(
        &self,
        name: &NetworkName,
        dir: &Path,
        stop: &AtomicBool,
        log: &mut dyn FnMut(&str),
        ready: &mut dyn FnMut(u32),
    ) -> Result<(), NetworkError> {
        let mut backoff = Backoff::new();
        let mut served = false;
        while !stop.load(Ordering::Relaxed) {
            let Some(config) = self.get(name)? else {
                log(&format!("network {name} was removed; stopping"));
                return Ok(());
            };
            dnsmasq::stop(&self.tools, dir)?; // one a killed supervisor left behind
            let started = Instant::now();
            let (status, ran) = match dnsmasq::command(&self.tools, &config, dir).spawn() {
                Ok(child) => self.watch(child, dir, stop, ready),
                Err(e) => (format!("could not be started: {e}"), false),
            };
            served |= ran;
            if stop.load(Ordering::Relaxed) {
                break;
            }
            if !served {
                // Never served: a configuration the host refuses (an address or port in
                // use), reported to `network create` (or systemd) rather than retried.
                return Err(NetworkError::DnsmasqStart {
                    name: name.to_string(),
                    log: format!("dnsmasq {status}"),
                });
            }
            let wait = backoff.after(started.elapsed());
            log(&format!(
                "dnsmasq of network {name} {status}; restarting in {} s",
                wait.as_secs()
            ));
            if pause(wait, stop) {
                break;
            }
        }
        log(&format!("network {name}: dnsmasq stopped"));
        Ok(())
    }

    /// Waits for dnsmasq to exit (or `stop`: then stops it); returns how it ended and
    /// whether it served (wrote its pid file, which it does once its sockets are bound).
    fn watch(
        &self,
        mut child: Child,
        dir: &Path,
        stop: &AtomicBool,
        ready: &mut dyn FnMut(u32),
    ) -> (String, bool) {
        let mut announced = false;
        let own_pid = child.id();
        let wrote_pid = || dnsmasq::read_pid(&dir.join(dnsmasq::PID)) == Some(own_pid);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return (format!("exited ({status})"), wrote_pid()),
                Ok(None) => {}
                Err(e) => return (format!("could not be waited for: {e}"), true),
            }
            if stop.load(Ordering::Relaxed) {
                let pid = child.id();
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_child(&child),
                    rustix::process::Signal::TERM,
                );
                let end = Instant::now() + Duration::from_secs(5);
                while child.try_wait().ok().flatten().is_none() {
                    if Instant::now() > end {
                        let _ = child.kill();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                return (format!("(pid {pid}) stopped"), true);
            }
            if !announced && dnsmasq::running(&self.tools, dir) == Some(child.id()) {
                announced = true;
                ready(child.id());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the network's supervision (`restart`: again, for a changed configuration)
    /// and waits until dnsmasq runs.
    pub(super) fn start_dhcp(
        &self,
        config: &NetworkConfig,
        restart: bool,
    ) -> Result<(), NetworkError> {
        let name = &config.name;
        let dir = self.dir(name);
        match &self.supervision {
            Supervision::Systemd { systemctl } => {
                let unit = unit_name(name);
                let verb = if restart { "restart" } else { "start" };
                let what = format!("{verb} {unit} (see `journalctl -u {unit}`)");
                let run = |args: &[&str]| crate::tool::run(systemctl, &what, args, None);
                if let Some(pid) = self.supervisor_pid(name) {
                    // One started without systemd (before `host install`) is replaced.
                    let main = run(&["show", "-P", "MainPID", &unit])?;
                    if main.trim() != pid.to_string() {
                        self.stop_supervisor(pid, name);
                    }
                }
                run(&["enable", "--quiet", &unit])?;
                run(&[verb, &unit])?;
                Ok(())
            }
            Supervision::Process { microvm } => {
                if let Some(pid) = self.supervisor_pid(name) {
                    if !restart {
                        return Ok(());
                    }
                    self.stop_supervisor(pid, name);
                }
                dnsmasq::stop(&self.tools, &dir)?;
                let child = self.spawn_supervisor(microvm, name, &dir)?;
                self.wait_for_dnsmasq(config, child)
            }
        }
    }

    fn spawn_supervisor(
        &self,
        microvm: &Path,
        name: &NetworkName,
        dir: &Path,
    ) -> Result<Child, NetworkError> {
        let args = [
            "--state-dir".into(),
            self.state_root.clone().into_os_string(),
            "network".into(),
            "supervise".into(),
            name.as_str().into(),
        ];
        let log = dir.join(dnsmasq::LOG);
        detach::spawn_detached(microvm, &args, &log, dir).map_err(|source| NetworkError::Io {
            what: "start the supervisor",
            path: microvm.to_path_buf(),
            source,
        })
    }

    fn wait_for_dnsmasq(
        &self,
        config: &NetworkConfig,
        mut child: Child,
    ) -> Result<(), NetworkError> {
        let dir = self.dir(&config.name);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if dnsmasq::running(&self.tools, &dir).is_some() {
                return Ok(());
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || Instant::now() > deadline {
                if exited.is_none() {
                    self.stop_supervisor(child.id(), &config.name);
                    let _ = child.wait();
                }
                return Err(NetworkError::DnsmasqStart {
                    name: config.name.to_string(),
                    log: dnsmasq::log_tail(&dir),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop_supervisor(&self, pid: u32, name: &NetworkName) {
        dnsmasq::terminate(pid, Duration::from_secs(10), || {
            self.supervisor_pid(name) == Some(pid)
        });
    }

    /// Stops the network's supervision and any dnsmasq of it.
    pub(super) fn stop_dhcp(&self, name: &NetworkName) -> Result<(), NetworkError> {
        if let Supervision::Systemd { systemctl } = &self.supervision {
            let unit = unit_name(name);
            crate::tool::run(
                systemctl,
                &format!("stop {unit}"),
                &["disable", "--now", "--quiet", &unit],
                None,
            )?;
        }
        if let Some(pid) = self.supervisor_pid(name) {
            self.stop_supervisor(pid, name);
        }
        dnsmasq::stop(&self.tools, &self.dir(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_a_limit_and_a_long_run_resets_it() {
        let mut b = Backoff::new();
        let quick = Duration::from_millis(10);
        let pauses: Vec<u64> = (0..7).map(|_| b.after(quick).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.after(Duration::from_secs(60)).as_secs(), 1);
        assert_eq!(b.after(quick).as_secs(), 2);
    }

    #[test]
    fn a_supervisor_is_recognised_by_its_argv() {
        let n: NetworkName = "net1".parse().expect("name");
        let argv: [&[u8]; 6] = [
            b"/usr/bin/microvm",
            b"--state-dir",
            b"/s",
            b"network",
            b"supervise",
            b"net1",
        ];
        assert!(is_supervisor_of(&argv, &n));
        let other: [&[u8]; 4] = [b"microvm", b"network", b"supervise", b"net10"];
        assert!(!is_supervisor_of(&other, &n));
        assert!(!is_supervisor_of(&[b"dnsmasq" as &[u8]], &n));
    }
}
