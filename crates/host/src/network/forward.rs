//! Forwarded ports of VMs on taps: nftables DNAT on the host, so every hypervisor that
//! takes a tap gets `forwardPorts` (qemu's `user` networking keeps its `hostfwd`).
//!
//! Each VM has its own table, `ip microvm-fwd-VM`, replaced atomically (one `nft -f -`
//! transaction) when its supervisor starts the VM and deleted when the VM ends, so one
//! VM's rules are never touched by another's start or stop. The table has
//!
//! - `prerouting` (dstnat): packets from outside to a host address and the port are
//!   DNAT'd to the guest (the network's forward chain lets DNAT'd connections through);
//! - `output` (dstnat): the same for connections the host itself opens to one of its
//!   addresses (not to 127.0.0.1: DNAT from loopback would need `route_localnet`, which
//!   lets guests reach the host's loopback services);
//! - `postrouting` (srcnat): a hairpin masquerade, so that other VMs of the same network
//!   reach the port too.
//!
//! Every DNAT rule carries the comment `microvm-fwd pid=PID PROTO ADDR:PORT` (ADDR `*`
//! for every address): the port clash check reads it from the other VMs' tables, and
//! recovery after a killed supervisor removes the table only when its pid is gone. All
//! of this runs under one host-wide lock (`/run/microvm-forward.lock`), and what touches a
//! network's reservations also under the networks' lock (`lock.rs`), taken second.
//!
//! The guest's address is the definition's (`guest.address`, a static address) or, for a
//! DHCP guest on a microvm network, a reservation made before the boot: the address the
//! MAC already leases, else the first free one of the pool, written to the network's
//! `hosts/VM` (dnsmasq's `--dhcp-hostsdir`, read when it appears) and removed at the end.

use std::fs;
use std::io::Read as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use microvm_spec::forward::{clash, TapForwards, TapPort};

use super::{dnsmasq, leases, NetworkConfig, NetworkError, Networks};

/// The host-wide lock of every table change.
const LOCK: &str = "/run/microvm-forward.lock";
/// A network's reservations (dnsmasq's `--dhcp-hostsdir`).
pub(super) const HOSTS: &str = "hosts";
/// The runner's forwards (written by the package, see [`microvm_spec::forward`]).
pub const RUNNER_FILE: &str = "share/microvm/forward-ports.json";

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error("cannot forward {port} for VM {vm}: VM {other} forwards it already")]
    Clash {
        vm: String,
        port: String,
        other: String,
    },
    #[error("cannot forward the ports of VM {vm}: its forwarding table is held by the running process {pid} (another VM of that name?)")]
    Held { vm: String, pid: u32 },
    #[error("cannot forward the ports of VM {vm}: tap {tap} takes its address by DHCP, but its bridge {bridge} is not a microvm network; give the tap a static address or `guest.address`")]
    NoNetwork {
        vm: String,
        tap: String,
        bridge: String,
    },
    #[error("cannot forward the ports of VM {vm}: network {network} has no free address left for tap {tap}")]
    PoolFull {
        vm: String,
        network: String,
        tap: String,
    },
    #[error("cannot forward the ports of VM {vm}: the guest's address is not known")]
    NoAddress { vm: String },
    #[error("cannot read {}: {why}", path.display())]
    Runner { path: PathBuf, why: String },
}

/// One installed forward, as it is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub port: TapPort,
    pub target: Ipv4Addr,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} → {}:{}",
            listen(&self.port),
            self.target,
            self.port.guest_port
        )
    }
}

/// `tcp *:8080`, `udp 192.0.2.1:53`.
fn listen(p: &TapPort) -> String {
    let addr = p.host_address.map_or("*".into(), |a| a.to_string());
    format!("{} {addr}:{}", p.proto.name(), p.host_port)
}

/// The forwards of a runner, if it has any (`share/microvm/forward-ports.json`, at most
/// 1 MiB; the runner directory is root's).
pub fn load(runner: &Path) -> Result<Option<TapForwards>, ForwardError> {
    let path = runner.join(RUNNER_FILE);
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ForwardError::Runner {
                path,
                why: e.to_string(),
            })
        }
    };
    let mut text = String::new();
    if let Err(e) = file.take(1 << 20).read_to_string(&mut text) {
        return Err(ForwardError::Runner {
            path,
            why: e.to_string(),
        });
    }
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ForwardError::Runner {
            path,
            why: e.to_string(),
        })
}

/// The table of a VM.
pub fn table(vm: &str) -> String {
    format!("microvm-fwd-{vm}")
}

/// The forwards of one running VM; removed by [`Forwarded::remove`] or on drop.
#[derive(Debug)]
pub struct Forwarded {
    nets: Networks,
    vm: String,
    reservation: Option<NetworkConfig>,
    pub rules: Vec<Rule>,
    /// What may keep the forwards from working (for the log).
    pub warnings: Vec<String>,
    removed: bool,
}

impl Forwarded {
    /// The lines to log: `forwarding tcp *:8080 → 10.177.0.12:80` per port, then warnings.
    pub fn log_lines(&self) -> Vec<String> {
        let rules = self.rules.iter().map(|r| format!("forwarding {r}"));
        let warnings = self.warnings.iter().map(|w| format!("warning: {w}"));
        rules.chain(warnings).collect()
    }

    /// Deletes the VM's table and its reservation.
    pub fn remove(mut self) -> Result<(), ForwardError> {
        self.removed = true;
        let _lock = lock()?;
        let _nets = self.nets.lock()?;
        remove_table(&self.nets, &self.vm)?;
        if let Some(c) = &self.reservation {
            unreserve(&self.nets, c, &self.vm)?;
        }
        Ok(())
    }
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        if !self.removed {
            let _lock = lock();
            let _nets = self.nets.lock();
            let _ = remove_table(&self.nets, &self.vm);
            if let Some(c) = &self.reservation {
                let _ = unreserve(&self.nets, c, &self.vm);
            }
        }
    }
}

/// Installs the DNAT table of VM `vm`: finds the guest's address (reserving one when it
/// is a DHCP guest), refuses ports another VM forwards, and replaces the VM's table.
pub fn install(nets: &Networks, vm: &str, f: &TapForwards) -> Result<Forwarded, ForwardError> {
    let _lock = lock()?;
    // The network is read and its reservation written while no change of it runs.
    let _nets = nets.lock()?;
    let network = match &f.bridge {
        Some(b) => network_of_bridge(nets, b)?,
        None => None,
    };
    let reserved = match (f.address, f.dhcp, &network) {
        (None, true, Some(c)) => Some(reserve(nets, c, vm, f)?),
        (None, true, None) => {
            return Err(ForwardError::NoNetwork {
                vm: vm.into(),
                tap: f.interface.clone(),
                bridge: f.bridge.clone().unwrap_or_default(),
            })
        }
        _ => None,
    };
    let reservation = reserved.and(network.clone());
    let installed = rules_for(vm, f, reserved).and_then(|rules| {
        check_clashes(nets, vm, &rules)?;
        let subnet = network
            .as_ref()
            .map(|c| format!("{}/{}", c.ipv4.network(), c.ipv4.prefix));
        let text = ruleset(vm, std::process::id(), &rules, subnet.as_deref());
        super::run(
            &nets.tools.nft,
            &format!("install the nftables table {}", table(vm)),
            &["-f", "-"],
            Some(&text),
        )?;
        Ok(rules)
    });
    match installed {
        Ok(rules) => Ok(Forwarded {
            nets: nets.clone(),
            vm: vm.into(),
            warnings: reservation
                .iter()
                .filter_map(|c| unread(nets, c))
                .chain(not_local(nets, &f.ports))
                .collect(),
            reservation,
            rules,
            removed: false,
        }),
        Err(e) => {
            // Still under the lock: undo the reservation here, not in a guard's drop.
            if let Some(c) = &reservation {
                let _ = unreserve(nets, c, vm);
            }
            Err(e)
        }
    }
}

/// Each port with the address it reaches.
fn rules_for(
    vm: &str,
    f: &TapForwards,
    reserved: Option<Ipv4Addr>,
) -> Result<Vec<Rule>, ForwardError> {
    f.ports
        .iter()
        .map(|p| {
            let target = f
                .fixed_target(p)
                .or(reserved)
                .ok_or_else(|| ForwardError::NoAddress { vm: vm.into() })?;
            Ok(Rule { port: *p, target })
        })
        .collect()
}

/// Forwards the ports of the VM `vm` whose runner is `runner` (nothing when it has no
/// `forward-ports.json`), with the networks of the state directory `state`.
pub fn start(state: &Path, vm: &str, runner: &Path) -> Result<Option<Forwarded>, ForwardError> {
    let Some(f) = load(runner)? else {
        return Ok(None);
    };
    let nets = Networks::new(state, super::Tools::system());
    install(&nets, vm, &f).map(Some)
}

/// After a killed supervisor: removes the VM's table when no live process owns it, and
/// its reservations. Returns whether a table was removed.
pub fn recover(nets: &Networks, vm: &str) -> bool {
    let Ok(_lock) = lock() else { return false };
    let Ok(_nets) = nets.lock() else { return false };
    let owner = table_ports(nets, &table(vm))
        .ok()
        .and_then(|p| p.first().map(|x| x.0));
    let removed = match owner {
        Some(pid) if alive(pid) && pid != std::process::id() => false,
        Some(_) => remove_table(nets, vm).is_ok(),
        None => false,
    };
    for name in nets.names().unwrap_or_default() {
        if let Ok(Some(c)) = nets.get(&name) {
            let _ = unreserve(nets, &c, vm);
        }
    }
    removed
}

/// The ruleset of VM `vm`'s table (replacing whatever it had).
pub(super) fn ruleset(vm: &str, pid: u32, rules: &[Rule], subnet: Option<&str>) -> String {
    let t = table(vm);
    let mut dnat = String::new();
    let mut hairpin = String::new();
    for r in rules {
        let p = &r.port;
        let proto = p.proto.name();
        let to = match p.host_address {
            Some(a) => format!("ip daddr {a}"),
            None => "ip daddr != 127.0.0.0/8".into(),
        };
        dnat.push_str(&format!(
            "    {to} fib daddr type local {proto} dport {} dnat to {}:{} comment \"microvm-fwd pid={pid} {}\"\n",
            p.host_port,
            r.target,
            p.guest_port,
            listen(p)
        ));
        if let Some(net) = subnet {
            hairpin.push_str(&format!(
                "    ip saddr {net} ip daddr {} {proto} dport {} ct status dnat masquerade\n",
                r.target, p.guest_port
            ));
        }
    }
    format!(
        "table ip {t} {{}}\ndelete table ip {t}\ntable ip {t} {{\n\
         \x20 chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n{dnat}  }}\n\
         \x20 chain output {{\n    type nat hook output priority -100; policy accept;\n{dnat}  }}\n\
         \x20 chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n{hairpin}  }}\n}}\n"
    )
}

fn lock() -> Result<fs::File, ForwardError> {
    let path = Path::new(LOCK);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(super::io_err("open the lock", path))?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
        .map_err(|e| super::io_err("lock", path)(e.into()))?;
    Ok(file)
}

fn remove_table(nets: &Networks, vm: &str) -> Result<(), NetworkError> {
    let t = table(vm);
    super::run(
        &nets.tools.nft,
        &format!("remove the nftables table {t}"),
        &["-f", "-"],
        Some(&format!("table ip {t} {{}}\ndelete table ip {t}\n")),
    )
    .map(drop)
}

fn network_of_bridge(nets: &Networks, bridge: &str) -> Result<Option<NetworkConfig>, NetworkError> {
    for name in nets.names()? {
        if let Some(c) = nets.get(&name)?.filter(|c| c.bridge == bridge) {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// The forwards of a table: (owner pid, port) from the rules' comments.
fn table_ports(nets: &Networks, table: &str) -> Result<Vec<(u32, TapPort)>, NetworkError> {
    let text = super::run(
        &nets.tools.nft,
        &format!("list the nftables table {table}"),
        &["list", "table", "ip", table],
        None,
    )?;
    Ok(text.lines().filter_map(parse_comment).collect())
}

/// `… comment "microvm-fwd pid=12 tcp *:8080"` → (12, the port; guest fields unknown).
fn parse_comment(line: &str) -> Option<(u32, TapPort)> {
    let c = line
        .split("comment \"microvm-fwd ")
        .nth(1)?
        .trim_end()
        .strip_suffix('"')?;
    let mut f = c.split_whitespace();
    let pid = f.next()?.strip_prefix("pid=")?.parse().ok()?;
    let proto = match f.next()? {
        "tcp" => microvm_spec::config::ForwardProto::Tcp,
        "udp" => microvm_spec::config::ForwardProto::Udp,
        _ => return None,
    };
    let (addr, port) = f.next()?.rsplit_once(':')?;
    Some((
        pid,
        TapPort {
            proto,
            host_address: if addr == "*" {
                None
            } else {
                Some(addr.parse().ok()?)
            },
            host_port: port.parse().ok()?,
            guest_address: None,
            guest_port: 0,
        },
    ))
}

/// Refuses a port that another VM's table forwards, and a table of this VM's name that
/// a live process other than this one owns.
fn check_clashes(nets: &Networks, vm: &str, rules: &[Rule]) -> Result<(), ForwardError> {
    let tables = super::run(
        &nets.tools.nft,
        "list the nftables tables",
        &["list", "tables", "ip"],
        None,
    )?;
    let ours = table(vm);
    for name in tables.lines().filter_map(|l| l.strip_prefix("table ip ")) {
        let Some(other) = name.trim().strip_prefix("microvm-fwd-") else {
            continue;
        };
        let ports = table_ports(nets, name.trim())?;
        if name.trim() == ours {
            match ports.first() {
                Some((pid, _)) if alive(*pid) && *pid != std::process::id() => {
                    return Err(ForwardError::Held {
                        vm: vm.into(),
                        pid: *pid,
                    })
                }
                _ => continue,
            }
        }
        for r in rules {
            if ports.iter().any(|(_, p)| clash(p, &r.port)) {
                return Err(ForwardError::Clash {
                    vm: vm.into(),
                    port: listen(&r.port),
                    other: other.into(),
                });
            }
        }
    }
    Ok(())
}

/// Whether process `pid` runs (a zombie, dead but not yet reaped, has no command line).
fn alive(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// Reserves the guest's address on network `c` for the tap's MAC: the address the MAC
/// leases already, else this VM's earlier reservation, else the first free one of the
/// pool (not leased to another MAC, not reserved by another VM).
fn reserve(
    nets: &Networks,
    c: &NetworkConfig,
    vm: &str,
    f: &TapForwards,
) -> Result<Ipv4Addr, ForwardError> {
    let dir = nets.dir(&c.name).join(HOSTS);
    fs::create_dir_all(&dir).map_err(super::io_err("create", &dir))?;
    let leases = leases::read(&nets.dir(&c.name).join(dnsmasq::LEASES))?;
    let same_mac = |m: &str| m.eq_ignore_ascii_case(&f.mac);
    let mut taken = Vec::new();
    let mut chosen = None;
    for l in &leases {
        match l.ip {
            std::net::IpAddr::V4(ip) if same_mac(&l.mac) => chosen = chosen.or(Some(ip)),
            std::net::IpAddr::V4(ip) => taken.push(ip),
            _ => {}
        }
    }
    for (file, mac, ip) in reservations(&dir) {
        if file == vm && same_mac(&mac) {
            chosen = chosen.or(Some(ip));
        } else if file != vm {
            taken.push(ip);
        }
    }
    let (lo, hi) = c.ipv4.dhcp_range();
    let free = (u32::from(lo)..=u32::from(hi))
        .map(Ipv4Addr::from)
        .find(|ip| !taken.contains(ip));
    let ip = chosen
        .filter(|ip| !taken.contains(ip))
        .or(free)
        .ok_or_else(|| ForwardError::PoolFull {
            vm: vm.into(),
            network: c.name.to_string(),
            tap: f.interface.clone(),
        })?;
    let path = dir.join(vm);
    let tmp = dir.join(format!(".{vm}.tmp"));
    fs::write(&tmp, format!("{},{ip}\n", f.mac)).map_err(super::io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(super::io_err("write", &path))?;
    Ok(ip)
}

/// A warning for each `host.address` that is none of this host's addresses (DNAT
/// applies only to packets for the host; nothing arrives at another address).
fn not_local(nets: &Networks, ports: &[TapPort]) -> Vec<String> {
    let wanted: Vec<Ipv4Addr> = ports.iter().filter_map(|p| p.host_address).collect();
    if wanted.is_empty() {
        return Vec::new();
    }
    let Ok(text) = super::run(
        &nets.tools.ip,
        "list the host's addresses",
        &["-4", "-o", "addr", "show"],
        None,
    ) else {
        return Vec::new();
    };
    let local: Vec<Ipv4Addr> = text
        .lines()
        .filter_map(|l| l.split(" inet ").nth(1)?.split('/').next()?.parse().ok())
        .collect();
    let mut out: Vec<String> = wanted
        .into_iter()
        .filter(|a| !local.contains(a))
        .map(|a| format!("host address {a} of a forwarded port is not an address of this host: nothing is forwarded there"))
        .collect();
    out.dedup();
    out
}

/// Why network `c`'s dnsmasq does not hand out the reservations, if it does not: it does
/// not run, or it was started without `--dhcp-hostsdir` (by an older microvm).
fn unread(nets: &Networks, c: &NetworkConfig) -> Option<String> {
    let dir = nets.dir(&c.name);
    let Some(pid) = dnsmasq::running(&nets.tools, &dir) else {
        return Some(format!(
            "dnsmasq of network {} is not running: the guest gets no DHCP address",
            c.name
        ));
    };
    let cmdline = fs::read(nets.tools.procfs.join(pid.to_string()).join("cmdline")).ok()?;
    let want = format!("--dhcp-hostsdir={}", dir.join(HOSTS).display());
    let reads = cmdline.split(|b| *b == 0).any(|a| a == want.as_bytes());
    (!reads).then(|| format!(
        "dnsmasq of network {} (pid {pid}) was started without address reservations: the guest may lease another address than the forwarded one; remove and create the network again",
        c.name
    ))
}

/// The reservations of a network: (file name = VM, MAC, address).
fn reservations(dir: &Path) -> Vec<(String, String, Ipv4Addr)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.filter_map(Result::ok) {
        // dnsmasq skips dot files too (ours are a reservation being written).
        let Some(name) = e
            .file_name()
            .to_str()
            .filter(|n| !n.starts_with('.'))
            .map(str::to_owned)
        else {
            continue;
        };
        let text = fs::read_to_string(e.path()).unwrap_or_default();
        for line in text.lines() {
            if let Some((mac, ip)) = line.split_once(',') {
                if let Ok(ip) = ip.trim().parse() {
                    out.push((name.clone(), mac.to_string(), ip));
                }
            }
        }
    }
    out
}

/// Removes VM `vm`'s reservation on network `c` and has dnsmasq forget it (SIGHUP: it
/// rereads its hosts directory).
fn unreserve(nets: &Networks, c: &NetworkConfig, vm: &str) -> Result<(), NetworkError> {
    let path = nets.dir(&c.name).join(HOSTS).join(vm);
    match fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(super::io_err("remove", &path)(e)),
    }
    if let Some(pid) = dnsmasq::running(&nets.tools, &nets.dir(&c.name)) {
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::HUP);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use microvm_spec::config::ForwardProto;

    fn port(host_address: Option<&str>, host_port: u16, guest_port: u16) -> TapPort {
        TapPort {
            proto: ForwardProto::Tcp,
            host_address: host_address.map(|a| a.parse().expect("addr")),
            host_port,
            guest_address: None,
            guest_port,
        }
    }

    #[test]
    fn the_table_dnats_local_non_loopback_addresses_and_names_each_port() {
        let rules = [
            Rule {
                port: port(None, 8080, 80),
                target: "10.177.0.10".parse().expect("ip"),
            },
            Rule {
                port: port(Some("192.0.2.7"), 2222, 22),
                target: "10.177.0.10".parse().expect("ip"),
            },
        ];
        let r = ruleset("web", 42, &rules, Some("10.177.0.0/24"));
        assert!(
            r.starts_with("table ip microvm-fwd-web {}\ndelete table ip microvm-fwd-web\n"),
            "{r}"
        );
        let dnat = "ip daddr != 127.0.0.0/8 fib daddr type local tcp dport 8080 dnat to 10.177.0.10:80 comment \"microvm-fwd pid=42 tcp *:8080\"";
        assert_eq!(r.matches(dnat).count(), 2, "prerouting and output: {r}");
        assert!(
            r.contains(
                "ip daddr 192.0.2.7 fib daddr type local tcp dport 2222 dnat to 10.177.0.10:22"
            ),
            "{r}"
        );
        assert!(r.contains("ip saddr 10.177.0.0/24 ip daddr 10.177.0.10 tcp dport 80 ct status dnat masquerade"), "{r}");
        let (pid, p) = parse_comment(&format!("\t\t{dnat}")).expect("parsed");
        assert_eq!((pid, p), (42, port(None, 8080, 0)));
        assert_eq!(
            parse_comment("x comment \"microvm-fwd pid=7 tcp 192.0.2.7:2222\"").map(|x| x.1),
            Some(port(Some("192.0.2.7"), 2222, 0))
        );
        assert!(parse_comment("x comment \"other\"").is_none());
        assert_eq!(rules[0].to_string(), "tcp *:8080 → 10.177.0.10:80");
    }

    #[test]
    fn ports_clash_on_the_same_protocol_port_and_address() {
        assert!(clash(&port(None, 80, 1), &port(Some("192.0.2.1"), 80, 2)));
        assert!(clash(
            &port(Some("192.0.2.1"), 80, 1),
            &port(Some("192.0.2.1"), 80, 2)
        ));
        assert!(!clash(
            &port(Some("192.0.2.1"), 80, 1),
            &port(Some("192.0.2.2"), 80, 2)
        ));
        assert!(!clash(&port(None, 80, 1), &port(None, 81, 1)));
        let mut udp = port(None, 80, 1);
        udp.proto = ForwardProto::Udp;
        assert!(!clash(&udp, &port(None, 80, 1)));
    }

    #[test]
    fn a_host_address_that_is_not_the_hosts_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let ip = dir.path().join("ip");
        fs::write(
            &ip,
            "#!/bin/sh\necho '1: lo    inet 127.0.0.1/8 scope host lo'\n\
             echo '4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0'\n",
        )
        .expect("script");
        fs::set_permissions(&ip, fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut tools = super::super::Tools::system();
        tools.ip = ip;
        let nets = Networks::new(dir.path(), tools);
        let ports = [
            port(Some("192.0.2.2"), 80, 80),
            port(Some("192.0.2.9"), 81, 80),
            port(None, 82, 80),
        ];
        assert_eq!(
            not_local(&nets, &ports),
            ["host address 192.0.2.9 of a forwarded port is not an address of this host: nothing is forwarded there"]
        );
    }

    #[test]
    fn a_dnsmasq_that_does_not_read_reservations_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tools = super::super::Tools::system();
        tools.procfs = dir.path().join("proc");
        let nets = Networks::new(&dir.path().join("state"), tools);
        let c = NetworkConfig::new(
            "net1".parse().expect("name"),
            "10.9.8.1/24".parse().expect("subnet"),
        );
        let ndir = nets.dir(&c.name);
        fs::create_dir_all(&ndir).expect("mkdir");
        assert!(unread(&nets, &c)
            .expect("not running")
            .contains("is not running"));
        fs::write(ndir.join("dnsmasq.pid"), "123\n").expect("pid");
        fs::create_dir_all(dir.path().join("proc/123")).expect("proc");
        let pidfile = format!("--pid-file={}", ndir.join("dnsmasq.pid").display());
        let cmdline = dir.path().join("proc/123/cmdline");
        fs::write(&cmdline, format!("dnsmasq\0{pidfile}\0")).expect("cmdline");
        let why = unread(&nets, &c).expect("old dnsmasq");
        assert!(
            why.contains("started without address reservations"),
            "{why}"
        );
        let hosts = format!("--dhcp-hostsdir={}", ndir.join(HOSTS).display());
        fs::write(&cmdline, format!("dnsmasq\0{pidfile}\0{hosts}\0")).expect("cmdline");
        assert_eq!(unread(&nets, &c), None);
    }

    #[test]
    fn a_dhcp_guest_keeps_its_lease_or_gets_the_first_free_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nets = Networks::new(dir.path(), super::super::Tools::system());
        let c = NetworkConfig::new(
            "net1".parse().expect("name"),
            "10.9.8.1/24".parse().expect("subnet"),
        );
        let ndir = nets.dir(&c.name);
        fs::create_dir_all(ndir.join(HOSTS)).expect("mkdir");
        fs::write(
            ndir.join(HOSTS).join("other"),
            "02:00:00:00:00:09,10.9.8.11\n",
        )
        .expect("w");
        fs::write(
            ndir.join(dnsmasq::LEASES),
            "1 02:00:00:00:00:08 10.9.8.10 x *\n",
        )
        .expect("leases");
        let mut f = TapForwards {
            interface: "vm-a".into(),
            mac: "02:00:00:00:00:01".into(),
            bridge: Some("net1".into()),
            address: None,
            dhcp: true,
            ports: vec![],
        };
        // .10 is leased, .11 reserved by another VM: .12.
        assert_eq!(
            reserve(&nets, &c, "a", &f).expect("reserve").to_string(),
            "10.9.8.12"
        );
        assert_eq!(
            fs::read_to_string(ndir.join(HOSTS).join("a")).expect("file"),
            "02:00:00:00:00:01,10.9.8.12\n"
        );
        // Again: the same address.
        assert_eq!(
            reserve(&nets, &c, "a", &f).expect("again").to_string(),
            "10.9.8.12"
        );
        // A MAC that leases an address already keeps it.
        f.mac = "02:00:00:00:00:08".into();
        assert_eq!(
            reserve(&nets, &c, "b", &f).expect("lease").to_string(),
            "10.9.8.10"
        );
        unreserve(&nets, &c, "a").expect("unreserve");
        assert!(!ndir.join(HOSTS).join("a").exists());
        unreserve(&nets, &c, "a").expect("twice");
    }
}
