//! Autostart, both ways: `host apply` keeps the installed `microvms.target`'s wants in
//! step with `<state>/autostart`, and `microvm start --autostart` (what a host without
//! systemd runs at boot) starts every VM listed there.
//!
//! Prerequisites as in tests/service.rs (root, qemu, the cloud test kernel, busybox-static,
//! iproute2 with netns support): a missing one skips the test with a printed reason.

mod service_harness;

use std::fs;

use service_harness::*;

const COMMAND: &str =
    "command = [\"/bin/sh\", \"-c\", \"echo svc: command up; exec sleep 100000\"]\n";

fn apply(vm: &Vm, host: &std::path::Path, autostart: bool) {
    fs::write(
        host,
        format!(
            "[vms.{}]\ndefinition = \"vm.toml\"\nautostart = {autostart}\n",
            vm.name
        ),
    )
    .expect("host.toml");
    let out = vm.microvm(&["host", "apply", &host.to_string_lossy()]);
    assert!(out.status.success(), "host apply\n{}", vm.logs());
}

#[test]
fn apply_keeps_the_target_in_step_and_start_autostart_starts() {
    let test = "apply_keeps_the_target_in_step_and_start_autostart_starts";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::with_top(test, "svc-auto", COMMAND, "");
    let def = vm.dir.path().join("vm.toml");
    fs::write(vm.vmdir().join("source"), def.to_string_lossy().as_bytes()).expect("source");
    let units = vm.dir.path().join("units");
    let out = vm.microvm(&["host", "install", "--unit-dir", &units.to_string_lossy()]);
    assert!(out.status.success(), "host install");
    let target = units.join("microvms.target");
    assert!(!fs::read_to_string(&target)
        .expect("target")
        .contains("Wants="));

    let host = vm.dir.path().join("host.toml");
    apply(&vm, &host, true);
    let text = fs::read_to_string(&target).expect("target");
    assert!(text.contains("Wants=microvm@svc-auto.service"), "{text}");
    assert_eq!(
        fs::read_to_string(vm.state().join("autostart")).expect("autostart"),
        "svc-auto\n"
    );

    let out = vm.microvm(&["start", "--autostart"]);
    assert!(out.status.success(), "start --autostart\n{}", vm.logs());
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "running", "{st}");

    apply(&vm, &host, false);
    let text = fs::read_to_string(&target).expect("target");
    assert!(!text.contains("Wants="), "{text}");
    let out = vm.microvm(&["start", "--autostart"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && err.contains("no VM to autostart"),
        "{err}"
    );

    assert!(vm.microvm(&["stop", &vm.name]).status.success());
    assert_eq!(vm.status_json()["status"]["state"], "stopped");
}
