//! Host networks kept robust, with real processes and packets in namespaces the tests
//! create (only addresses inside them are used):
//!
//! - the supervisor restarts a killed dnsmasq and a client still gets a lease; creating
//!   the same network again restarts nothing; changing the subnet (and with it the DHCP
//!   range), NAT, IPv6 and the lease time applies the change, through `network create`
//!   and through `host apply`; a killed supervisor is replaced by the next `create`;
//!   removing leaves no link, nftables table, lease file or process;
//! - a VM (the microvm kernel, qemu) gets a lease after dnsmasq was killed and came back,
//!   gets an IPv6 address by SLAAC, pings the bridge over IPv6 and an uplink through
//!   NAT66, and its init renews the 2-minute lease at T1; so does the process the init
//!   leaves behind for a second VM that runs its own init (busybox init);
//! - a Debian systemd guest with systemd-networkd hands its lease over to networkd, which
//!   keeps the address and renews it, and gets a SLAAC address (network_host/systemd_guest.rs);
//! - under a real systemd (PID 1 of a `systemd-nspawn` container, as in tests/systemd.rs)
//!   the network is `microvm-network@NAME.service`: dnsmasq and the supervisor both come
//!   back after `kill -9`, a client gets a lease, and removal disables the unit.
//!
//! Prerequisites (root, iproute2 with netns, nft, dnsmasq, busybox-static; qemu and the
//! microvm kernel for the VMs; mmdebstrap, the network and the cloud kernel for the
//! systemd guest; systemd-nspawn and nsenter for the unit): a missing one
//! skips the test with a printed reason, or fails it when `CI` is set.

#[path = "common/container.rs"]
mod container;
#[path = "network_host/guests.rs"]
mod guests;
#[path = "network_host/support.rs"]
mod support;
#[path = "network_host/systemd_guest.rs"]
mod systemd_guest;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use container::Container;
use guests::{busybox_root, init_root, lease_of, microvm_kernel, work_dir, Guests, VmProcess};
use support::*;

#[test]
fn dnsmasq_is_restarted_changes_apply_and_removal_leaves_nothing() {
    let test = "dnsmasq_is_restarted_changes_apply_and_removal_leaves_nothing";
    if skip(test, &[]) {
        return;
    }
    let tag = format!("n3s{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut ns = Namespaces(Vec::new());
    let h = ns.add(format!("{tag}-h"));
    let c = ns.add(format!("{tag}-c"));
    let (host, client) = (
        ["ip", "netns", "exec", h.as_str()],
        ["ip", "netns", "exec", c.as_str()],
    );
    let (net, br) = ("n3net", "n3br0");
    let create = |extra: &[&str]| {
        let mut a = vec!["network", "create", net, "--bridge", br];
        a.extend(extra);
        microvm(&h, &state, &a)
    };
    let first = [
        "--subnet",
        "10.183.0.1/24",
        "--ipv6",
        "fd83::1/64",
        "--lease-time",
        "2m",
    ];
    create(&first);
    let s = status(&h, &state, net);
    assert_eq!(s["dhcp"], "running", "{s}");
    let (d1, sup) = (pid_of(&s, "dnsmasqPid"), pid_of(&s, "supervisorPid"));
    let cmdline = fs::read(format!("/proc/{d1}/cmdline")).expect("cmdline");
    assert!(
        String::from_utf8_lossy(&cmdline).contains("10.183.0.250,255.255.255.0,120"),
        "lease time 2m"
    );
    assert!(addresses(&h, "-6", br).contains("fd83::1/64"));
    assert!(ruleset(&h).contains("table ip6 microvm-n3net"));

    // The same options again: nothing is restarted.
    create(&first);
    let s = status(&h, &state, net);
    assert_eq!(
        (pid_of(&s, "dnsmasqPid"), pid_of(&s, "supervisorPid")),
        (d1, sup)
    );

    // dnsmasq killed: the supervisor starts it again, and it hands out leases.
    kill9(d1);
    let mut d2 = 0;
    wait_for("dnsmasq to come back", Duration::from_secs(20), || {
        let s = status(&h, &state, net);
        d2 = s["dnsmasqPid"].as_u64().unwrap_or(0);
        d2 != 0 && d2 != d1
    });
    assert_eq!(pid_of(&status(&h, &state, net), "supervisorPid"), sup);
    let log = fs::read_to_string(state.join(".networks/n3net/dnsmasq.log")).expect("log");
    assert!(log.contains("restarting in 1 s"), "{log}");
    let ip = lease_for(&host, &client, "n3c0", br, "n3-client");
    assert!(ip.starts_with("10.183.0."), "{ip}");
    let s = status(&h, &state, net);
    assert!(
        s["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .any(|l| l["ip"] == ip.as_str()),
        "{s}"
    );

    // Changed: a /28 (the pool becomes .2-.14), no NAT, no IPv6.
    create(&["--subnet", "10.184.0.1/28", "--no-nat"]);
    let s = status(&h, &state, net);
    let d3 = pid_of(&s, "dnsmasqPid");
    assert_ne!(d3, d2, "a changed network restarts dnsmasq");
    let v4 = addresses(&h, "-4", br);
    assert!(
        v4.contains("10.184.0.1/28") && !v4.contains("10.183."),
        "{v4}"
    );
    assert!(
        addresses(&h, "-6", br).trim().is_empty(),
        "IPv6 address left"
    );
    let rules = ruleset(&h);
    assert!(
        rules.contains("table ip microvm-n3net")
            && !rules.contains("masquerade")
            && !rules.contains("table ip6 microvm-n3net"),
        "{rules}"
    );
    let ip = lease_for(&host, &client, "n3c0", br, "n3-client");
    let last: u8 = ip
        .strip_prefix("10.184.0.")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{ip}"));
    assert!((2..=14).contains(&last), "{ip} in the /28's pool");

    // The supervisor killed: dnsmasq runs on, and the next create replaces both.
    let sup = pid_of(&s, "supervisorPid");
    kill9(sup);
    wait_for("the supervisor to be gone", Duration::from_secs(5), || {
        status(&h, &state, net)["supervisorPid"].is_null()
    });
    create(&["--subnet", "10.184.0.1/28", "--no-nat"]);
    let s = status(&h, &state, net);
    assert!(pid_of(&s, "supervisorPid") != sup && pid_of(&s, "dnsmasqPid") != d3);
    assert!(!alive(d3), "the orphaned dnsmasq was stopped");

    microvm(&h, &state, &["network", "remove", net]);
    assert_gone(&h, &state, net, br);
}

#[test]
fn host_apply_changes_ipv6_and_the_lease_time_and_removes_everything() {
    let test = "host_apply_changes_ipv6_and_the_lease_time_and_removes_everything";
    if skip(test, &[]) {
        return;
    }
    let tag = format!("n3a{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut ns = Namespaces(Vec::new());
    let h = ns.add(format!("{tag}-h"));
    let file = dir.path().join("host.toml");
    let apply = |text: &str| -> serde_json::Value {
        fs::write(&file, text).expect("host file");
        let out = microvm(
            &h,
            &state,
            &["host", "apply", file.to_str().expect("utf-8"), "--json"],
        );
        serde_json::from_str(&out).expect("actions")
    };
    let one = "[networks.n3h]\nsubnet = \"10.186.0.1/24\"\nbridge = \"n3br3\"\n\
               ipv6 = \"fd86::1/64\"\nleaseTime = \"5m\"\n";
    assert_eq!(apply(one)[0]["action"], "created");
    let s = status(&h, &state, "n3h");
    let pids = (pid_of(&s, "dnsmasqPid"), pid_of(&s, "supervisorPid"));
    assert_eq!(
        (s["ipv6"].as_str(), s["leaseSecs"].as_u64()),
        (Some("fd86::1/64"), Some(300))
    );
    assert_eq!(apply(one)[0]["action"], "unchanged");
    let s = status(&h, &state, "n3h");
    assert_eq!(
        (pid_of(&s, "dnsmasqPid"), pid_of(&s, "supervisorPid")),
        pids
    );

    let two = "[networks.n3h]\nsubnet = \"10.186.0.1/24\"\nbridge = \"n3br3\"\n\
               ipv6 = \"fd87::1/64\"\nleaseTime = \"1h\"\n";
    assert_eq!(apply(two)[0]["action"], "updated");
    let s = status(&h, &state, "n3h");
    let d = pid_of(&s, "dnsmasqPid");
    assert_ne!(d, pids.0);
    let cmdline = String::from_utf8_lossy(&fs::read(format!("/proc/{d}/cmdline")).expect("c"))
        .replace('\0', " ");
    assert!(
        cmdline.contains("--dhcp-range=fd87::,ra-stateless,ra-names,64,3600"),
        "{cmdline}"
    );
    let v6 = addresses(&h, "-6", "n3br3");
    assert!(v6.contains("fd87::1/64") && !v6.contains("fd86"), "{v6}");
    assert!(ruleset(&h).contains("ip6 saddr fd87::/64"));

    let bad = apply_err(&h, &state, &file, "[networks.n3h]\nleaseTime = \"1m\"\n");
    assert!(bad.contains("lease time \"1m\" must be from 2m"), "{bad}");
    let bad = apply_err(&h, &state, &file, "[networks.n3h]\nipv6 = \"fd88::1/48\"\n");
    assert!(bad.contains("must be a /64"), "{bad}");

    assert_eq!(apply("")[0]["action"], "removed");
    assert_gone(&h, &state, "n3h", "n3br3");
}

/// The "internet" for NAT66: fd90::2 in `up`, behind `up0` of `host` (the host's default
/// route), with no route back to the VMs' prefix.
fn ipv6_uplink(host: &str, up: &str) {
    ok(&[
        "ip", "-n", host, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", up,
    ]);
    for (n, dev, addr) in [(host, "up0", "fd90::1/64"), (up, "eth0", "fd90::2/64")] {
        ok(&["ip", "-n", n, "addr", "add", addr, "dev", dev, "nodad"]);
        ok(&["ip", "-n", n, "link", "set", dev, "up"]);
    }
    ok(&[
        "ip", "-n", host, "-6", "route", "add", "default", "via", "fd90::2",
    ]);
}

/// `host apply FILE` with `text`, which must fail; its stderr.
fn apply_err(ns: &str, state: &Path, file: &Path, text: &str) -> String {
    fs::write(file, text).expect("host file");
    let b = bin();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        ns,
        b.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
        "host",
        "apply",
        file.to_str().expect("utf-8"),
    ]);
    assert!(!out.status.success(), "{text} was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A VM on a network whose dnsmasq was killed and came back: it gets a DHCP lease, an
/// IPv6 address by SLAAC (the router advertisements of dnsmasq), pings the bridge over
/// IPv6 and IPv4 and an uplink address through NAT66; its init renews the 2-minute lease
/// at T1 (the console says so and the lease file's expiry moves on). A second VM with its
/// own init (busybox init) has its lease renewed by the process the init left behind.
/// When the network's subnet changes under them, both are refused at their next renewal
/// and take a lease in the new subnet. Stopping the VMs and removing the network leaves
/// nothing behind.
#[test]
fn a_vm_gets_a_lease_after_a_dnsmasq_restart_pings_over_ipv6_and_renews() {
    let test = "a_vm_gets_a_lease_after_a_dnsmasq_restart_pings_over_ipv6_and_renews";
    if skip(test, &["qemu-system-x86_64"]) {
        return;
    }
    if !microvm_kernel().join("vmlinux").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: the microvm kernel is missing"
        );
        eprintln!(
            "SKIPPED {test}: the microvm kernel {} is missing (scripts/build-test-kernel.sh)",
            microvm_kernel().display()
        );
        return;
    }
    let tag = format!("n3v{}", std::process::id() % 100000);
    let dir = tempfile::tempdir_in(work_dir()).expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.path().join("state");
    let mut ns = Namespaces(Vec::new());
    let h = ns.add(format!("{tag}-h"));
    let up = ns.add(format!("{tag}-u"));
    ipv6_uplink(&h, &up);
    let (net, br, mac) = ("n3v", "n3br1", "02:00:00:33:00:01");
    microvm(
        &h,
        &state,
        &[
            "network",
            "create",
            net,
            "--bridge",
            br,
            "--subnet",
            "10.185.0.1/24",
            "--ipv6",
            "fd85::1/64",
            "--lease-time",
            "2m",
            "--uplink",
            "up0",
        ],
    );
    let d1 = pid_of(&status(&h, &state, net), "dnsmasqPid");
    kill9(d1);
    wait_for("dnsmasq to come back", Duration::from_secs(20), || {
        status(&h, &state, net)["dnsmasqPid"]
            .as_u64()
            .is_some_and(|d| d != d1)
    });

    let script = "i=0; while ! ip -6 addr | grep -q \"inet6 fd85\"; do i=$((i+1)); \
                  [ $i -gt 90 ] && break; sleep 1; done; ip -6 addr; \
                  ping6 -c 2 -W 10 fd85::1 && echo V6-OK; \
                  ping6 -c 2 -W 10 fd90::2 && echo NAT66-OK; \
                  ping -c 1 -W 10 10.185.0.1 && echo V4-OK; sleep 900";
    let exec = format!("command = ['/bin/sh', '-c', '{script}']");
    let guests = Guests {
        ns: &h,
        state: &state,
        dir: dir.path(),
        bridge: br,
    };
    let start = |name: &str, tap: &str, mac: &str, exec: &str, root: &Path| {
        guests.start(name, tap, mac, exec, root)
    };
    // A command guest (the init stays PID 1) and a guest with its own init (busybox init:
    // the init hands over and leaves a renewing process behind).
    let tap2 = format!("{tag}b");
    let mac2 = "02:00:00:33:00:02";
    let mut vms = [
        start("n3-vm", &tag, mac, &exec, &busybox_root()),
        start("n3-vm2", &tap2, mac2, "init = \"/bin/init\"", &init_root()),
    ];
    let read_console = |name: &str| guests.console(name);
    let until = |what: &str, secs: u64, vms: &mut [VmProcess], done: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !done() {
            let exited = vms
                .iter_mut()
                .any(|vm| vm.0.try_wait().expect("wait").is_some());
            assert!(
                Instant::now() < end && !exited,
                "{what}:\n{}\n--- n3-vm2\n{}\n--- dnsmasq.log\n{}",
                read_console("n3-vm"),
                read_console("n3-vm2"),
                fs::read_to_string(state.join(".networks/n3v/dnsmasq.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    until("the leases", 600, &mut vms, &|| {
        lease_of(&state, net, mac).is_some() && lease_of(&state, net, mac2).is_some()
    });
    let (expiry, ip) = lease_of(&state, net, mac).expect("lease");
    let (expiry2, ip2) = lease_of(&state, net, mac2).expect("lease");
    assert!(
        ip.starts_with("10.185.0.") && ip2.starts_with("10.185.0."),
        "{ip} {ip2}"
    );
    until("IPv6 and IPv4 pings", 240, &mut vms, &|| {
        read_console("n3-vm").contains("V4-OK")
    });
    let text = read_console("n3-vm");
    assert!(text.contains("V6-OK"), "no IPv6 ping:\n{text}");
    assert!(
        text.contains("NAT66-OK"),
        "no IPv6 ping through NAT66:\n{text}"
    );
    let routes = ok(&["ip", "-n", &up, "-6", "route"]);
    assert!(
        !routes.contains("fd85"),
        "the uplink must not route the VMs' prefix"
    );
    // T1 of a 2-minute lease is 60 s after the ACK.
    until("the leases' renewal", 240, &mut vms, &|| {
        read_console("n3-vm").contains(&format!("DHCP lease {ip} renewed"))
            && read_console("n3-vm2").contains(&format!("DHCP lease {ip2} renewed"))
    });
    assert!(
        read_console("n3-vm2").contains("n3-init-up"),
        "busybox init ran"
    );
    until("the lease file's new expiries", 30, &mut vms, &|| {
        lease_of(&state, net, mac).is_some_and(|(e, _)| e >= expiry + 30)
            && lease_of(&state, net, mac2).is_some_and(|(e, _)| e >= expiry2 + 30)
    });

    // The subnet changes under the running VMs: at T1 the server's old address is gone,
    // at T2 the broadcast REQUEST is refused (NAK), and both take a lease in the new
    // subnet, which the host reaches.
    microvm(
        &h,
        &state,
        &[
            "network",
            "create",
            net,
            "--bridge",
            br,
            "--subnet",
            "10.188.0.1/24",
            "--ipv6",
            "fd85::1/64",
            "--lease-time",
            "2m",
            "--uplink",
            "up0",
        ],
    );
    let moved = |m: &str| lease_of(&state, net, m).is_some_and(|(_, a)| a.starts_with("10.188.0."));
    until("new leases in the changed subnet", 240, &mut vms, &|| {
        moved(mac) && moved(mac2)
    });
    for (name, m, old) in [("n3-vm", mac, &ip), ("n3-vm2", mac2, &ip2)] {
        let (_, new) = lease_of(&state, net, m).expect("lease");
        until("the new address in the guest", 30, &mut vms, &|| {
            read_console(name).contains(&format!("DHCP lease {new}\n"))
                || read_console(name).contains(&format!("DHCP lease {new}\r"))
        });
        assert!(
            read_console(name).contains(&format!("DHCP lease {old} refused")),
            "{}",
            read_console(name)
        );
        ok(&[
            "ip", "netns", "exec", &h, "ping", "-c", "2", "-W", "10", &new,
        ]);
    }
    drop(vms);
    microvm(&h, &state, &["network", "remove", net]);
    let links = ok(&["ip", "-n", &h, "-o", "link"]);
    for t in [&tag, &tap2] {
        assert!(!links.contains(&format!(" {t}:")), "tap left: {links}");
    }
    assert_gone(&h, &state, net, br);
}

/// Under a real systemd the network is `microvm-network@NAME.service` (`host install`
/// wrote the template): `network create` enables and starts it (Type=notify: it returns
/// once dnsmasq runs), a killed dnsmasq is restarted by the supervisor, a killed
/// supervisor by systemd, a client gets a lease, the journal has dnsmasq's log, and
/// `network remove` stops and disables the unit and leaves no bridge or process.
#[test]
fn under_systemd_the_network_is_a_unit_that_comes_back_after_kill_9() {
    let test = "under_systemd_the_network_is_a_unit_that_comes_back_after_kill_9";
    if skip(test, &["systemd-nspawn", "nsenter"]) {
        return;
    }
    if !Path::new("/usr/lib/systemd/systemd").is_file() {
        eprintln!("SKIPPED {test}: /usr/lib/systemd/systemd is missing (systemd)");
        return;
    }
    let Some(ct) = Container::boot(
        &format!("n3nw-{}", std::process::id()),
        &[&workspace()],
        &[],
    ) else {
        panic!("{test}: the container did not boot");
    };
    let b = bin();
    let m = b.to_str().expect("utf-8");
    let state = "/var/lib/n3-microvms";
    ct.ok(&[m, "--state-dir", state, "host", "install"]);
    let unit = "microvm-network@n3sd.service";
    assert_eq!(ct.show(unit, "Type"), "notify");
    let created = ct.ok(&[
        m,
        "--state-dir",
        state,
        "network",
        "create",
        "n3sd",
        "--bridge",
        "n3br2",
        "--subnet",
        "10.187.0.1/24",
    ]);
    assert!(created.contains(unit), "{created}");
    assert_eq!(ct.show(unit, "ActiveState"), "active");
    assert_eq!(ct.show(unit, "UnitFileState"), "enabled");
    let list = |ct: &Container| -> serde_json::Value {
        let out = ct.ok(&[m, "--state-dir", state, "network", "list", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out).expect("json")[0].clone()
    };
    let s = list(&ct);
    assert_eq!(
        (s["dhcp"].as_str(), s["unit"].as_str()),
        (Some("running"), Some(unit))
    );
    let main = pid_of(&s, "supervisorPid");
    assert_eq!(
        ct.show(unit, "MainPID"),
        main.to_string(),
        "the unit runs the supervisor"
    );

    // kill -9 of dnsmasq: the supervisor restarts it (the unit stays up).
    let d1 = pid_of(&s, "dnsmasqPid");
    ct.ok(&["kill", "-9", &d1.to_string()]);
    wait_for(
        "dnsmasq back under the unit",
        Duration::from_secs(20),
        || list(&ct)["dnsmasqPid"].as_u64().is_some_and(|d| d != d1),
    );
    assert_eq!(ct.show(unit, "MainPID"), main.to_string());
    // kill -9 of the supervisor: systemd starts the unit again.
    ct.ok(&["kill", "-9", &main.to_string()]);
    wait_for(
        "systemd to restart the unit",
        Duration::from_secs(30),
        || {
            let s = list(&ct);
            // Active once the new supervisor said READY=1 (after dnsmasq runs).
            s["dhcp"] == "running"
                && s["supervisorPid"].as_u64().is_some_and(|p| p != main)
                && ct.show(unit, "ActiveState") == "active"
        },
    );
    assert_eq!(ct.show(unit, "NRestarts"), "1");

    let p = ct.prefix();
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    let ip = lease_for(&p, &p, "n3c1", "n3br2", "n3-sd-client");
    assert!(ip.starts_with("10.187.0."), "{ip}");
    let journal = ct.ok(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
    assert!(
        journal.contains(&format!("DHCPACK(n3br2) {ip}")),
        "dnsmasq logs to the journal:\n{journal}"
    );

    ct.ok(&[m, "--state-dir", state, "network", "remove", "n3sd"]);
    assert_eq!(ct.show(unit, "ActiveState"), "inactive");
    assert_eq!(ct.show(unit, "UnitFileState"), "disabled");
    let links = ct.ok(&["ip", "-o", "link"]);
    assert!(!links.contains("n3br2"), "bridge left: {links}");
    let procs = ct.ok(&["ps", "-eo", "comm"]);
    assert!(
        !procs.lines().any(|l| l.trim() == "dnsmasq"),
        "dnsmasq left: {procs}"
    );
}

/// A dnsmasq that the host refuses (here: another program holds the DHCP port) fails
/// `network create` at once with dnsmasq's reason, and leaves no supervisor behind.
#[test]
fn a_refused_dnsmasq_fails_create_with_its_reason_and_leaves_no_process() {
    let test = "a_refused_dnsmasq_fails_create_with_its_reason_and_leaves_no_process";
    if skip(test, &["socat"]) {
        return;
    }
    let tag = format!("n3r{}", std::process::id() % 100000);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let mut ns = Namespaces(Vec::new());
    let h = ns.add(format!("{tag}-h"));
    let mut squatter = Command::new("ip")
        .args([
            "netns",
            "exec",
            &h,
            "socat",
            "-u",
            "UDP4-RECV:67",
            "/dev/null",
        ])
        .env("PATH", path_var())
        .spawn()
        .expect("socat");
    wait_for("socat to bind port 67", Duration::from_secs(10), || {
        ok(&["ip", "netns", "exec", &h, "ss", "-uln"]).contains(":67 ")
    });
    let b = bin();
    let out = run(&[
        "ip",
        "netns",
        "exec",
        &h,
        b.to_str().expect("utf-8"),
        "--state-dir",
        state.to_str().expect("utf-8"),
        "network",
        "create",
        "n3r",
        "--subnet",
        "10.189.0.1/24",
    ]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "create succeeded");
    assert!(
        err.contains(
            "dnsmasq of network n3r did not start: dnsmasq: failed to bind DHCP server socket"
        ),
        "{err}"
    );
    let s = status(&h, &state, "n3r");
    assert_eq!(s["dhcp"], "stopped", "{s}");
    assert_eq!(
        ns_pids(&h),
        vec![u64::from(squatter.id())],
        "only socat runs"
    );
    let _ = squatter.kill();
    let _ = squatter.wait();
    microvm(&h, &state, &["network", "remove", "n3r"]);
    assert_gone(&h, &state, "n3r", "n3r");
}
