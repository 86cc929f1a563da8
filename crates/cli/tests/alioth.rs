//! The real alioth binary (`cargo install alioth-cli`, 0.12) under microvm's supervisor on
//! the console channel, as far as this host lets it go: microvm's alioth plan for a
//! built guest (real kernel and initrd), with the per-boot nonce on its command line and
//! a pty as its console (alioth wants a terminal). On a host whose KVM runs guests the
//! guest reports READY and EXIT over the console; on this CI host's nested KVM alioth
//! creates its devices and loads the kernel, the vCPU never runs, and the supervisor's
//! ready timeout ends the run (printed, not faked).

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::time::Duration;

use harness::{require, Env, Kernel, Need, Vm};
use microvm_host::supervise::{self, Console, RunError, RunOptions};
use microvm_runner::{Artifacts, ControlChannel, HostFacts, Invocation};
use microvm_spec::config::Config;
use microvm_spec::types::Hypervisor;

/// The value after `flag` in qemu's argv, and `file=` of the store drive.
fn qemu_artifacts(args: &[String]) -> Artifacts {
    let after = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no {flag} in {args:?}"))
    };
    let store = args
        .iter()
        .find(|a| a.starts_with("id=store,"))
        .and_then(|d| d.split(',').find_map(|kv| kv.strip_prefix("file=")))
        .map(PathBuf::from);
    let kernel = after("-kernel");
    Artifacts {
        kernel: kernel.clone(),
        vmlinux: Some(kernel),
        initrd: after("-initrd"),
        store_disk: store,
    }
}

/// The alioth binary on the test's PATH; `None` (the skip printed) when there is none.
fn alioth_on_path(test: &str, env: &Env) -> Option<PathBuf> {
    let found = std::env::split_paths(&env.path)
        .map(|d| d.join("alioth"))
        .find(|p| p.is_file());
    if found.is_none() {
        eprintln!("skipped: {test}: alioth is not on PATH (cargo install alioth-cli)");
    }
    found
}

/// Builds `vm` (for qemu, its definition's hypervisor) and plans the same guest, with the
/// kernel, initrd and store disk qemu was given, for alioth: its config and the plan.
fn alioth_plan(vm: &Vm) -> (Config, Invocation) {
    let (status, stdout, stderr, _) = vm.cli(&["build"]);
    assert!(status.success(), "{stderr}");
    let runner = PathBuf::from(stdout.lines().last().expect("runner").trim());
    let qemu: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(runner.join("share/microvm/invocation.json")).expect("json"),
    )
    .expect("invocation");
    let args: Vec<String> = serde_json::from_value(qemu["args"].clone()).expect("args");
    let mut config = microvm_spec::load::load_file(&vm.path("vm.toml"))
        .unwrap_or_else(|e| panic!("{}", e.render()))
        .config;
    config.hypervisor = Hypervisor::Alioth;
    let inv = microvm_runner::plan_for(
        Hypervisor::Alioth,
        &config,
        &qemu_artifacts(&args),
        &HostFacts::reference(),
    )
    .expect("alioth plan");
    (config, inv)
}

#[test]
fn alioth_runs_the_console_channel_plan_as_far_as_the_host_allows() {
    let test = "alioth_runs_the_console_channel_plan_as_far_as_the_host_allows";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    let Some(alioth) = alioth_on_path(test, &env) else {
        return;
    };
    eprintln!("{test}: using {}", alioth.display());
    let vm = Vm::new(
        &env,
        test,
        Kernel::Cloud,
        "command = ['/bin/sh', '-c', 'exit 5']",
        "",
    );
    let (_, mut inv) = alioth_plan(&vm);
    assert!(matches!(
        inv.control_channel,
        Some(ControlChannel::Console { .. })
    ));
    inv.program = alioth.display().to_string();
    inv.env.push(("RUST_LOG".into(), "info".into()));

    let mut opts = RunOptions::new(vm.path(""));
    opts.handle_signals = false;
    opts.console = Console::Log(vm.path("console.log"));
    opts.ready_timeout = Some(Duration::from_secs(30));
    opts.path_var = Some(env.path.clone());
    match supervise::run_foreground(&inv, &opts) {
        Ok(out) => {
            eprintln!("{test}: the guest ran under alioth (KVM works here)");
            assert_eq!(out.guest_exit, Some(5), "{out:?}");
            assert!(out.ready_after.is_some());
        }
        Err(RunError::NotReady { stderr_tail, .. }) => {
            eprintln!(
                "{test}: alioth created its devices and loaded the kernel; this host's KVM \
                 does not run guests, so no READY came (expected here)\n{stderr_tail}"
            );
            assert!(
                stderr_tail.contains("initramfs loaded"),
                "alioth did not get as far as loading the kernel:\n{stderr_tail}"
            );
        }
        Err(RunError::HypervisorFailed { stderr_tail, .. })
            if stderr_tail.contains("KVM") || stderr_tail.contains("kvm") =>
        {
            eprintln!(
                "{test}: alioth stopped at KVM (expected on hosts without it)\n{stderr_tail}"
            );
        }
        Err(e) => panic!("{e}"),
    }
}

/// Stopping alioth the way microvm does (its plan's shutdown: alioth 0.12 has no control
/// socket and no signal handler, so SIGTERM ends the process; there is no way to ask its
/// guest to power off). The real binary, running the plan: a stop request ends the run
/// well within the shutdown timeout, without SIGKILL.
#[test]
fn alioth_stops_on_request() {
    let test = "alioth_stops_on_request";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    let Some(alioth) = alioth_on_path(test, &env) else {
        return;
    };
    let vm = Vm::new(&env, test, Kernel::Cloud, "init = \"/sbin/init\"", "");
    let (_, mut inv) = alioth_plan(&vm);
    inv.program = alioth.display().to_string();
    inv.env.push(("RUST_LOG".into(), "info".into()));
    let mut opts = RunOptions::new(vm.path(""));
    opts.handle_signals = false;
    opts.console = Console::Log(vm.path("console.log"));
    opts.ready_timeout = None;
    opts.shutdown_timeout = Duration::from_secs(20);
    opts.path_var = Some(env.path.clone());
    let stop = opts.stop.clone();
    let log = vm.path("console.log");
    let waiter = std::thread::spawn(move || {
        let start = std::time::Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("initramfs loaded")
            && start.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        stop.request();
        std::time::Instant::now()
    });
    let result = supervise::run_foreground(&inv, &opts);
    let asked = waiter.join().expect("waiter");
    let took = asked.elapsed();
    let console = std::fs::read_to_string(vm.path("console.log")).unwrap_or_default();
    assert!(console.contains("initramfs loaded"), "{console}");
    eprintln!(
        "{test}: alioth ended {:.2} s after the stop request: {result:?}",
        took.as_secs_f64()
    );
    match result {
        Ok(out) => {
            assert!(out.shutdown_requested && !out.forced, "{out:?}");
        }
        Err(e) => panic!("{e}\n{console}"),
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
}

/// The generated `bin/microvm-run` of an alioth runner, executed: the script's argv
/// reaches the real alioth, which creates its devices and loads the kernel (then this
/// host's KVM stops it; the test ends it).
#[test]
fn alioth_microvm_run_script_starts_alioth() {
    let test = "alioth_microvm_run_script_starts_alioth";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    if alioth_on_path(test, &env).is_none() {
        return;
    }
    let vm = Vm::new(&env, test, Kernel::Cloud, "command = ['/bin/true']", "");
    let (config, inv) = alioth_plan(&vm);
    let pkg = vm.path("alioth-runner");
    microvm_runner::package::write(&pkg, &microvm_runner::package::files(&config, &inv))
        .expect("write the runner");
    let log = vm.path("script.log");
    // alioth wants a terminal on stdin: run the script under `script`.
    let mut child = std::process::Command::new("script")
        .args(["-qec"])
        .arg(format!("{}/bin/microvm-run", pkg.display()))
        .arg("/dev/null")
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&log).expect("log"))
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("script");
    let start = std::time::Instant::now();
    let mut text = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("initramfs loaded") || child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The whole process group: `script`, the script and alioth.
    let _ = std::process::Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.wait();
    assert!(
        text.contains("initramfs loaded"),
        "bin/microvm-run did not get alioth to load the kernel:\n{text}"
    );
}
