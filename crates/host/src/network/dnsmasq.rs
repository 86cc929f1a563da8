//! DHCP and DNS of a network: one dnsmasq per network, bound to the bridge only, that
//! hands out the subnet's pool, answers for the VMs' names (the hostname each DHCP
//! client sends, as `NAME` and `NAME.DOMAIN`) and forwards other names to the host's
//! resolvers. With an IPv6 subnet it also sends router advertisements (SLAAC) with
//! stateless DHCPv6 and gives the VMs' SLAAC addresses their names.
//!
//! dnsmasq runs in the foreground under the network's supervisor (`supervise.rs`),
//! logging to its stderr; its pid file in the network's directory lets `list` see it.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::{Duration, Instant};

use super::{io_err, NetworkConfig, NetworkError, Tools};

pub(super) const LEASES: &str = "leases";
pub(super) const PID: &str = "dnsmasq.pid";
pub(super) const LOG: &str = "dnsmasq.log";

/// dnsmasq's argv (no configuration file: everything is here).
pub(super) fn args(config: &NetworkConfig, dir: &Path) -> Vec<String> {
    let mut a = base_args(config, dir);
    a.extend(dhcp4_args(config));
    a.extend(dhcp6_args(config));
    a
}

/// Process, files and DNS: in the foreground, logging to stderr, on the bridge only.
fn base_args(config: &NetworkConfig, dir: &Path) -> Vec<String> {
    let d = &config.domain;
    vec![
        "--conf-file=/dev/null".into(),
        "--keep-in-foreground".into(),
        "--log-facility=-".into(),
        "--no-hosts".into(),
        "--strict-order".into(),
        "--bind-dynamic".into(),
        format!("--interface={}", config.bridge),
        "--except-interface=lo".into(),
        "--domain-needed".into(),
        format!("--domain={d}"),
        format!("--local=/{d}/"),
        "--expand-hosts".into(),
        format!("--dhcp-leasefile={}", dir.join(LEASES).display()),
        // Address reservations of VMs with forwarded ports (read when they appear).
        format!(
            "--dhcp-hostsdir={}",
            dir.join(super::forward::HOSTS).display()
        ),
        format!("--pid-file={}", dir.join(PID).display()),
    ]
}

/// The IPv4 pool, with the network's lease time.
fn dhcp4_args(config: &NetworkConfig) -> Vec<String> {
    let (lo, hi) = config.ipv4.dhcp_range();
    vec![
        format!(
            "--dhcp-range={lo},{hi},{},{}",
            config.ipv4.netmask(),
            config.lease_secs
        ),
        "--dhcp-authoritative".into(),
        "--log-dhcp".into(),
    ]
}

/// IPv6: router advertisements with the /64 (the guests' kernels configure SLAAC
/// addresses), stateless DHCPv6 for the name server, and AAAA names for dual-stack VMs.
fn dhcp6_args(config: &NetworkConfig) -> Vec<String> {
    let Some(v6) = config.ipv6 else {
        return Vec::new();
    };
    vec![
        "--enable-ra".into(),
        format!(
            "--dhcp-range={},ra-stateless,ra-names,64,{}",
            v6.network(),
            config.lease_secs
        ),
    ]
}

/// The dnsmasq command of a network (the supervisor spawns it).
pub(super) fn command(tools: &Tools, config: &NetworkConfig, dir: &Path) -> Command {
    let mut c = Command::new(&tools.dnsmasq);
    c.args(args(config, dir));
    c
}

/// dnsmasq's pid when the process of this network's pid file runs (its command line
/// names this pid file, so a reused pid is not mistaken for it).
pub(super) fn running(tools: &Tools, dir: &Path) -> Option<u32> {
    let want = format!("--pid-file={}", dir.join(PID).display());
    pid_running(tools, &dir.join(PID), |args| {
        args.contains(&want.as_bytes())
    })
}

/// The pid a pid file names. dnsmasq's belongs to the user it runs as, so at most 32
/// bytes are read.
pub(super) fn read_pid(pid_file: &Path) -> Option<u32> {
    use std::io::Read as _;
    let mut text = String::new();
    fs::File::open(pid_file)
        .ok()?
        .take(32)
        .read_to_string(&mut text)
        .ok()?;
    text.trim().parse().ok()
}

/// The pid in `pid_file` when that process runs and its argv passes `check`.
pub(super) fn pid_running(
    tools: &Tools,
    pid_file: &Path,
    check: impl Fn(&[&[u8]]) -> bool,
) -> Option<u32> {
    let pid = read_pid(pid_file)?;
    let cmdline = fs::read(tools.procfs.join(pid.to_string()).join("cmdline")).ok()?;
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    check(&args).then_some(pid)
}

/// The last lines of the network's log, for error messages: dnsmasq's own when it
/// wrote any lately (its refusals), else the supervisor's too.
pub(super) fn log_tail(dir: &Path) -> String {
    let text = fs::read(dir.join(LOG)).unwrap_or_default();
    let text = String::from_utf8_lossy(&text[text.len().saturating_sub(4096)..]).into_owned();
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let own: Vec<&str> = all
        .iter()
        .copied()
        .filter(|l| l.starts_with("dnsmasq: "))
        .collect();
    let lines = if own.is_empty() { all } else { own };
    let tail = lines[lines.len().saturating_sub(5)..].join("; ");
    if tail.is_empty() {
        "no log".into()
    } else {
        tail
    }
}

/// SIGTERM to `pid` while `alive()`, SIGKILL after `grace`; waits until it is gone.
pub(super) fn terminate(pid: u32, grace: Duration, alive: impl Fn() -> bool) {
    let Some(p) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return;
    };
    let _ = rustix::process::kill_process(p, rustix::process::Signal::TERM);
    let deadline = Instant::now() + grace;
    let mut killed = false;
    while alive() {
        if Instant::now() > deadline && !killed {
            let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            killed = true;
        }
        sleep(Duration::from_millis(50));
    }
}

/// Stops a dnsmasq of this network that runs without its supervisor (one left by an
/// earlier version that ran it as a daemon, or one whose supervisor was killed) and
/// removes its pid file.
pub(super) fn stop(tools: &Tools, dir: &Path) -> Result<(), NetworkError> {
    if let Some(pid) = running(tools, dir) {
        terminate(pid, Duration::from_secs(5), || {
            running(tools, dir).is_some()
        });
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

    fn net1() -> NetworkConfig {
        NetworkConfig::new(
            "net1".parse().expect("name"),
            "10.9.8.1/24".parse().expect("subnet"),
        )
    }

    #[test]
    fn dnsmasq_serves_the_bridge_only_with_the_pool_and_files_of_the_network() {
        let a = args(&net1(), Path::new("/s/.networks/net1"));
        for want in [
            "--keep-in-foreground",
            "--log-facility=-",
            "--interface=net1",
            "--bind-dynamic",
            "--dhcp-range=10.9.8.10,10.9.8.250,255.255.255.0,43200",
            "--dhcp-leasefile=/s/.networks/net1/leases",
            "--pid-file=/s/.networks/net1/dnsmasq.pid",
            "--domain=microvm",
            "--local=/microvm/",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
        assert!(!a.iter().any(|x| x == "--enable-ra"), "no IPv6: {a:?}");
    }

    #[test]
    fn pid_files_are_read_within_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pid");
        fs::write(&f, "4242\n").expect("write");
        assert_eq!(read_pid(&f), Some(4242));
        // What follows the first 32 bytes (1 MiB of garbage here) is never read.
        fs::write(&f, format!("4242{}x", " ".repeat(1 << 20))).expect("write");
        assert_eq!(read_pid(&f), Some(4242));
        fs::write(&f, "9".repeat(1 << 20)).expect("write");
        assert_eq!(read_pid(&f), None);
        assert_eq!(read_pid(&dir.path().join("missing")), None);
    }

    #[test]
    fn ipv6_adds_router_advertisements_and_the_lease_time_is_the_networks() {
        let mut c = net1();
        c.ipv6 = Some("fd77:0:0:1::1/64".parse().expect("v6"));
        c.lease_secs = 120;
        let a = args(&c, Path::new("/s"));
        for want in [
            "--enable-ra",
            "--dhcp-range=fd77:0:0:1::,ra-stateless,ra-names,64,120",
            "--dhcp-range=10.9.8.10,10.9.8.250,255.255.255.0,120",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} in {a:?}");
        }
    }
}
