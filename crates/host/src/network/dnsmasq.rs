//! DHCP and DNS of a network: one dnsmasq per network, bound to the bridge only, that
//! hands out the subnet's pool, answers for the VMs' names (the hostname each DHCP
//! client sends, as `NAME` and `NAME.DOMAIN`) and forwards other names to the host's
//! resolvers. Without systemd it is its own daemon (pid file in the network's directory);
//! `apply` starts it again when it is not running.

use std::fs;
use std::path::Path;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{io_err, run, NetworkConfig, NetworkError, Tools};

pub(super) const LEASES: &str = "leases";
const PID: &str = "dnsmasq.pid";
const LOG: &str = "dnsmasq.log";

/// dnsmasq's argv (no configuration file: everything is here).
pub(super) fn args(config: &NetworkConfig, dir: &Path) -> Vec<String> {
    let (lo, hi) = config.ipv4.dhcp_range();
    let d = &config.domain;
    vec![
        "--conf-file=/dev/null".into(),
        "--no-hosts".into(),
        "--strict-order".into(),
        "--bind-dynamic".into(),
        format!("--interface={}", config.bridge),
        "--except-interface=lo".into(),
        "--domain-needed".into(),
        format!("--domain={d}"),
        format!("--local=/{d}/"),
        "--expand-hosts".into(),
        format!("--dhcp-range={lo},{hi},{},12h", config.ipv4.netmask()),
        "--dhcp-authoritative".into(),
        "--log-dhcp".into(),
        format!("--dhcp-leasefile={}", dir.join(LEASES).display()),
        // Address reservations of VMs with forwarded ports (read when they appear).
        format!(
            "--dhcp-hostsdir={}",
            dir.join(super::forward::HOSTS).display()
        ),
        format!("--pid-file={}", dir.join(PID).display()),
        format!("--log-facility={}", dir.join(LOG).display()),
    ]
}

/// dnsmasq's pid when the process of this network's pid file runs (its command line
/// names this pid file, so a reused pid is not mistaken for it).
pub(super) fn running(tools: &Tools, dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(dir.join(PID))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = fs::read(tools.procfs.join(pid.to_string()).join("cmdline")).ok()?;
    let want = format!("--pid-file={}", dir.join(PID).display());
    cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == want.as_bytes())
        .then_some(pid)
}

/// Starts dnsmasq unless it runs with this configuration already.
pub(super) fn ensure(
    tools: &Tools,
    config: &NetworkConfig,
    dir: &Path,
    changed: bool,
) -> Result<(), NetworkError> {
    if running(tools, dir).is_some() {
        if !changed {
            return Ok(());
        }
        stop(tools, dir)?;
    }
    let argv = args(config, dir);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let started = run(
        &tools.dnsmasq,
        &format!("start dnsmasq for network {}", config.name),
        &argv,
        None,
    );
    if let Err(e) = started {
        return Err(NetworkError::DnsmasqStart {
            name: config.name.to_string(),
            log: format!("{e}; {}", log_tail(dir)),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(tools, dir).is_none() {
        if Instant::now() > deadline {
            return Err(NetworkError::DnsmasqStart {
                name: config.name.to_string(),
                log: log_tail(dir),
            });
        }
        sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn log_tail(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join(LOG)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(5)..].join("; ");
    if tail.is_empty() {
        "no log".into()
    } else {
        tail
    }
}

/// Stops this network's dnsmasq (SIGTERM, then SIGKILL after 5 s) and removes its pid file.
pub(super) fn stop(tools: &Tools, dir: &Path) -> Result<(), NetworkError> {
    if let Some(pid) = running(tools, dir) {
        let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid > 0");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(tools, dir).is_some() {
            if Instant::now() > deadline {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            sleep(Duration::from_millis(50));
        }
    }
    let path = dir.join(PID);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dnsmasq_serves_the_bridge_only_with_the_pool_and_files_of_the_network() {
        let c = NetworkConfig::new(
            "net1".parse().expect("name"),
            "10.9.8.1/24".parse().expect("subnet"),
        );
        let a = args(&c, Path::new("/s/.networks/net1"));
        for want in [
            "--interface=net1",
            "--bind-dynamic",
            "--dhcp-range=10.9.8.10,10.9.8.250,255.255.255.0,12h",
            "--dhcp-leasefile=/s/.networks/net1/leases",
            "--pid-file=/s/.networks/net1/dnsmasq.pid",
            "--domain=microvm",
            "--local=/microvm/",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
    }
}
