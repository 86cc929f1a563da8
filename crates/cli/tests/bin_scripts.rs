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
