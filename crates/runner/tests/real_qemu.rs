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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixtures, load_fixture, stem, test_kernel, wait_for, Netns, Qmp};
use microvm_runner::{detect, plan_for, Artifacts, HostFacts, Invocation};
use microvm_spec::config::{Config, DeviceBus, InterfaceType};
use microvm_spec::types::Hypervisor;

/// The only exceptions: devices or host support this machine lacks, with the reason.
fn adapt_to_host(config: &mut Config, work: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    if config.graphics.enable && !Path::new("/dev/dri").exists() {
        config.graphics.enable = false;
        notes.push("graphics: no display and no GPU (/dev/dri) on this host".to_owned());
    }
    if let Some(p) = &config.qemu.package {
        if !p.exists() {
            notes.push(format!(
                "qemu.package {} is not on this host: the qemu on PATH runs it",
                p.display()
            ));
            config.qemu.package = None;
        }
    }
    if let Some(p) = &config.virtiofsd.package {
        if !p.exists() {
            notes.push(format!(
                "virtiofsd.package {} is not on this host: the virtiofsd on PATH runs it",
                p.display()
            ));
            config.virtiofsd.package = None;
        }
    }
    if config.vsock.cid.is_some() && !Path::new("/dev/vhost-vsock").exists() {
        config.vsock.cid = None;
        notes.push("vhost-vsock: no /dev/vhost-vsock on this host".to_owned());
    }
    for iface in &mut config.interfaces {
        if iface.vhost && !Path::new("/dev/vhost-net").exists() {
            iface.vhost = false;
            notes.push(format!("vhost-net ({}): no /dev/vhost-net", iface.id));
        }
    }
    if config.devices.iter().any(|d| d.bus == DeviceBus::Pci)
        && !Path::new("/dev/vfio/vfio").exists()
    {
        config.devices.retain(|d| d.bus != DeviceBus::Pci);
        notes.push("vfio-pci: no /dev/vfio/vfio (no IOMMU) on this host".to_owned());
    }
    let lacks_macvtap = !Path::new("/sys/module/macvtap").exists();
    let lacks_bridge_acl = !Path::new("/etc/qemu/bridge.conf").exists();
    config.interfaces.retain(|i| match i.kind {
        InterfaceType::Macvtap if lacks_macvtap => {
            notes.push(format!("macvtap ({}): this kernel has no macvtap", i.id));
            false
        }
        InterfaceType::Macvtap => {
            notes.push(format!(
                "macvtap ({}): not started here (the test passes no fds)",
                i.id
            ));
            false
        }
        InterfaceType::Bridge if lacks_bridge_acl => {
            notes.push(format!(
                "bridge ({}): qemu-bridge-helper allows no bridge (no /etc/qemu/bridge.conf)",
                i.id
            ));
            false
        }
        _ => true,
    });
    // The fixture author's paths, made here (not exceptions).
    for (i, share) in config.shares.iter_mut().enumerate() {
        let dir = work.join(format!("share{i}"));
        std::fs::create_dir_all(&dir).expect("share dir");
        share.source = dir.display().to_string();
    }
    for (i, v) in config.volumes.iter_mut().enumerate() {
        let file = work.join(format!("vol{i}.{}", v.image_type.name()));
        make_image(&file, v.image_type.name());
        v.image = file.display().to_string();
    }
    for (i, (_, path)) in config.credential_files.iter_mut().enumerate() {
        let file = work.join(format!("cred{i}"));
        std::fs::write(&file, "secret").expect("credential");
        *path = file;
    }
    if let Some(user) = &config.user {
        if !user_exists(user) {
            config.user = Some("nobody".into());
        }
    }
    notes
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .is_ok_and(|p| p.lines().any(|l| l.split(':').next() == Some(name)))
}

fn make_image(path: &Path, format: &str) {
    let format = if format == "vhd" { "vpc" } else { format };
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg("16M")
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img create {}", path.display());
}

/// Starts the plan's helpers (virtiofsd) and waits for their sockets.
fn start_helpers(inv: &Invocation, work: &Path) -> Vec<Child> {
    let mut children = Vec::new();
    for h in &inv.helpers {
        let log = work.join(format!("helper-{}.log", h.name));
        let mut child = Command::new(&h.program)
            .args(&h.args)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("helper log"))
            .spawn()
            .unwrap_or_else(|e| panic!("helper {} ({}): {e}", h.name, h.program));
        if let Some(socket) = &h.socket {
            let path = work.join(socket);
            let up = wait_for(Duration::from_secs(20), || path.exists());
            // virtiofsd creates its socket before it checks its options.
            std::thread::sleep(Duration::from_millis(300));
            let alive = matches!(child.try_wait(), Ok(None));
            assert!(
                up && alive,
                "helper {} {:?} did not come up: {}",
                h.name,
                h.args,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        children.push(child);
    }
    children
}

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
