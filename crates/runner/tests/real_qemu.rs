//! Real qemu: every fixture's qemu plan (as the golden files hold it, but with real
//! artifacts and under TCG) is started by the real `qemu-system-*` paused (`-S`), and must
//! answer QMP `query-status`. A plan qemu rejects fails the test.
//!
//! What this host lacks is named and removed from the definition before planning, each
//! printed: `vsock.cid` without `/dev/vhost-vsock`, `vhost = true` without
//! `/dev/vhost-net`, PCI passthrough without `/dev/vfio/vfio`, macvtap without the macvtap
//! module, and bridges when qemu-bridge-helper's ACL allows none. Paths the fixtures name
//! on their author's host (volume images, share sources, credential files, `user`) are
//! made here. Taps are created by qemu itself, in a network namespace of the test's own.
//! Needs root (namespaces, taps) and `MICROVM_TEST_KERNELS` (a Debian kernel .deb); says
//! so and passes without them.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{
    adapt_to_host, fixtures, load_fixture, make_image, start_helpers, stem, test_kernel, wait_for,
    Netns, Qmp,
};
use microvm_runner::{detect, plan_for, Artifacts, HostFacts, Invocation};
use microvm_spec::types::Hypervisor;

struct Outcome {
    status: String,
}

/// Runs `inv` paused under qemu and asks QMP for the status.
fn run_paused(inv: &Invocation, work: &Path, netns: &Netns) -> Result<Outcome, String> {
    let mut args = inv.args.clone();
    args.push("-S".into());
    let socket = match &inv.control_socket {
        Some(s) => work.join(s),
        None => {
            args.extend([
                "-qmp".into(),
                "unix:test-qmp.sock,server=on,wait=off".into(),
            ]);
            work.join("test-qmp.sock")
        }
    };
    let log = work.join("qemu.log");
    let mut child = netns
        .command(&inv.program)
        .args(&args)
        .current_dir(work)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .stderr(std::fs::File::create(work.join("qemu.err")).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", inv.program))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let result = loop {
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(work.join("qemu.err")).unwrap_or_default();
            break Err(format!(
                "qemu exited ({status}) before QMP answered:\n{err}"
            ));
        }
        // The socket file exists from bind() on; connections are refused until listen().
        if let Ok(mut q) = Qmp::connect(&socket) {
            break q.command("query-status").map(|status| {
                let _ = q.command("quit");
                Outcome {
                    status: status["status"].as_str().unwrap_or_default().to_owned(),
                }
            });
        }
        if Instant::now() > deadline {
            break Err("qemu did not create its QMP socket within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !wait_for(Duration::from_secs(10), || {
        matches!(child.try_wait(), Ok(Some(_)))
    }) {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

#[test]
fn every_fixture_starts_under_real_qemu() {
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
    let mut failures = Vec::new();
    let mut started = 0;
    for (n, fixture) in fixtures().iter().enumerate() {
        let name = stem(fixture);
        let mut config = load_fixture(fixture);
        let work = tempfile::tempdir().expect("tempdir");
        for note in adapt_to_host(&mut config, work.path()) {
            eprintln!("{name}: exception: {note}");
        }
        let program = detect::program_of(Hypervisor::Qemu, &config);
        let detection = detect::detect(Hypervisor::Qemu, &config, None);
        if matches!(detection, detect::Detection::Missing { .. }) {
            eprintln!("{name}: skipped: {}", detection.describe(Hypervisor::Qemu));
            continue;
        }
        let initrd = work.path().join("initrd");
        let store = work.path().join("store.img");
        std::fs::write(&initrd, b"initrd").expect("initrd");
        make_image(&store, "raw");
        let artifacts = Artifacts {
            kernel: kernel.clone(),
            vmlinux: None,
            initrd,
            store_disk: Some(store),
        };
        let mut host = HostFacts {
            // virtiofsd's `--rlimit-nofile` needs CAP_SYS_RESOURCE, which a container's
            // root may lack (the CLI probes this; `is_root` stands for "can raise it").
            is_root: false,
            kvm: false,
            tsc_khz: Some(2_000_000),
            ..HostFacts::reference()
        };
        if let Some(v) = detection.version() {
            host.versions.push((Hypervisor::Qemu, v));
        }
        let inv = match plan_for(Hypervisor::Qemu, &config, &artifacts, &host) {
            Ok(inv) => inv,
            Err(e) => {
                eprintln!("{name}: not started: the planner refuses it: {e}");
                continue;
            }
        };
        let netns = Netns::new(&format!("mvq{}-{n}", std::process::id()));
        let helpers = start_helpers(&inv, work.path());
        let outcome = run_paused(&inv, work.path(), &netns);
        for mut h in helpers {
            let _ = h.kill();
            let _ = h.wait();
        }
        match outcome {
            Ok(o) if o.status == "prelaunch" || o.status == "paused" => {
                started += 1;
                eprintln!(
                    "{name}: {program} started paused, QMP query-status: {}",
                    o.status
                );
            }
            Ok(o) => failures.push(format!("{name}: unexpected status {:?}", o.status)),
            Err(e) => failures.push(format!("{name}: {e}\nargs: {:?}", inv.args)),
        }
    }
    assert!(
        failures.is_empty(),
        "qemu rejected plans:\n{}",
        failures.join("\n\n")
    );
    assert!(started > 0, "no fixture was started");
    eprintln!("{started} fixtures started under real qemu");
}
