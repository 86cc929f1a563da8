//! `microvm create --runner DIR` of a runner laid out as microvm.nix builds it (no
//! `invocation.json` nor `config.json`; `bin/` entries are symlinks to separate scripts
//! named `microvm-<hostName>-<script>`, inventory §2.0) starts under the supervisor:
//! `bin/tap-up` creates its tap, `bin/microvm-run` runs as the `microvm` user (and creates
//! its volume itself), `stop` goes through `bin/microvm-shutdown` (graceful: the guest's
//! shutdown marker is on its volume), `shutdown` runs it as well, and `bin/tap-down`
//! removes the tap.
//!
//! The runner's scripts are microvm's own, moved into that layout (the machine has no
//! Nix store with a microvm.nix runner). Prerequisites as in tests/service.rs.

mod service_harness;

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use service_harness::*;

/// Copies the runner `from` into `to` in microvm.nix's layout.
fn nix_layout(from: &Path, to: &Path, host: &str) {
    let ok = Command::new("cp")
        .args(["-a", "--no-dereference"])
        .arg(from)
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "copying the runner");
    for f in ["invocation.json", "config.json"] {
        fs::remove_file(to.join("share/microvm").join(f)).expect("rm");
    }
    let scripts = to.with_extension("scripts");
    fs::create_dir_all(&scripts).expect("mkdir");
    for e in fs::read_dir(to.join("bin")).expect("bin").flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let target = scripts.join(format!("microvm-{host}-{name}"));
        fs::rename(e.path(), &target).expect("move script");
        std::os::unix::fs::symlink(&target, e.path()).expect("link script");
    }
}

#[test]
fn adopted_nix_layout_runner_starts_and_stops_gracefully() {
    let test = "adopted_nix_layout_runner_starts_and_stops_gracefully";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::new(
        test,
        "svc-adopt",
        &tap_tables("vm-svcad", "02:00:00:00:5d:01", "10.77.4.2"),
    );
    let built = fs::read_link(vm.vmdir().join("current")).expect("current");
    let runner = vm.dir.path().join("microvm-qemu-svc-adopt");
    nix_layout(&built, &runner, "svc-adopt");
    assert!(runner.join("bin/tap-up").is_symlink());
    fs::remove_file(vm.vmdir().join("current")).expect("rm current");
    let out = vm.microvm(&["create", "svc-adopt", "--runner", &runner.to_string_lossy()]);
    assert!(out.status.success(), "create --runner");

    vm.start();
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "running", "{st}\n{}", vm.logs());
    let hv = vm.run_record()["hypervisorPid"].as_u64().expect("pid");
    assert_eq!(uid_of(hv), Some(microvm_uid()), "microvm-run as microvm");
    assert!(
        vm.links().contains("vm-svcad"),
        "tap-up ran: {}",
        vm.links()
    );
    assert!(
        wait_for("the guest to be up", Duration::from_secs(90), || {
            vm.volume_file("/boots").is_some()
        }),
        "{}",
        vm.logs()
    );

    // `shutdown` runs bin/microvm-shutdown too, and the VM ends for good.
    let out = vm.microvm(&["shutdown", "svc-adopt"]);
    assert!(out.status.success(), "shutdown\n{}", vm.logs());
    assert_eq!(vm.status_json()["status"]["state"], "stopped");
    assert_eq!(vm.volume_file("/shutdown").as_deref(), Some("clean"));
    assert!(!alive(hv));
    fs::remove_file(vm.vmdir().join("data.img")).expect("a fresh volume");

    vm.start();
    let hv = vm.run_record()["hypervisorPid"].as_u64().expect("pid");
    assert!(
        wait_for("the guest to be up again", Duration::from_secs(90), || {
            vm.volume_file("/boots").is_some()
        }),
        "{}",
        vm.logs()
    );
    let out = vm.microvm(&["stop", "svc-adopt"]);
    assert!(out.status.success(), "stop\n{}", vm.logs());
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "stopped", "{st}\n{}", vm.logs());
    assert_eq!(
        vm.volume_file("/shutdown").as_deref(),
        Some("clean"),
        "graceful through microvm-shutdown\n{}",
        vm.logs()
    );
    assert!(vm.logs().contains("microvm-shutdown"), "{}", vm.logs());
    assert!(
        !vm.links().contains("vm-svcad"),
        "tap-down ran: {}",
        vm.links()
    );
    assert!(!alive(hv));
    assert!(no_process_mentions("microvm@svc-adopt"), "no process left");
}
