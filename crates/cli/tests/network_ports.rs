//! Forwarded ports, qemu user networking, multi-queue taps and macvtap, with real packets.
//!
//! Every test runs microvm in a network namespace it creates (the "host": its bridge,
//! nftables tables and dnsmasq live there) and reaches the guest from that namespace and
//! from a second one (a "client" behind a veth pair); traffic never leaves them. The VMs
//! are managed (`start`/`stop`, microvm's own service manager), boot microvm's guest
//! kernel and run a busybox `nc` service in a single-command guest.
//!
//! Prerequisites (root, iproute2 with netns, nft, dnsmasq, qemu, busybox-static, the
//! microvm kernel of scripts/build-test-kernel.sh): a missing one skips a test with a
//! printed reason, or fails it when `CI` is set. macvtap needs a host kernel with the
//! macvtap link type; without it that test says so and skips (under CI too: it is a
//! property of the kernel, not of the set-up).

mod service_harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use service_harness::netns::{command_definition, ok, run_in, skip, terminate, veth, Netns};
use service_harness::{
    find, host_install, install_built, microvm_in, path_var, sh, tail, wait_for, work_dir,
};

/// The guest's service: a banner line and 1 MiB of zeros to every connection on port 80.
const SERVICE: &str =
    "echo SERVING; exec nc -ll -p 80 -e /bin/sh -c 'echo GUEST-OK; head -c 1048576 /dev/zero'";
const REPLY_LEN: usize = 9 + 1048576;

fn microvm_kernel() -> PathBuf {
    service_harness::kernels_dir().join("microvm")
}

/// Why the tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    if !service_harness::rustix_is_root() {
        return Some("not root (namespaces, taps and nftables need root)".into());
    }
    for (p, pkg) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("dnsmasq", "dnsmasq-base"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
    ] {
        if find(p).is_none() {
            return Some(format!(
                "{p} is not installed ({pkg}, scripts/setup-host.sh)"
            ));
        }
    }
    if !microvm_kernel().join("bzImage").is_file() {
        return Some(format!(
            "the microvm kernel {} is missing (scripts/build-test-kernel.sh)",
            microvm_kernel().display()
        ));
    }
    (!Path::new("/dev/net/tun").exists()).then(|| "/dev/net/tun is missing".into())
}

fn skip_unless_ready(test: &str) -> bool {
    skip(test, missing())
}

/// A "host" namespace with a state directory, and the other namespaces of the test;
/// stops the VMs and deletes the namespaces (with their links and processes) on drop.
struct Host {
    ns: String,
    namespaces: Vec<Netns>,
    dir: tempfile::TempDir,
    vms: Vec<String>,
}

impl Host {
    fn new(tag: &str) -> Host {
        host_install();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{tag}-"))
            .tempdir_in(work_dir())
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let ns = Netns::new(format!("{tag}-h"));
        Host {
            ns: ns.0.clone(),
            namespaces: vec![ns],
            dir,
            vms: Vec::new(),
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A client namespace behind a veth pair: `host_if` (`HOST_ADDR/30`) in the host
    /// namespace, `eth0` (`CLIENT_ADDR/30`) in the client.
    fn client(&mut self, name: &str, host_if: &str, host_addr: &str, client_addr: &str) -> String {
        let ns = Netns::new(format!("{}-{name}", self.ns.trim_end_matches("-h")));
        veth(&self.ns, host_if, host_addr, &ns, "eth0", client_addr);
        let name = ns.0.clone();
        self.namespaces.push(ns);
        name
    }

    /// `ip netns exec HOST microvm --state-dir S ARGS…` with microvm's own service manager.
    fn microvm(&self, args: &[&str]) -> Output {
        microvm_in("", &self.ns, &self.state(), args)
    }

    /// Writes the definition of a single-command VM running [`SERVICE`] with the microvm
    /// kernel.
    fn definition(&self, name: &str, vcpu: u32, tables: &str) -> PathBuf {
        command_definition(
            self.dir.path(),
            (name, vcpu),
            &microvm_kernel(),
            SERVICE,
            tables,
        )
    }

    /// `microvm run DEF` in the host namespace, in the background (console and stderr in
    /// files next to the definition), once the guest serves.
    fn run_file(&self, def: &Path) -> Running {
        let stderr = def.with_extension("stderr");
        let console = def.with_extension("console");
        let child = run_in(&self.ns, &self.state(), def, self.dir.path(), &console)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("microvm run");
        let mut running = Running { child, stderr };
        let serving = wait_for("the guest's service", Duration::from_secs(120), || {
            fs::read_to_string(&console).is_ok_and(|c| c.contains("SERVING"))
        });
        if !serving {
            running.stop();
            panic!(
                "{} does not serve: {}\n{}",
                def.display(),
                running.stderr(),
                fs::read_to_string(&console).unwrap_or_default()
            );
        }
        running
    }

    /// Builds the VM of [`Host::definition`] and installs it as `<state>/NAME/current`
    /// (the layout `microvm create` makes).
    fn install(&mut self, name: &str, vcpu: u32, tables: &str) {
        let def = self.definition(name, vcpu, tables);
        install_built(&def, &self.state(), name);
        self.vms.push(name.into());
    }

    fn log(&self, name: &str) -> String {
        let read =
            |f: &str| fs::read_to_string(self.state().join(name).join(f)).unwrap_or_default();
        let dnsmasq: String = fs::read_dir(self.state().join(".networks"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| fs::read_to_string(e.path().join("dnsmasq.log")).unwrap_or_default())
            .map(|t| tail(&t, 30))
            .collect();
        format!(
            "--- supervisor.log\n{}\n--- console.log (tail)\n{}\n--- dnsmasq.log (tail)\n{dnsmasq}",
            read("supervisor.log"),
            tail(&read("console.log"), 30)
        )
    }

    fn start(&self, name: &str) {
        let out = self.microvm(&["start", name]);
        assert!(out.status.success(), "start {name}\n{}", self.log(name));
        assert!(
            wait_for("the guest's service", Duration::from_secs(120), || {
                self.log(name).contains("SERVING")
            }),
            "{name} does not serve\n{}",
            self.log(name)
        );
    }

    /// `start NAME` fails, and says `why` (on stderr or in the supervisor's log).
    fn start_refused(&self, name: &str, why: &str) {
        let out = self.microvm(&["start", name]);
        let said = format!("{}{}", String::from_utf8_lossy(&out.stderr), self.log(name));
        assert!(!out.status.success(), "{said}");
        assert!(said.contains(why), "{said}");
    }

    fn stop(&self, name: &str) {
        let out = self.microvm(&["stop", name]);
        assert!(out.status.success(), "stop {name}\n{}", self.log(name));
    }

    fn ruleset(&self) -> String {
        ok(&["ip", "netns", "exec", &self.ns, "nft", "list", "ruleset"])
    }

    fn links(&self) -> String {
        ok(&["ip", "-n", &self.ns, "-o", "link"])
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for vm in &self.vms {
            let _ = self.microvm(&["stop", vm, "--timeout", "5"]);
        }
        // The clients, then the host namespace.
        while let Some(ns) = self.namespaces.pop() {
            drop(ns);
        }
    }
}

/// A `microvm run FILE` in the background.
struct Running {
    child: std::process::Child,
    stderr: PathBuf,
}

impl Running {
    /// SIGTERM (a graceful stop) and wait.
    fn stop(&mut self) {
        terminate(&mut self.child);
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a connection to `ADDR:PORT` from namespace `ns` gets, once the service answers
/// (retried for 90 s: the guest may still be configuring its interface).
fn fetch(ns: &str, addr: &str, port: u16) -> Vec<u8> {
    let mut last = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while std::time::Instant::now() < deadline {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "timeout", "20", "busybox", "nc", addr])
            .arg(port.to_string())
            .env("PATH", path_var())
            .stdin(Stdio::null())
            .output()
            .expect("nc");
        if out.stdout.starts_with(b"GUEST-OK\n") && out.stdout.len() == REPLY_LEN {
            return out.stdout;
        }
        last = out.stdout;
        last.extend(out.stderr);
        std::thread::sleep(Duration::from_secs(2));
    }
    panic!(
        "{addr}:{port} from {ns}: no full reply; last: {:?}",
        String::from_utf8_lossy(&last[..last.len().min(300)])
    );
}

fn tag(short: &str) -> String {
    format!("n2{short}{}", std::process::id() % 100000)
}

/// The forwarded address of a supervisor log line `forwarding tcp *:PORT → IP:GUEST`.
fn forwarded_target(log: &str, port: u16) -> Option<String> {
    let line = log
        .lines()
        .find(|l| l.contains(&format!("forwarding tcp *:{port} → ")))?;
    let target = line.rsplit("→ ").next()?;
    Some(target.rsplit_once(':')?.0.to_string())
}

fn qemu_cmdline(host: &Host, name: &str) -> String {
    let rec: serde_json::Value = fs::read(host.state().join(name).join("run.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let pid = rec["hypervisorPid"]
        .as_u64()
        .expect("hypervisor pid in run.json");
    let raw = fs::read(format!("/proc/{pid}/cmdline")).expect("qemu cmdline");
    String::from_utf8_lossy(&raw).replace('\0', " ")
}

/// (a) + (c): a 2-vCPU VM on a microvm network (DHCP, a reserved address) serves a port
/// that the host forwards with nftables DNAT: reached from the host itself (to the
/// bridge's and the veth's address) and from a client namespace. Its tap is multi-queue
/// (`ip -d link`: two queues opened, qemu's `queues=2`) and carries a ping and 1 MiB
/// transfers. A second VM forwarding the same port is refused, and so is a DHCP guest on
/// a bridge that is no microvm network; stopping the VM, and recovering after `kill -9`
/// of its supervisor, leave no table and no reservation; `microvm run FILE` forwards to a
/// static address.
#[test]
fn forwarded_ports_reach_a_guest_on_a_multi_queue_tap_and_leave_no_rule() {
    if skip_unless_ready("forwarded ports") {
        return;
    }
    let mut host = Host::new(&tag("f"));
    let client = host.client("c", "n2c0", "172.31.252.1/30", "172.31.252.2/30");
    let out = host.microvm(&[
        "network",
        "create",
        "n2fwd",
        "--bridge",
        "n2br0",
        "--subnet",
        "10.179.0.1/24",
    ]);
    assert!(out.status.success(), "network create");
    let web = "n2-web";
    let tap = |id: &str, mac: &str| {
        format!(
            "[[interfaces]]\ntype = \"tap\"\nid = \"{id}\"\nmac = \"{mac}\"\nbridge = \"n2br0\"\n\n\
             [[network]]\ninterface = \"{id}\"\ndhcp = true\n\n\
             [[forwardPorts]]\nhost.port = 8080\nguest.port = 80\n"
        )
    };
    host.install(web, 2, &tap("n2tap0", "02:00:00:22:00:01"));
    host.start(web);
    let log = host.log(web);
    let ip = forwarded_target(&log, 8080).unwrap_or_else(|| panic!("no forwarding line\n{log}"));
    assert!(!log.contains("warning:"), "{log}");
    let net_dir = host.state().join(".networks/n2fwd");
    assert_eq!(
        fs::read_to_string(net_dir.join("hosts").join(web)).expect("reservation"),
        format!("02:00:00:22:00:01,{ip}\n")
    );
    assert!(host.ruleset().contains("table ip microvm-fwd-n2-web"));

    for (ns, addr) in [
        (&host.ns, "10.179.0.1"),
        (&host.ns, "172.31.252.1"),
        (&client, "172.31.252.1"),
    ] {
        fetch(ns, addr, 8080);
        eprintln!("{ns} → {addr}:8080: {REPLY_LEN} bytes from the guest");
    }
    // The guest took the reserved address.
    let leases = fs::read_to_string(net_dir.join("leases")).expect("leases");
    assert!(
        leases.contains(&format!("02:00:00:22:00:01 {ip} ")),
        "{leases}"
    );
    ok(&[
        "ip", "netns", "exec", &host.ns, "ping", "-c", "3", "-W", "10", &ip,
    ]);

    // The tap is multi-queue, and qemu opens two queues on it.
    let link = ok(&["ip", "-n", &host.ns, "-d", "link", "show", "n2tap0"]);
    assert!(link.contains("multi_queue"), "{link}");
    // qemu opened both queues; on the microvm machine's virtio-mmio NIC (no `mq=on`, as
    // in microvm.nix) the guest enables one and qemu detaches the other.
    let count = |key: &str| -> u32 {
        let after = link.split(&format!(" {key} ")).nth(1).unwrap_or_default();
        after
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("numqueues") + count("numdisabled"), 2, "{link}");
    let cmdline = qemu_cmdline(&host, web);
    assert!(
        cmdline.contains("ifname=n2tap0") && cmdline.contains("queues=2"),
        "{cmdline}"
    );

    // A second VM forwarding the same port is refused before it boots.
    let other = "n2-web2";
    host.install(other, 1, &tap("n2tap1", "02:00:00:22:00:02"));
    host.start_refused(
        other,
        "cannot forward tcp *:8080 for VM n2-web2: VM n2-web forwards it already",
    );
    // Refused (docs/host.md, "Refused starts"): no restart was scheduled.
    let log =
        fs::read_to_string(host.state().join(other).join("supervisor.log")).unwrap_or_default();
    assert!(
        log.contains("start refused (a forwarded port is taken)") && !log.contains("restarting"),
        "{log}"
    );
    let _ = host.microvm(&["stop", other]);
    assert!(!host.ruleset().contains("microvm-fwd-n2-web2"));
    assert!(!host.links().contains("n2tap1"));
    assert!(!net_dir.join("hosts").join(other).exists());

    // `run FILE` of another VM of the same name: the running supervisor's table is kept.
    let twin = host.definition(
        web,
        1,
        "[[interfaces]]\ntype = \"tap\"\nid = \"n2tap4\"\nmac = \"02:00:00:22:00:06\"\n\n\
         [[network]]\ninterface = \"n2tap4\"\naddresses = [\"10.179.0.70/24\"]\n\n\
         [[forwardPorts]]\nhost.port = 8084\nguest.port = 80\n",
    );
    let out = host.microvm(&[
        "run",
        twin.to_str().expect("utf-8"),
        "--store",
        work_dir().join("store").to_str().expect("utf-8"),
        "--workdir",
        host.dir.path().to_str().expect("utf-8"),
    ]);
    let why = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{why}");
    assert!(
        why.contains("cannot forward the ports of VM n2-web: its forwarding table is held by the running process"),
        "{why}"
    );
    assert!(
        host.ruleset().contains("dnat to 10.179.0.10:80"),
        "the table was kept"
    );
    assert!(!host.links().contains("n2tap4"));

    // A DHCP guest on a bridge that is not a microvm network: its address cannot be known.
    ok(&[
        "ip", "-n", &host.ns, "link", "add", "n2plain", "type", "bridge",
    ]);
    let plain = "n2-plain";
    host.install(
        plain,
        1,
        "[[interfaces]]\ntype = \"tap\"\nid = \"n2tap3\"\nmac = \"02:00:00:22:00:04\"\nbridge = \"n2plain\"\n\n\
         [[network]]\ninterface = \"n2tap3\"\ndhcp = true\n\n\
         [[forwardPorts]]\nhost.port = 8083\nguest.port = 80\n",
    );
    host.start_refused(
        plain,
        "cannot forward the ports of VM n2-plain: tap n2tap3 takes its address by DHCP, but its bridge n2plain is not a microvm network",
    );
    let _ = host.microvm(&["stop", plain]);
    assert!(!host.ruleset().contains("microvm-fwd-n2-plain"));

    host.stop(web);
    let rules = host.ruleset();
    assert!(!rules.contains("microvm-fwd"), "a rule left: {rules}");
    assert!(
        !net_dir.join("hosts").join(web).exists(),
        "reservation left"
    );

    // kill -9 of the supervisor: the next `status` removes the table it left.
    host.start(web);
    assert!(host.ruleset().contains("microvm-fwd-n2-web"));
    let pid: i32 = fs::read_to_string(host.state().join(web).join("supervisor.pid"))
        .expect("supervisor.pid")
        .trim()
        .parse()
        .expect("pid");
    ok(&["kill", "-9", &pid.to_string()]);
    wait_for("the supervisor to die", Duration::from_secs(10), || {
        !service_harness::alive(pid as u64)
    });
    assert!(
        host.ruleset().contains("microvm-fwd-n2-web"),
        "the killed supervisor left its table (what recovery is for)"
    );
    let out = host.microvm(&["status", web]);
    assert!(
        out.status.success() || out.status.code() == Some(3),
        "status"
    );
    let rules = host.ruleset();
    assert!(
        !rules.contains("microvm-fwd"),
        "recovery left a rule: {rules}"
    );
    assert!(
        !net_dir.join("hosts").join(web).exists(),
        "reservation left"
    );
    assert!(!host.links().contains("n2tap0"), "tap left");

    // `microvm run FILE` as root forwards too; here to a static address.
    let once = host.definition(
        "n2-once",
        1,
        "[[interfaces]]\ntype = \"tap\"\nid = \"n2tap2\"\nmac = \"02:00:00:22:00:03\"\nbridge = \"n2br0\"\n\n\
         [[network]]\ninterface = \"n2tap2\"\naddresses = [\"10.179.0.60/24\"]\ngateways = [\"10.179.0.1\"]\n\n\
         [[forwardPorts]]\nhost.port = 8082\nguest.port = 80\n",
    );
    let mut run = host.run_file(&once);
    fetch(&client, "172.31.252.1", 8082);
    assert!(host.ruleset().contains("dnat to 10.179.0.60:80"));
    run.stop();
    assert!(
        run.stderr()
            .contains("forwarding tcp *:8082 → 10.179.0.60:80"),
        "{}",
        run.stderr()
    );
    let rules = host.ruleset();
    assert!(
        !rules.contains("microvm-fwd"),
        "run FILE left a rule: {rules}"
    );

    assert!(host
        .microvm(&["network", "remove", "n2fwd"])
        .status
        .success());
    // Nothing is left: no table, no tap, no process in the host namespace.
    let rules = host.ruleset();
    assert!(!rules.contains("microvm"), "{rules}");
    let links = host.links();
    assert!(
        !links.contains("n2tap") && !links.contains("n2br0"),
        "{links}"
    );
    let pids = ok(&["ip", "netns", "pids", &host.ns]);
    assert!(pids.trim().is_empty(), "processes left: {pids}");
}

/// (b): qemu `user` networking (slirp: DHCP from qemu, no tap) with `forwardPorts`
/// (qemu's `hostfwd`) reaches the guest's service from the host; no nftables table.
#[test]
fn qemu_user_networking_forwards_a_port_to_the_guest() {
    if skip_unless_ready("qemu user networking") {
        return;
    }
    let mut host = Host::new(&tag("u"));
    let vm = "n2-user";
    host.install(
        vm,
        1,
        "[[interfaces]]\ntype = \"user\"\nid = \"qemu\"\nmac = \"02:00:00:22:00:05\"\n\n\
         [[network]]\ninterface = \"qemu\"\ndhcp = true\n\n\
         [[forwardPorts]]\nhost.port = 8081\nguest.port = 80\n",
    );
    host.start(vm);
    let cmdline = qemu_cmdline(&host, vm);
    assert!(cmdline.contains("hostfwd=tcp::8081-:80"), "{cmdline}");
    fetch(&host.ns, "127.0.0.1", 8081);
    assert!(
        !host.ruleset().contains("microvm-fwd"),
        "hostfwd needs no table"
    );
    host.stop(vm);
}

/// Creates and deletes `pairs` veth pairs in `ns` (one `ip -batch`), so that the next
/// link there gets an ifindex above `2 * pairs`.
fn bump_ifindex(ns: &str, pairs: usize) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["-n", ns, "-batch", "-"])
        .env("PATH", path_var())
        .stdin(Stdio::piped())
        .spawn()
        .expect("ip -batch");
    let mut stdin = child.stdin.take().expect("stdin");
    for _ in 0..pairs {
        stdin
            .write_all(b"link add n2pad type veth peer name n2padb\nlink delete n2pad\n")
            .expect("batch");
    }
    drop(stdin);
    assert!(child.wait().expect("ip -batch").success());
}

/// The interface index of `link` in `ns`.
fn ifindex(ns: &str, link: &str) -> u32 {
    let out = ok(&["ip", "-n", ns, "-o", "link", "show", link]);
    out.split(':')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .expect("index")
}

/// A tap VM in another namespace whose tap would get the macvtap's `index` (qemu would
/// open `/dev/tap<index>`, the macvtap): microvm makes the tap again, qemu attaches to
/// it, and it carries a ping.
fn a_tap_vm_elsewhere_does_not_take_the_macvtap(index: u32) {
    let mut other = Host::new(&tag("x"));
    // A fresh namespace has lo (1); its next link gets 2, then each pair takes two.
    let next = 2 + 2 * ((index - 2) / 2);
    bump_ifindex(&other.ns, ((index - 2) / 2) as usize);
    if next < index {
        ok(&[
            "ip", "-n", &other.ns, "link", "add", "n2pad", "type", "bridge",
        ]);
        ok(&["ip", "-n", &other.ns, "link", "delete", "n2pad"]);
    }
    let vm = "n2-tapx";
    other.install(
        vm,
        1,
        "[[interfaces]]\ntype = \"tap\"\nid = \"n2tapx\"\nmac = \"02:00:00:22:00:09\"\n\n\
         [[network]]\ninterface = \"n2tapx\"\naddresses = [\"10.181.0.2/24\"]\n",
    );
    other.start(vm);
    let got = ifindex(&other.ns, "n2tapx");
    assert_ne!(got, index, "the tap kept the macvtap's index");
    eprintln!("the tap would have had index {index} (a macvtap's); it has {got}");
    let link = ok(&["ip", "-n", &other.ns, "-d", "link", "show", "n2tapx"]);
    // A carrier: qemu holds the tap's queue (on the macvtap it would have none).
    assert!(link.contains("LOWER_UP"), "qemu is not attached: {link}");
    ok(&[
        "ip",
        "-n",
        &other.ns,
        "addr",
        "add",
        "10.181.0.1/24",
        "dev",
        "n2tapx",
    ]);
    ok(&[
        "ip",
        "netns",
        "exec",
        &other.ns,
        "ping",
        "-c",
        "3",
        "-W",
        "10",
        "10.181.0.2",
    ]);
    other.stop(vm);
}

/// Whether this kernel has the macvtap link type (probed in `ns` on the veth `parent`);
/// the reason when it does not.
fn macvtap_missing(ns: &str, parent: &str) -> Option<String> {
    let out = sh(&[
        "ip", "-n", ns, "link", "add", "link", parent, "name", "n2probe", "type", "macvtap",
    ]);
    if out.status.success() {
        let _ = sh(&["ip", "-n", ns, "link", "delete", "n2probe"]);
        return None;
    }
    Some(format!(
        "this host kernel has no macvtap link type (`ip link add … type macvtap`: {})",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// (d): a macvtap on a veth parent (fds passed to qemu) carries a ping and the guest's
/// service to the namespace at the veth's other end; a tap VM in another namespace whose
/// tap would have the macvtap's index gets another one and works; the macvtap is removed
/// with the VM.
#[test]
fn macvtap_on_a_veth_parent_carries_traffic() {
    if skip_unless_ready("macvtap") {
        return;
    }
    let mut host = Host::new(&tag("m"));
    // The veth's host end is the macvtap's parent (no address: the guest is on the link).
    let peer = host.client("p", "n2mvp0", "10.180.0.3/24", "10.180.0.1/24");
    ok(&["ip", "-n", &host.ns, "addr", "flush", "dev", "n2mvp0"]);
    // qemu (≥ 8.2) opens `/dev/tap<ifindex of ifname=>` before /dev/net/tun, and /dev is
    // not per namespace: a tap VM in another namespace whose tap has the same ifindex as
    // this macvtap would open it (microvm re-creates such a tap; a qemu started by
    // anything else does not). Move this namespace's ifindexes (allocated cyclically) past
    // the small ones taps of other namespaces have.
    bump_ifindex(&host.ns, 250);
    if let Some(why) = macvtap_missing(&host.ns, "n2mvp0") {
        eprintln!("skipped macvtap: {why}");
        return;
    }
    let vm = "n2-mvt";
    host.install(
        vm,
        1,
        "[[interfaces]]\ntype = \"macvtap\"\nid = \"n2mvt0\"\nmac = \"02:00:00:22:00:07\"\n\
         macvtap.link = \"n2mvp0\"\nmacvtap.mode = \"bridge\"\n\n\
         [[network]]\ninterface = \"n2mvt0\"\naddresses = [\"10.180.0.2/24\"]\n",
    );
    host.start(vm);
    ok(&[
        "ip",
        "netns",
        "exec",
        &peer,
        "ping",
        "-c",
        "3",
        "-W",
        "10",
        "10.180.0.2",
    ]);
    fetch(&peer, "10.180.0.2", 80);
    let index = ifindex(&host.ns, "n2mvt0");
    assert!(Path::new(&format!("/dev/tap{index}")).exists());
    a_tap_vm_elsewhere_does_not_take_the_macvtap(index);
    host.stop(vm);
    assert!(!host.links().contains("n2mvt0"), "macvtap left");
}
