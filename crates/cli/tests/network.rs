//! Host networks with real packets: `microvm network create` in a network namespace the
//! test creates ("host"), a second namespace as the uplink ("internet", reachable only
//! through the host's NAT) and two client namespaces on the bridge, each a DHCP client
//! (busybox udhcpc) sending its hostname. They get leases from the network's dnsmasq,
//! resolve each other's names through it, ping each other and reach the uplink's address
//! through NAT. Removing the network leaves no link, nftables table, lease file or
//! dnsmasq process. Only addresses inside the namespaces are used.
//!
//! Prerequisites (root, iproute2 with netns, nft, dnsmasq, busybox-static): a missing one
//! skips the test with a printed reason, or fails it when `CI` is set.

mod service_harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use service_harness::netns::{command_definition, ok, run_in, skip, terminate, veth, Netns};
use service_harness::{bin, find, kernel, path_var, sh as run, work_dir};

/// Why the test cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root".into());
    }
    ["ip", "nft", "dnsmasq", "busybox"]
        .into_iter()
        .find(|t| find(t).is_none())
        .map(|t| format!("{t} is not installed (scripts/setup-host.sh installs it)"))
}

/// The udhcpc script: configure the lease on the interface.
const UDHCPC_SCRIPT: &str = "#!/bin/sh\ncase \"$1\" in\n bound|renew)\n  \
    ip addr flush dev \"$interface\"\n  ip addr add \"$ip/$mask\" dev \"$interface\"\n  \
    [ -n \"$router\" ] && ip route replace default via \"${router%% *}\"\n  \
    echo \"$ip\" > \"$LEASE_OUT\" ;;\nesac\nexit 0\n";

fn microvm(host_ns: &str, state: &Path, args: &[&str]) -> Output {
    let mut argv = vec!["ip", "netns", "exec", host_ns];
    let b = bin();
    let s = state.to_str().expect("utf-8");
    argv.extend([b.to_str().expect("utf-8"), "--state-dir", s]);
    argv.extend(args);
    run(&argv)
}

/// Connects a client namespace to the bridge with a veth pair and runs udhcpc in it.
fn dhcp_client(
    host: &str,
    client: &str,
    peer: &str,
    bridge: &str,
    hostname: &str,
    dir: &Path,
) -> String {
    ok(&[
        "ip", "-n", host, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns",
        client,
    ]);
    ok(&[
        "ip", "-n", host, "link", "set", peer, "master", bridge, "up",
    ]);
    ok(&["ip", "-n", client, "link", "set", "eth0", "up"]);
    let script = dir.join("udhcpc.sh");
    fs::write(&script, UDHCPC_SCRIPT).expect("script");
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    let lease_out = dir.join(format!("{hostname}.ip"));
    let out = Command::new("ip")
        .args([
            "netns", "exec", client, "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t",
            "10", "-T", "3",
        ])
        .args(["-x", &format!("hostname:{hostname}"), "-s"])
        .arg(&script)
        .env("LEASE_OUT", &lease_out)
        .env("PATH", path_var())
        .output()
        .expect("udhcpc");
    assert!(
        out.status.success(),
        "udhcpc in {client}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read_to_string(&lease_out)
        .expect("lease written")
        .trim()
        .to_string()
}

#[test]
fn dhcp_dns_and_nat_between_namespaces_and_nothing_left_after_removal() {
    if skip("network test", missing()) {
        return;
    }
    let tag = format!("i11n{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let host = Netns::new(format!("{tag}-h"));
    let up = Netns::new(format!("{tag}-u"));
    let c1 = Netns::new(format!("{tag}-c1"));
    let c2 = Netns::new(format!("{tag}-c2"));
    // The uplink: 172.31.250.2 in its own namespace, with no route back to the VMs' subnet.
    veth(
        &host,
        "up0",
        "172.31.250.1/30",
        &up,
        "eth0",
        "172.31.250.2/30",
    );

    let bridge = "mvbr0";
    let create = [
        "network",
        "create",
        "net0",
        "--bridge",
        bridge,
        "--subnet",
        "10.177.0.1/24",
        "--uplink",
        "up0",
    ];
    for round in 0..2 {
        let out = microvm(&host, &state, &create);
        assert!(
            out.status.success(),
            "create (round {round}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let ip1 = dhcp_client(&host, &c1, "c1p", bridge, "vm-one", dir.path());
    let ip2 = dhcp_client(&host, &c2, "c2p", bridge, "vm-two", dir.path());
    assert_ne!(ip1, ip2);

    let out = microvm(&host, &state, &["network", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
    let net = &list[0];
    let dnsmasq_pid = net["dnsmasqPid"].as_u64().expect("dnsmasq runs");
    let leases: Vec<(String, String)> = net["leases"]
        .as_array()
        .expect("leases")
        .iter()
        .map(|l| {
            (
                l["hostname"].as_str().unwrap_or("").to_string(),
                l["ip"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        leases.contains(&("vm-one".into(), ip1.clone())),
        "{leases:?}"
    );
    assert!(
        leases.contains(&("vm-two".into(), ip2.clone())),
        "{leases:?}"
    );

    // Names: vm-two resolves (plain and in the domain) from vm-one, through dnsmasq.
    for name in ["vm-two", "vm-two.microvm"] {
        let out = ok(&[
            "ip",
            "netns",
            "exec",
            &c1,
            "busybox",
            "nslookup",
            name,
            "10.177.0.1",
        ]);
        assert!(out.contains(&ip2), "{name} resolves to {ip2}: {out}");
    }
    ok(&[
        "ip", "netns", "exec", &c1, "busybox", "ping", "-c", "2", "-W", "5", &ip2,
    ]);
    // NAT: the uplink has no route to 10.177.0.0/24, so a reply comes back only masqueraded.
    ok(&[
        "ip",
        "netns",
        "exec",
        &c2,
        "busybox",
        "ping",
        "-c",
        "2",
        "-W",
        "5",
        "172.31.250.2",
    ]);
    let conntrack = ok(&["ip", "netns", "exec", &up, "ip", "route"]);
    assert!(
        !conntrack.contains("10.177"),
        "the uplink must not route the subnet"
    );

    let out = microvm(&host, &state, &["network", "remove", "net0"]);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = ok(&["ip", "-n", &host, "-o", "link"]);
    assert!(!links.contains(bridge), "bridge left: {links}");
    let rules = ok(&["ip", "netns", "exec", &host, "nft", "list", "ruleset"]);
    assert!(!rules.contains("microvm-net0"), "table left: {rules}");
    assert!(
        !Path::new(&format!("/proc/{dnsmasq_pid}/cmdline")).exists()
            || fs::read(format!("/proc/{dnsmasq_pid}/cmdline"))
                .expect("cmdline")
                .is_empty(),
        "dnsmasq left"
    );
    assert!(
        !state.join(".networks/net0").exists(),
        "lease file and record left"
    );
    let out = microvm(&host, &state, &["network", "remove", "net0"]);
    assert!(!out.status.success(), "removing a missing network fails");
}

/// A single-command VM with one tap on `bridge`, configured by DHCP.
fn vm_definition(
    dir: &Path,
    name: &str,
    tap: &str,
    mac: &str,
    bridge: &str,
    script: &str,
) -> PathBuf {
    let tables = format!(
        "[[interfaces]]\ntype = \"tap\"\nid = \"{tap}\"\nmac = \"{mac}\"\nbridge = \"{bridge}\"\n\n\
         [[network]]\ninterface = \"{tap}\"\ndhcp = true\n"
    );
    command_definition(dir, (name, 1), &kernel(), script, &tables)
}

/// `ip netns exec NS microvm run DEF` with the console in `DIR/NAME.console`.
fn run_vm(host_ns: &str, dir: &Path, def: &Path, name: &str) -> Command {
    let console = dir.join(format!("{name}.console"));
    run_in(host_ns, &dir.join("state"), def, dir, &console)
}

fn vm_missing() -> Option<String> {
    if let Some(why) = missing() {
        return Some(why);
    }
    if find("qemu-system-x86_64").is_none() {
        return Some("qemu-system-x86_64 is not installed".into());
    }
    if !kernel().is_file() {
        return Some(format!(
            "{} is missing (scripts/fetch-test-kernels.sh)",
            kernel().display()
        ));
    }
    (!Path::new("/bin/busybox").is_file())
        .then(|| "/bin/busybox is missing (busybox-static)".into())
}

/// Three VMs (qemu, TCG here) on one microvm network: all get DHCP leases under their
/// hostnames, vm-a resolves vm-b and vm-c through the network's DNS, pings them and pings
/// the uplink's address through NAT; afterwards no tap, bridge, table, lease or process is left.
#[test]
fn three_vms_get_leases_resolve_each_other_and_reach_the_uplink() {
    if skip("network VM test", vm_missing()) {
        return;
    }
    let tag = format!("i11v{}", std::process::id() % 100000);
    let dir = tempfile::tempdir_in(work_dir()).expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.path().join("state");
    let host = Netns::new(format!("{tag}-h"));
    let up = Netns::new(format!("{tag}-u"));
    veth(
        &host,
        "up0",
        "172.31.251.1/30",
        &up,
        "eth0",
        "172.31.251.2/30",
    );
    let bridge = "mvbr1";
    let out = microvm(
        &host,
        &state,
        &[
            "network",
            "create",
            "net1",
            "--bridge",
            bridge,
            "--subnet",
            "10.178.0.1/24",
            "--uplink",
            "up0",
        ],
    );
    assert!(
        out.status.success(),
        "create: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // vm-b and vm-c wait on the network; vm-a finds them by name.
    let lease_file = state.join(".networks/net1/leases");
    let mut waiting = Vec::new();
    let mut taps = Vec::new();
    let mut def_b = PathBuf::new();
    for (name, mac) in [("vm-b", "02:00:00:11:00:02"), ("vm-c", "02:00:00:11:00:03")] {
        let tap = format!("{tag}{}", &name[3..]);
        let def = vm_definition(
            dir.path(),
            name,
            &tap,
            mac,
            bridge,
            &format!("echo {name} up; sleep 900"),
        );
        let child = run_vm(&host, dir.path(), &def, name).spawn().expect(name);
        if name == "vm-b" {
            def_b = def;
        }
        taps.push(tap);
        waiting.push((name, child));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    let stop_all = |waiting: &mut Vec<(&str, std::process::Child)>| {
        for (_, c) in waiting.iter_mut() {
            terminate(c);
        }
    };
    for i in 0..waiting.len() {
        let name = waiting[i].0;
        while !fs::read_to_string(&lease_file)
            .unwrap_or_default()
            .contains(&format!(" {name} "))
        {
            if std::time::Instant::now() > deadline
                || waiting[i].1.try_wait().expect("wait").is_some()
            {
                stop_all(&mut waiting);
                panic!(
                    "{name} got no lease: {}\n--- dnsmasq.log\n{}",
                    fs::read_to_string(dir.path().join(format!("{name}.console")))
                        .unwrap_or_default(),
                    fs::read_to_string(state.join(".networks/net1/dnsmasq.log"))
                        .unwrap_or_default(),
                );
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
    }

    let script = "for n in vm-b vm-c; do ip=$(nslookup $n 10.178.0.1 | awk \"/^Address/ {a=\\$NF} END {print a}\"); \
                  echo resolved $n as $ip; ping -c 2 -W 10 $ip || exit 1; done; \
                  ping -c 2 -W 10 172.31.251.2 && echo NET-OK";
    let tap_a = format!("{tag}a");
    let def_a = vm_definition(
        dir.path(),
        "vm-a",
        &tap_a,
        "02:00:00:11:00:01",
        bridge,
        script,
    );
    let out = run_vm(&host, dir.path(), &def_a, "vm-a")
        .output()
        .expect("vm-a");
    let console_a = fs::read_to_string(dir.path().join("vm-a.console")).unwrap_or_default();
    stop_all(&mut waiting);
    taps.push(tap_a);
    assert!(
        out.status.success() && console_a.contains("NET-OK"),
        "vm-a: {}\n{console_a}",
        String::from_utf8_lossy(&out.stderr)
    );
    let leases = fs::read_to_string(&lease_file).expect("leases");
    let ip_of = |name: &str| {
        leases
            .lines()
            .find(|l| l.contains(&format!(" {name} ")))
            .and_then(|l| l.split_whitespace().nth(2))
            .map(str::to_owned)
    };
    let ip_b = ip_of("vm-b").expect("vm-b leased");
    assert!(ip_of("vm-a").is_some(), "{leases}");
    for name in ["vm-b", "vm-c"] {
        let ip = ip_of(name).expect("leased");
        assert!(
            console_a
                .lines()
                .any(|l| l.trim_end() == format!("resolved {name} as {ip}")),
            "{console_a}"
        );
    }

    // `list` shows a managed VM's leased address (matched by its interface's MAC).
    let out = microvm(
        &host,
        &state,
        &["create", "vm-b", "--from", def_b.to_str().expect("utf-8")],
    );
    assert!(
        out.status.success(),
        "create vm-b: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = microvm(&host, &state, &["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list json");
    assert_eq!(list[0]["addresses"][0], format!("{ip_b} (net1)"), "{list}");
    let out = microvm(&host, &state, &["remove", "vm-b"]);
    assert!(
        out.status.success(),
        "remove vm-b: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = microvm(&host, &state, &["network", "remove", "net1"]);
    assert!(
        out.status.success(),
        "remove: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let links = ok(&["ip", "-n", &host, "-o", "link"]);
    for l in taps.iter().map(String::as_str).chain([bridge]) {
        assert!(!links.contains(l), "{l} left: {links}");
    }
    let rules = ok(&["ip", "netns", "exec", &host, "nft", "list", "ruleset"]);
    assert!(!rules.contains("microvm-net1"), "table left: {rules}");
    assert!(!state.join(".networks/net1").exists(), "lease file left");
    let pids = ok(&["ip", "netns", "pids", &host]);
    assert!(
        pids.trim().is_empty(),
        "processes left in the namespace: {pids}"
    );
}

/// `host apply` creates the host file's networks, leaves them alone when unchanged,
/// updates a changed one and removes the ones it created that the file no longer lists.
#[test]
fn host_apply_creates_updates_and_removes_its_networks() {
    if skip("network test", missing()) {
        return;
    }
    let tag = format!("i11a{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let host = Netns::new(format!("{tag}-h"));
    let file = dir.path().join("host.toml");
    let apply = |text: &str| -> serde_json::Value {
        fs::write(&file, text).expect("host file");
        let out = microvm(
            &host,
            &state,
            &["host", "apply", file.to_str().expect("utf-8"), "--json"],
        );
        assert!(
            out.status.success(),
            "host apply: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("actions")
    };
    let one = "[networks.hnet]\nsubnet = \"10.179.0.1/24\"\nbridge = \"mvbr2\"\n";
    let a = apply(one);
    assert_eq!(a[0]["action"], "created", "{a}");
    assert!(
        ok(&["ip", "-n", &host, "-4", "addr", "show", "dev", "mvbr2"]).contains("10.179.0.1/24")
    );
    assert_eq!(apply(one)[0]["action"], "unchanged");
    let changed =
        apply("[networks.hnet]\nsubnet = \"10.179.5.1/24\"\nbridge = \"mvbr2\"\nnat = false\n");
    assert_eq!(changed[0]["action"], "updated", "{changed}");
    let addrs = ok(&["ip", "-n", &host, "-4", "addr", "show", "dev", "mvbr2"]);
    assert!(
        addrs.contains("10.179.5.1/24") && !addrs.contains("10.179.0.1/24"),
        "{addrs}"
    );
    let rules = ok(&["ip", "netns", "exec", &host, "nft", "list", "ruleset"]);
    assert!(
        rules.contains("microvm-hnet") && !rules.contains("masquerade"),
        "{rules}"
    );
    let removed = apply("");
    assert_eq!(removed[0]["action"], "removed", "{removed}");
    assert!(!ok(&["ip", "-n", &host, "-o", "link"]).contains("mvbr2"));
    assert!(
        !ok(&["ip", "netns", "exec", &host, "nft", "list", "ruleset"]).contains("microvm-hnet")
    );
    assert!(!state.join(".networks/hnet").exists());
    let pids = ok(&["ip", "netns", "pids", &host]);
    assert!(pids.trim().is_empty(), "dnsmasq left: {pids}");
    fs::write(&file, "[networks.hnet]\nsubnett = \"10.179.0.1/24\"\n").expect("bad file");
    let out = microvm(
        &host,
        &state,
        &["host", "apply", file.to_str().expect("utf-8")],
    );
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("unknown key `subnett`")
    );
}

/// `host install --network` makes the default network (microvm0, 10.177.0.1/24) and a
/// second run changes nothing.
#[test]
fn host_install_creates_the_default_network() {
    if skip("network test", missing()) {
        return;
    }
    let tag = format!("i11i{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let units = dir.path().join("units");
    let host = Netns::new(format!("{tag}-h"));
    let install = [
        "host",
        "install",
        "--unit-dir",
        units.to_str().expect("utf-8"),
        "--network",
    ];
    for round in 0..2 {
        let out = microvm(&host, &state, &install);
        assert!(
            out.status.success(),
            "install (round {round}): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        ok(&["ip", "-n", &host, "-4", "addr", "show", "dev", "microvm0"]).contains("10.177.0.1/24")
    );
    let out = microvm(&host, &state, &["network", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(list[0]["dnsmasqPid"].is_u64(), "{list}");
    let out = microvm(&host, &state, &["network", "remove", "microvm0"]);
    assert!(out.status.success());
    assert!(!ok(&["ip", "-n", &host, "-o", "link"]).contains("microvm0"));
}
