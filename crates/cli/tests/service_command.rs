//! A managed single-command VM (one with `command`): `restart` and `update --restart`
//! work, and a stop the host asked for is a clean stop (`stopped`, exit code 0) although
//! the guest's command dies of the SIGTERM its init sends at power-off (143).
//!
//! Prerequisites as in tests/service.rs (root, qemu, the cloud test kernel, busybox-static,
//! iproute2 with netns support): a missing one skips the test with a printed reason.

mod service_harness;

use std::fs;
use std::time::Instant;

use service_harness::*;

const COMMAND: &str =
    "command = [\"/bin/sh\", \"-c\", \"echo svc: command up; exec sleep 100000\"]\n";

fn supervisor_pid(vm: &Vm) -> u64 {
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "running", "{st}\n{}", vm.logs());
    st["status"]["supervisorPid"]
        .as_u64()
        .unwrap_or_else(|| panic!("supervisor pid in {st}"))
}

fn assert_clean_stop(vm: &Vm) {
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "stopped", "{st}\n{}", vm.logs());
    assert_eq!(st["status"]["exitCode"], 0, "{st}");
}

#[test]
fn command_vm_restarts_and_stops_cleanly() {
    let test = "command_vm_restarts_and_stops_cleanly";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::with_top(test, "svc-cmd", COMMAND, "");
    vm.start();
    let first = supervisor_pid(&vm);

    let t = Instant::now();
    let out = vm.microvm(&["restart", &vm.name]);
    assert!(out.status.success(), "restart failed\n{}", vm.logs());
    eprintln!("{test}: restart in {:.1} s", t.elapsed().as_secs_f64());
    let second = supervisor_pid(&vm);
    assert_ne!(first, second, "a new supervisor");
    assert!(!alive(first));

    // update --restart of a changed definition: rebuild, then stop + start.
    let def = vm.dir.path().join("vm.toml");
    fs::write(vm.vmdir().join("source"), def.to_string_lossy().as_bytes()).expect("source");
    let text = fs::read_to_string(&def).expect("vm.toml");
    fs::write(&def, text.replace("command up", "command up again")).expect("vm.toml");
    let t = Instant::now();
    let out = vm.microvm(&["update", &vm.name, "--restart"]);
    assert!(
        out.status.success(),
        "update --restart failed\n{}",
        vm.logs()
    );
    eprintln!(
        "{test}: update --restart in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let third = supervisor_pid(&vm);
    assert_ne!(second, third, "restarted by update");

    let out = vm.microvm(&["stop", &vm.name]);
    assert!(out.status.success(), "stop failed\n{}", vm.logs());
    assert_clean_stop(&vm);
    assert!(!alive(third));
    assert!(!vm.vmdir().join("booted").exists(), "booted cleared");
    assert!(no_process_mentions("microvm@svc-cmd"), "no process left");
}
