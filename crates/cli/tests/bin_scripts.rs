//! The generated runner scripts, executed for real: `bin/microvm-run` boots the busybox
//! guest under qemu (TCG) without microvm's supervisor, and `bin/microvm-shutdown` powers
//! it off gracefully (QMP `system_powerdown` → ACPI power button → busybox init's
//! `::shutdown:` actions) and returns only once qemu is gone.

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{require, Kernel, Need, Slot, Vm, OUTPUT_VOLUME};

/// `microvm build`: the runner directory it prints.
fn build(vm: &Vm) -> PathBuf {
    let (status, stdout, stderr, _) = vm.cli(&["build"]);
    assert!(status.success(), "build failed:\n{stderr}");
    PathBuf::from(stdout.lines().last().expect("runner path").trim())
}

#[test]
fn microvm_run_and_microvm_shutdown_drive_qemu() {
    let test = "microvm_run_and_microvm_shutdown_drive_qemu";
    let Some(env) = require(test, &[Need::CloudKernel, Need::Debugfs]) else {
        return;
    };
    let vm = Vm::new(
        &env,
        test,
        Kernel::Cloud,
        "init = \"/sbin/init\"",
        OUTPUT_VOLUME,
    );
    let runner = build(&vm);
    let run = runner.join("bin/microvm-run");
    let shutdown = runner.join("bin/microvm-shutdown");
    assert!(run.is_file() && shutdown.is_file(), "{}", runner.display());

    let _slot = Slot::acquire();
    let console = vm.path("script-console.log");
    let mut child = Command::new(&run)
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&console).expect("console"))
        .stderr(fs::File::create(vm.path("script-stderr.log")).expect("stderr"))
        .spawn()
        .expect("bin/microvm-run");
    let logs = || {
        format!(
            "console:\n{}\nstderr:\n{}",
            fs::read_to_string(&console).unwrap_or_default(),
            fs::read_to_string(vm.path("script-stderr.log")).unwrap_or_default()
        )
    };
    let start = Instant::now();
    while !fs::read_to_string(&console)
        .unwrap_or_default()
        .contains("e2e: guest up")
    {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!("bin/microvm-run ended early ({status}):\n{}", logs());
        }
        if start.elapsed() > harness::RUN_DEADLINE {
            let _ = child.kill();
            panic!("the guest did not come up:\n{}", logs());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let sent = Instant::now();
    let out = Command::new("timeout")
        .arg("60")
        .arg(&shutdown)
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .stdin(Stdio::null())
        .output()
        .expect("bin/microvm-shutdown");
    assert!(
        out.status.success(),
        "bin/microvm-shutdown: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    // It returns once qemu no longer answers: qemu is gone (or going) by then.
    let mut status = None;
    for _ in 0..50 {
        status = child.try_wait().expect("wait");
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let Some(status) = status else {
        let _ = child.kill();
        panic!(
            "qemu still runs after bin/microvm-shutdown returned:\n{}",
            logs()
        );
    };
    eprintln!(
        "{test}: qemu exited ({status}) {:.1} s after bin/microvm-shutdown started",
        sent.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{status}\n{}", logs());
    let outcome_logs = logs();
    let text = vm
        .volume_file("output.img", "/shutdown")
        .unwrap_or_default();
    assert_eq!(text.trim(), "clean shutdown", "{outcome_logs}");
}

/// `bin/microvm-run` by hand, with nobody on the host end of the control channel: the
/// guest's init says so and goes on (it used to wait 5 s for each of READY and EXIT), the
/// command runs and the VM powers off with its status.
#[test]
fn microvm_run_by_hand_does_not_wait_for_a_supervisor() {
    let test = "microvm_run_by_hand_does_not_wait_for_a_supervisor";
    let Some(env) = require(test, &[Need::MicrovmKernel]) else {
        return;
    };
    let vm = Vm::new(
        &env,
        test,
        Kernel::Microvm,
        "command = [\"/bin/sh\", \"-c\", \"echo by-hand: $((6 * 7)); dmesg | grep 'APIC: qemu TCG'\"]",
        "",
    );
    let runner = build(&vm);
    let _slot = Slot::acquire();
    let console = vm.path("console.log");
    let start = Instant::now();
    let mut child = Command::new(runner.join("bin/microvm-run"))
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&console).expect("console"))
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bin/microvm-run");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > harness::RUN_DEADLINE {
            let _ = child.kill();
            panic!(
                "bin/microvm-run did not end:\n{}",
                fs::read_to_string(&console).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = fs::read_to_string(&console).unwrap_or_default();
    eprintln!(
        "{test}: bin/microvm-run ended ({status}) {:.2} s after spawn",
        start.elapsed().as_secs_f64()
    );
    assert!(status.success(), "{status}\n{text}");
    assert!(text.contains("by-hand: 42"), "{text}");
    assert!(text.contains("microvm-init: ready at"), "{text}");
    assert!(
        text.contains("nobody is on the host end of the control channel"),
        "{text}"
    );
    assert_eq!(
        text.matches("nobody is on the host end").count(),
        1,
        "{text}"
    );
    // Under TCG microvm's kernel patch skips the APIC timer's calibration.
    let invocation =
        fs::read_to_string(runner.join("share/microvm/invocation.json")).expect("invocation.json");
    if invocation.contains("accel=tcg") {
        assert!(
            text.contains("local APIC timer at 1 GHz, not calibrated"),
            "{text}"
        );
    } else {
        eprintln!("{test}: not under TCG, the APIC timer patch is not exercised");
    }
}

/// Runs `script` (a runner's bin/ script) with `args`, in `dir`, inside network namespace
/// `ns` when given; returns (success, stdout + stderr).
fn sh(
    script: &std::path::Path,
    args: &[&str],
    dir: &std::path::Path,
    ns: Option<&str>,
) -> (bool, String) {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(script);
            c
        }
        None => Command::new(script),
    };
    let out = c
        .args(args)
        .current_dir(dir)
        .env("MICROVM_USER", "root")
        .env("MICROVM_GROUP", "root")
        .stdin(Stdio::null())
        .output()
        .expect("run script");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A network namespace for this test, removed when dropped.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Option<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "delete", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Netns(name))
    }
    fn ip(&self, args: &[&str]) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.0, "ip"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

/// tap-up/tap-down and macvtap-up/macvtap-down inside a namespace of the test's own (the
/// macvtap on a veth link there), virtiofsd-run with the real virtiofsd, pci-setup's
/// refusal of a device that does not exist.
#[test]
fn interface_share_and_pci_scripts_run() {
    let test = "interface_share_and_pci_scripts_run";
    let Some(env) = require(test, &[Need::CloudKernel, Need::Virtiofsd]) else {
        return;
    };
    // Its own name: another checkout's run of this test may be at the same place.
    let Some(ns) = Netns::new(format!("i9b-scripts-{}", std::process::id())) else {
        eprintln!("skipped: {test}: cannot create a network namespace here");
        return;
    };
    // A veth end as the macvtap's lower link (this kernel has no dummy module).
    assert!(ns.ip(&["link", "add", "i9b-low", "type", "veth", "peer", "name", "i9b-peer"]));
    let top = format!(
        "virtiofsd.group = \"{}\"\n[[devices]]\nbus = \"pci\"\npath = \"0000:7f:1f.7\"\n",
        harness::primary_group()
    );
    let tables = "[[interfaces]]\ntype = \"tap\"\nid = \"i9b-tap0\"\nmac = \"02:00:00:00:09:01\"\n\
        [[interfaces]]\ntype = \"macvtap\"\nid = \"i9b-mvt0\"\nmac = \"02:00:00:00:09:02\"\n\
        macvtap = { link = \"i9b-low\", mode = \"bridge\" }\n\
        [[shares]]\nproto = \"virtiofs\"\ntag = \"s\"\nsource = \"share\"\nmountPoint = \"/s\"\n";
    let vm = Vm::new(&env, test, Kernel::Cloud, &top, tables);
    fs::create_dir(vm.path("share")).expect("share/");
    let runner = build(&vm);
    let bin = |n: &str| runner.join("bin").join(n);
    let dir = vm.path("");

    let (ok, out) = sh(&bin("tap-up"), &[], &dir, Some(&ns.0));
    assert!(ok && ns.ip(&["link", "show", "i9b-tap0"]), "tap-up: {out}");
    let (ok, out) = sh(&bin("tap-down"), &[], &dir, Some(&ns.0));
    assert!(
        ok && !ns.ip(&["link", "show", "i9b-tap0"]),
        "tap-down: {out}"
    );

    let (ok, out) = sh(&bin("macvtap-up"), &[], &dir, Some(&ns.0));
    assert!(ok, "macvtap-up: {out}");
    assert!(
        ns.ip(&["link", "show", "i9b-mvt0"]),
        "no macvtap after macvtap-up"
    );
    let (ok, out) = sh(&bin("macvtap-up"), &[], &dir, Some(&ns.0));
    assert!(ok, "macvtap-up again (replaces the link): {out}");
    let (ok, out) = sh(&bin("macvtap-down"), &[], &dir, Some(&ns.0));
    assert!(
        ok && !ns.ip(&["link", "show", "i9b-mvt0"]),
        "macvtap-down: {out}"
    );

    // pci-setup: this host has no such device (and no IOMMU); it must say so and fail.
    let (ok, out) = sh(&bin("pci-setup"), &[], &dir, None);
    assert!(
        !ok && out.contains("no PCI device 0000:7f:1f.7"),
        "pci-setup: {out}"
    );

    let mut vfs = Command::new(bin("virtiofsd-run"))
        .current_dir(&dir)
        .env("PATH", &env.path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(vm.path("virtiofsd.log")).expect("log"))
        .spawn()
        .expect("virtiofsd-run");
    let sock = fs::read_to_string(runner.join("share/microvm/virtiofs/s/socket")).expect("socket");
    let sock = vm.path(sock.trim());
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = fs::read_to_string(vm.path("virtiofsd.log")).unwrap_or_default();
    assert!(
        sock.exists(),
        "virtiofsd-run made no socket {}: {log}",
        sock.display()
    );
    let _ = Command::new("kill").arg(vfs.id().to_string()).status();
    let status = vfs.wait().expect("wait");
    // Its virtiofsd went with it: nobody serves the socket any more.
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(&sock).is_ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "virtiofsd outlived virtiofsd-run"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "{test}: virtiofsd-run served {} and ended ({status}) on SIGTERM",
        sock.display()
    );
}

/// bin/microvm-balloon against a real qemu: the balloon size is set over QMP and the
/// size qemu reports comes back (0 until the guest's driver acts; the test guest loads
/// no balloon driver).
#[test]
fn microvm_balloon_talks_to_qemu() {
    let test = "microvm_balloon_talks_to_qemu";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    let top = "balloon = true\ninit = \"/sbin/init\"";
    let vm = Vm::new(&env, test, Kernel::Cloud, top, OUTPUT_VOLUME);
    let runner = build(&vm);
    let _slot = Slot::acquire();
    let mut running = vm.spawn();
    running.wait_for("ready line", harness::RUN_DEADLINE, |stderr, _| {
        stderr.contains(": ready ")
    });
    let (ok, out) = sh(
        &runner.join("bin/microvm-balloon"),
        &["64"],
        &vm.path(""),
        None,
    );
    assert!(ok, "microvm-balloon 64: {out}");
    let size: f64 = out
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a size: {out:?}"));
    assert!((0.0..=64.0).contains(&size), "{size}");
    let (ok, out) = sh(
        &runner.join("bin/microvm-balloon"),
        &["4096"],
        &vm.path(""),
        None,
    );
    assert!(
        !ok && out.contains("not below"),
        "a balloon larger than the VM: {out}"
    );
    let (ok, out) = sh(
        &runner.join("bin/microvm-balloon"),
        &["x"],
        &vm.path(""),
        None,
    );
    assert!(!ok && out.contains("usage"), "{out}");
    running.signal("TERM");
    running.wait(Duration::from_secs(60)).assert_code(0);
}
