//! Refused starts (docs/host.md, "Refused starts"), with real VMs: two managed VMs on one
//! host share a volume image; the second's qemu cannot take the image's write lock, so its
//! start is refused once — `failed` with the lock as the reason, no restart, `supervise`
//! exits 78 even with `--restart always` — while the first keeps running.
//!
//! Prerequisites as tests/service.rs (root, qemu, microvm's kernel from
//! scripts/build-test-kernel.sh, busybox-static, iproute2 with netns support): a missing one skips the test with a printed reason, or
//! fails it when `CI` is set.

mod service_harness;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Instant;

use service_harness::*;

#[test]
fn service_image_locked_by_another_vm_is_refused_once() {
    let test = "service_image_locked_by_another_vm_is_refused_once";
    if require(test, false).is_none() {
        return;
    }
    let Some(kernel) = microvm_kernel(test) else {
        return;
    };
    let shared = tempfile::Builder::new()
        .prefix("refusal-shared-")
        .tempdir_in(work_dir())
        .expect("tempdir");
    fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = shared.path().join("shared.img");
    let volume = format!(
        "[[volumes]]\nimage = {image:?}\nmountPoint = \"/shared\"\nlabel = \"shared\"\nsize = 16\n"
    );
    let a = Vm::with_guest("rf-a", &kernel, root(), "", &volume);
    let b = Vm::with_guest("rf-b", &kernel, root(), "", &volume);
    a.start();
    let hv_a = a.run_record()["hypervisorPid"].as_u64().expect("pid of A");

    let out = b.microvm(&["start", "rf-b"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second writer started\n{}",
        b.logs()
    );
    assert!(
        err.contains("Failed to get \"write\" lock"),
        "the refusal names qemu's lock: {err}"
    );
    assert!(
        err.contains("rf-b did not start: qemu-system-x86_64 ended with")
            && err.contains("refused: a disk image is locked by another process"),
        "`start` gives the supervisor's reason: {err}"
    );
    let st = b.status_json();
    assert_eq!(st["status"]["state"], "failed", "{st}");
    let reason = st["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("lock")
            && reason.contains("refused: a disk image is locked by another process"),
        "{reason}"
    );
    assert!(!reason.contains("restarting"), "{reason}");
    assert_eq!(st["run"]["lastExit"]["refused"], "image-locked", "{st}");
    assert_eq!(st["run"]["attempt"], 1, "started once: {st}");
    let log = fs::read_to_string(b.vmdir().join("supervisor.log")).unwrap_or_default();
    assert!(
        log.contains("start refused (a disk image is locked by another process)"),
        "{log}"
    );
    assert!(
        !log.contains("restarting"),
        "no restart was scheduled:\n{log}"
    );

    // What systemd's unit runs, with the most eager policy: it ends by itself, with the
    // status its RestartPreventExitStatus= names, after one start. `timeout` only guards.
    let t = Instant::now();
    let out = Command::new("timeout")
        .args(["300", "ip", "netns", "exec", &b.netns])
        .arg(bin())
        .arg("--state-dir")
        .arg(b.state())
        .args(["supervise", "rf-b", "--restart", "always"])
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .output()
        .expect("supervise");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("supervise --restart always → {}\n{text}", out.status);
    assert_eq!(out.status.code(), Some(78), "{text}\n{}", b.logs());
    assert!(!text.contains("restarting"), "{text}");
    assert_eq!(b.run_record()["attempt"], 1, "{}", b.logs());
    eprintln!(
        "{test}: supervise refused and ended in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // The first writer never noticed.
    assert_eq!(a.status_json()["status"]["state"], "running");
    assert_eq!(a.run_record()["hypervisorPid"].as_u64(), Some(hv_a));
    assert!(alive(hv_a), "A's hypervisor runs on\n{}", a.logs());
    assert!(a.microvm(&["stop", "rf-a"]).status.success());
}

/// A tap name taken by a link microvm did not create (a bridge the test makes in the VM's
/// namespace): the start is refused before the hypervisor runs, the link is left alone.
#[test]
fn service_tap_name_taken_is_refused_once() {
    let test = "service_tap_name_taken_is_refused_once";
    if require(test, false).is_none() {
        return;
    }
    let Some(kernel) = microvm_kernel(test) else {
        return;
    };
    let tables = tap_tables("rf-tap0", "02:00:00:00:5f:01", "10.77.9.2");
    let vm = Vm::with_guest("rf-t", &kernel, root(), "", &tables);
    assert!(
        sh(&["ip", "-n", &vm.netns, "link", "add", "rf-tap0", "type", "bridge"])
            .status
            .success()
    );
    let out = vm.microvm(&["start", "rf-t"]);
    assert!(
        !out.status.success(),
        "started over a foreign link\n{}",
        vm.logs()
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rf-t did not start: interface rf-tap0 already exists"),
        "{err}"
    );
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "failed", "{st}");
    assert_eq!(st["run"]["lastExit"]["refused"], "interface-taken", "{st}");
    assert_eq!(st["run"]["attempt"], 1, "{st}");
    let reason = st["status"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("microvm did not create it")
            && reason.contains("refused: an interface is not the VM's"),
        "{reason}"
    );
    let log = fs::read_to_string(vm.vmdir().join("supervisor.log")).unwrap_or_default();
    assert!(!log.contains("restarting"), "{log}");
    assert!(
        vm.links().contains("rf-tap0"),
        "the foreign link is kept: {}",
        vm.links()
    );
}

/// `current` names a directory that is no runner (its build was removed by hand): the
/// supervisor refuses before it writes any state, and exits 78 even with `--restart always`.
#[test]
fn supervise_refuses_an_unusable_runner() {
    let test = "supervise_refuses_an_unusable_runner";
    if require(test, false).is_none() {
        return;
    }
    let Some(kernel) = microvm_kernel(test) else {
        return;
    };
    let vm = Vm::with_guest("rf-r", &kernel, root(), "", "");
    let empty = vm.dir.path().join("not-a-runner");
    fs::create_dir_all(empty.join("share/microvm")).expect("mkdir");
    let current = vm.vmdir().join("current");
    fs::remove_file(&current).expect("current");
    std::os::unix::fs::symlink(&empty, &current).expect("current");
    let out = Command::new("timeout")
        .args(["120"])
        .arg(bin())
        .arg("--state-dir")
        .arg(vm.state())
        .args(["supervise", "rf-r", "--restart", "always"])
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .output()
        .expect("supervise");
    let text = String::from_utf8_lossy(&out.stderr);
    eprintln!("supervise → {}\n{text}", out.status);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains("invocation.json")
            && text.contains("start refused (the runner is not usable)"),
        "{text}"
    );
    assert!(!text.contains("restarting"), "{text}");
}
