//! Real alioth 0.12 (`cargo install alioth-cli`, scripts/install-alioth.sh): every fixture's
//! alioth plan, with real artifacts, virtiofsd helpers and taps (in a network namespace of
//! the test's own), is run as far as it goes on this host. alioth parses the arguments,
//! creates every device, loads the kernel and initramfs, and stops at its vCPUs where KVM
//! cannot run guests. The devices it reports must be the ones the plan asks for.
//!
//! The same exceptions as the qemu test apply, each printed (vhost-vsock, macvtap, …).
//! Without `/dev/kvm` alioth stops before it creates devices: then only that it accepts the
//! arguments is checked, and the test says so. alioth's console needs a terminal, so it
//! runs under `script(1)`.

mod common;

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    adapt_to_host, fixtures, load_fixture, make_image, start_helpers, stem, test_kernel, Netns,
};
use microvm_runner::quote::shell_join;
use microvm_runner::{detect, plan_for, Artifacts, HostFacts, Invocation};
use microvm_spec::config::Config;
use microvm_spec::types::Hypervisor;

/// The device names alioth 0.12 logs (`device: <name>`) for `config`, sorted.
fn expected_devices(config: &Config) -> Vec<String> {
    let mut out = vec!["virtio-entropy".to_owned()];
    let disks = usize::from(config.store_on_disk) + config.volumes.len();
    out.extend((0..disks).map(|i| format!("virtio-blk-{i}")));
    out.extend((0..config.shares.len()).map(|i| format!("vu-fs-{i}")));
    out.extend((0..config.interfaces.len()).map(|i| format!("virtio-net-{i}")));
    if config.balloon {
        out.push("virtio-balloon".into());
    }
    out.sort();
    out
}

/// Runs the plan under `script` until alioth exits, or until it has loaded the kernel
/// (then it is stopped: with several vCPUs on a KVM that cannot run guests, alioth 0.12
/// sometimes hangs while stopping them). Returns its log, colours removed.
fn run(inv: &Invocation, program: &Path, work: &Path, netns: &Netns) -> Result<String, String> {
    let mut argv = vec!["-l".to_owned(), "info".to_owned()];
    argv.extend(inv.args.iter().cloned());
    let line = shell_join(&program.display().to_string(), &argv);
    let out_file = work.join("alioth.out");
    let mut child = netns
        .command("script")
        .args(["-q", "-f", "-e", "-c", &line])
        .arg(&out_file)
        .current_dir(work)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start script(1): {e}"))?;
    let log = || strip_colours(&std::fs::read_to_string(&out_file).unwrap_or_default());
    let start = Instant::now();
    let mut loaded_at = None;
    let outcome = loop {
        if matches!(child.try_wait(), Ok(Some(_))) {
            break Ok(());
        }
        if loaded_at.is_none() && log().contains("initramfs loaded") {
            loaded_at = Some(Instant::now());
        }
        match loaded_at {
            Some(t) if t.elapsed() > Duration::from_secs(5) => break Ok(()),
            None if start.elapsed() > Duration::from_secs(90) => {
                break Err("alioth neither exited nor loaded the kernel within 90 s".to_owned())
            }
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    if matches!(child.try_wait(), Ok(None)) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", child.id())])
            .status();
    }
    let _ = child.wait();
    outcome.map(|()| log())
}

fn strip_colours(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn reported_devices(log: &str) -> Vec<String> {
    let mut out: Vec<String> = log
        .lines()
        .filter_map(|l| l.split_once("device: ").map(|(_, d)| d.trim().to_owned()))
        .collect();
    out.sort();
    out
}

#[test]
fn every_fixture_runs_under_real_alioth() {
    if !common::is_root() {
        eprintln!("skipped: needs root (network namespaces and taps)");
        return;
    }
    let Some(kernel) = test_kernel() else {
        eprintln!(
            "skipped: MICROVM_TEST_KERNELS has no kernel package (scripts/fetch-test-kernels.sh)"
        );
        return;
    };
    let probe = load_fixture(&fixtures()[0]);
    let detection = detect::detect(Hypervisor::Alioth, &probe, None);
    let detect::Detection::Detected { program, .. } = &detection else {
        eprintln!(
            "skipped: {} (scripts/install-alioth.sh installs it)",
            detection.describe(Hypervisor::Alioth)
        );
        return;
    };
    eprintln!("{}", detection.describe(Hypervisor::Alioth));
    let kvm = Path::new("/dev/kvm").exists();
    if !kvm {
        eprintln!("no /dev/kvm: alioth stops before creating devices; only its argument parsing is checked");
    }
    let mut failures = Vec::new();
    let mut ran = 0;
    for (n, fixture) in fixtures().iter().enumerate() {
        let name = stem(fixture);
        if name.starts_with("aarch64-") {
            eprintln!("{name}: skipped: an aarch64 guest needs an aarch64 alioth");
            continue;
        }
        let mut config = load_fixture(fixture);
        let work = tempfile::tempdir().expect("tempdir");
        for note in adapt_to_host(&mut config, work.path()) {
            eprintln!("{name}: exception: {note}");
        }
        config.alioth.package = None;
        let artifacts = artifacts(work.path(), &kernel);
        let host = HostFacts {
            is_root: false,
            ..HostFacts::reference()
        };
        let inv = match plan_for(Hypervisor::Alioth, &config, &artifacts, &host) {
            Ok(inv) => inv,
            Err(e) => {
                eprintln!("{name}: not run: the planner refuses it: {e}");
                continue;
            }
        };
        let netns = Netns::new(&format!("mva{}-{n}", std::process::id()));
        let helpers = start_helpers(&inv, work.path());
        let outcome = run(&inv, program, work.path(), &netns);
        for mut h in helpers {
            let _ = h.kill();
            let _ = h.wait();
        }
        let log = match outcome {
            Ok(log) => log,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        ran += 1;
        if let Some(e) = check(&config, &log, kvm) {
            failures.push(format!("{name}: {e}\nargs: {:?}\nlog:\n{log}", inv.args));
        } else {
            eprintln!(
                "{name}: alioth created {:?}{}",
                reported_devices(&log),
                if kvm { " and loaded the kernel" } else { "" }
            );
        }
    }
    assert!(
        failures.is_empty(),
        "alioth rejected plans:\n{}",
        failures.join("\n\n")
    );
    assert!(ran > 0, "no fixture was run");
}

fn artifacts(work: &Path, kernel: &Path) -> Artifacts {
    let initrd = work.join("initrd");
    let store: PathBuf = work.join("store.img");
    std::fs::write(&initrd, b"initrd").expect("initrd");
    make_image(&store, "raw");
    Artifacts {
        kernel: kernel.to_owned(),
        vmlinux: None,
        initrd,
        store_disk: Some(store),
    }
}

/// What is wrong with alioth's log for `config`, if anything.
fn check(config: &Config, log: &str, kvm: bool) -> Option<String> {
    if log.contains("Usage:") || log.contains("error: ") {
        return Some("alioth refused its arguments".into());
    }
    if !kvm {
        return None;
    }
    let want = expected_devices(config);
    let got = reported_devices(log);
    if got != want {
        return Some(format!("devices: want {want:?}, alioth created {got:?}"));
    }
    if !log.contains("initramfs loaded") {
        return Some("alioth did not load the kernel and initramfs".into());
    }
    None
}

#[test]
fn colours_are_stripped() {
    assert_eq!(
        strip_colours("\x1b[38;5;27mINFO\x1b[0m [alioth::vm] 00:01.0: device: virtio-entropy"),
        "INFO [alioth::vm] 00:01.0: device: virtio-entropy"
    );
}
