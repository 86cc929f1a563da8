//! The generated units under a real systemd: a container whose PID 1 is systemd
//! (`systemd-nspawn -D / --volatile=yes -b`: the host's own /usr, an empty /etc and /var
//! on a tmpfs, the workspace bound at the same path, a private network), so it runs the
//! same on hosts with and without systemd as PID 1 and changes nothing on the host.
//! Inside it, `microvm host install` writes the units and creates the user;
//! `systemctl start microvm@NAME` returns only once the guest is ready (`Type=notify`,
//! the supervisor's `READY=1`), `systemctl stop` shuts the guest down gracefully (its
//! shutdown marker is on its volume), `host apply` keeps `microvms.target`'s wants in
//! step and starting the target starts the VM, and the journal has the supervisor's log.
//! The VM has `registerWithMachined`: while it runs, the container's systemd-machined
//! knows it (class `vm`, the hypervisor as leader, the unit), a stop unregisters it, and
//! `machinectl terminate` stops the unit.
//! A start refused for a reason waiting cannot change (a foreign link holds the tap's name)
//! fails the unit once: `RestartPreventExitStatus=78` keeps `Restart=` from retrying it.
//!
//! Prerequisites: those of tests/service.rs plus systemd-nspawn (systemd-container) and
//! nsenter (util-linux); a missing one skips the test with a printed reason.

#[allow(dead_code)] // each test binary uses a part
#[path = "common/container.rs"]
mod container;
mod service_harness;

use std::path::Path;
use std::time::Duration;

use container::Container;
use service_harness::*;

/// `machinectl show NAME` (the container's systemd-machined) as a map; `None` when
/// machined knows no such machine.
fn machined_show(ct: &Container, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
    let out = ct.exec(&["machinectl", "show", name]);
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    })
}

/// Whether the prerequisites of tests/service.rs and a container are here; else the
/// skip is printed.
fn ready(test: &str) -> bool {
    if require(test, false).is_none() {
        return false;
    }
    let absent: Vec<&str> = ["systemd-nspawn", "nsenter"]
        .into_iter()
        .filter(|p| find(p).is_none())
        .collect();
    if !absent.is_empty() || !Path::new("/usr/lib/systemd/systemd").is_file() {
        eprintln!("SKIPPED {test}: missing {absent:?} or /usr/lib/systemd/systemd (systemd-container, util-linux)");
        return false;
    }
    true
}

#[test]
fn systemd_units_start_notify_stop_and_log() {
    let test = "systemd_units_start_notify_stop_and_log";
    if !ready(test) {
        return;
    }
    let vm = Vm::with_top(test, "svc-sd", "registerWithMachined = true", "");
    let state = vm.state();
    let state = state.to_string_lossy();
    // The workspace, and the test kernels where they live (links may leave the workspace).
    let kernels = kernel().canonicalize().expect("kernel");
    let kernels = kernels.parent().expect("kernel dir");
    let name = format!("mvt-{}", std::process::id());
    let Some(ct) = Container::boot(&name, &[&workspace(), kernels], &["--bind=/dev/net/tun"])
    else {
        panic!("{test}: the container did not boot");
    };
    let microvm = bin().to_string_lossy().into_owned();
    let out = ct.exec(&[&microvm, "--state-dir", &state, "host", "install"]);
    assert!(out.status.success(), "host install in the container");
    let unit = "microvm@svc-sd.service";
    let status = || -> serde_json::Value {
        let st = ct.exec(&[
            &microvm,
            "--state-dir",
            &state,
            "status",
            "svc-sd",
            "--json",
        ]);
        serde_json::from_slice(&st.stdout).expect("status json")
    };
    assert_eq!(ct.show(unit, "Type"), "notify");

    // `host apply` keeps microvms.target's wants in step (and reloads systemd).
    let def = vm.dir.path().join("vm.toml");
    std::fs::write(vm.vmdir().join("source"), def.to_string_lossy().as_bytes()).expect("source");
    let host = vm.dir.path().join("host.toml");
    std::fs::write(&host, "[vms.svc-sd]\ndefinition = \"vm.toml\"\n").expect("host.toml");
    let host = host.to_string_lossy();
    let out = ct.exec(&[&microvm, "--state-dir", &state, "host", "apply", &host]);
    assert!(out.status.success(), "host apply in the container");
    assert!(
        ct.show("microvms.target", "Wants").contains(unit),
        "the target wants the VM"
    );

    // Type=notify: `systemctl start` returns once the supervisor said READY=1.
    let out = ct.exec(&["systemctl", "start", unit]);
    assert!(out.status.success(), "systemctl start\n{}", vm.logs());
    assert_eq!(ct.show(unit, "ActiveState"), "active");
    let st = status();
    assert_eq!(st["status"]["state"], "running", "{st}");
    assert_eq!(
        ct.show(unit, "MainPID"),
        st["status"]["supervisorPid"].to_string(),
        "the unit's main process is the supervisor"
    );
    // registerWithMachined: the supervisor registered the hypervisor with machined.
    let machine =
        machined_show(&ct, "svc-sd").unwrap_or_else(|| panic!("not in machined\n{}", vm.logs()));
    assert_eq!(
        machine.get("Class").map(String::as_str),
        Some("vm"),
        "{machine:?}"
    );
    assert_eq!(
        machine.get("Service").map(String::as_str),
        Some("microvm"),
        "{machine:?}"
    );
    assert_eq!(
        machine.get("Leader"),
        Some(&st["status"]["hypervisorPid"].to_string()),
        "the leader is the hypervisor: {machine:?} {st}"
    );
    // The UUID is the machineId, derived from the name as microvm.nix does.
    let digest = <sha2::Sha256 as sha2::Digest>::digest("microvm.nix:svc-sd");
    let id: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    assert_eq!(machine.get("Id"), Some(&id), "{machine:?}");
    assert_eq!(
        machine.get("Unit").map(String::as_str),
        Some(unit),
        "{machine:?}"
    );
    assert!(
        wait_for("the guest's boot marker", Duration::from_secs(60), || vm
            .volume_file("/boots")
            .is_some()),
        "{}",
        vm.logs()
    );

    let out = ct.exec(&["systemctl", "stop", unit]);
    assert!(out.status.success(), "systemctl stop");
    assert_eq!(ct.show(unit, "ActiveState"), "inactive");
    assert_eq!(
        vm.volume_file("/shutdown").as_deref(),
        Some("clean"),
        "graceful stop\n{}",
        vm.logs()
    );
    let st = status();
    assert_eq!(st["status"]["state"], "stopped", "{st}");
    assert!(
        machined_show(&ct, "svc-sd").is_none(),
        "unregistered on stop"
    );

    // The target starts what it wants (what the boot does once it is enabled).
    let out = ct.exec(&["systemctl", "start", "microvms.target"]);
    assert!(out.status.success(), "systemctl start microvms.target");
    assert!(
        wait_for(
            "the target to start the VM",
            Duration::from_secs(150),
            || { ct.show(unit, "ActiveState") == "active" }
        ),
        "{}",
        vm.logs()
    );
    // `machinectl terminate` stops the VM's unit.
    assert!(machined_show(&ct, "svc-sd").is_some(), "registered again");
    let out = ct.exec(&["machinectl", "terminate", "svc-sd"]);
    assert!(out.status.success(), "machinectl terminate");
    assert!(
        wait_for(
            "terminate to stop the unit",
            Duration::from_secs(90),
            || { ct.show(unit, "ActiveState") == "inactive" }
        ),
        "{}",
        vm.logs()
    );
    assert!(
        machined_show(&ct, "svc-sd").is_none(),
        "unregistered on terminate"
    );

    let journal = ct.exec(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains("ready")
            && journal.contains("ended: stopped on request")
            && journal.contains("registered with systemd-machined")
            && !journal.contains("warning"),
        "journal: {journal}"
    );
}

/// A refused start under systemd (docs/host.md, "Refused starts"): the tap name is taken
/// by a link microvm did not create, so `supervise` exits 78 and the unit's
/// `RestartPreventExitStatus=78` keeps `Restart=on-failure` from starting it again.
#[test]
fn systemd_refused_start_is_not_restarted() {
    let test = "systemd_refused_start_is_not_restarted";
    if !ready(test) {
        return;
    }
    let tables = tap_tables("rf-sd0", "02:00:00:00:5f:02", "10.77.8.2");
    let vm = Vm::with_top(test, "rf-sd", "", &tables);
    let state = vm.state();
    let state = state.to_string_lossy();
    let name = format!("mvt-rf-{}", std::process::id());
    let Some(ct) = Container::boot(&name, &[&workspace()], &["--bind=/dev/net/tun"]) else {
        panic!("{test}: the container did not boot");
    };
    let microvm = bin().to_string_lossy().into_owned();
    let out = ct.exec(&[&microvm, "--state-dir", &state, "host", "install"]);
    assert!(out.status.success(), "host install in the container");
    let foreign = ct.exec(&["ip", "link", "add", "rf-sd0", "type", "bridge"]);
    assert!(foreign.status.success(), "a foreign link in the container");
    let unit = "microvm@rf-sd.service";
    assert_eq!(ct.show(unit, "RestartPreventExitStatus"), "78");
    let out = ct.exec(&["systemctl", "start", unit]);
    assert!(
        !out.status.success(),
        "started over a foreign link\n{}",
        vm.logs()
    );
    // Past RestartSec=5s: a restart would have happened by now.
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(ct.show(unit, "ActiveState"), "failed", "{}", vm.logs());
    assert_eq!(ct.show(unit, "ExecMainStatus"), "78");
    assert_eq!(ct.show(unit, "NRestarts"), "0", "not restarted");
    let journal = ct.exec(&["journalctl", "-u", unit, "--no-pager", "-o", "cat"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains("start refused (an interface is not the VM's)"),
        "journal: {journal}"
    );
}
