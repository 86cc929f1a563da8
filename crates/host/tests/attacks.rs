//! The attacks of issue 10 that need real kernel objects, each refused (harmless proofs of
//! concept: dummy files, dummy links in a private network namespace).
//!
//! - attack 4: an interface `id` naming an existing link (a veth pair here) made root
//!   delete it and put a tap in its place; now only a tap microvm created for that VM is
//!   replaced. The test runs itself again under `ip netns exec` in a namespace it creates
//!   (`i10-attacks-<pid>`), so the links live there and vanish with it.
//! - attacks 2 and 3: a symlink planted where root writes a record or finds a socket.
//!
//! Needs root and iproute2; without them the test says why and passes.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::process::Command;

use microvm_host::net::{Links, NetHost};
use microvm_runner::TapSetup;

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

fn tap(name: &str) -> TapSetup {
    TapSetup {
        name: name.into(),
        vnet_hdr: false,
        multi_queue: false,
        bridge: None,
    }
}

/// Inside the namespace: the real `ip` and the namespace's own sysfs.
fn in_netns() {
    let host = NetHost::system();
    assert!(ip(&[
        "link",
        "add",
        "veth-i10a",
        "type",
        "veth",
        "peer",
        "name",
        "veth-i10b"
    ]));
    let mut links = Links::for_vm(host.clone(), "victim");
    let err = links
        .create_tap(&tap("veth-i10a"), None)
        .expect_err("a veth");
    assert!(
        err.to_string().contains(
            "interface veth-i10a already exists and microvm did not create it for VM victim"
        ),
        "{err}"
    );
    assert!(
        host.link_exists("veth-i10a") && host.link_exists("veth-i10b"),
        "the veth pair is intact"
    );

    // A tap of this VM left by a crash is replaced; another VM may not take it over.
    links.create_tap(&tap("vm-i10t"), None).expect("tap");
    assert_eq!(
        host.link_alias("vm-i10t").as_deref(),
        Some("microvm:victim")
    );
    std::mem::forget(links); // "crash": the tap stays
    let mut other = Links::for_vm(host.clone(), "other");
    let err = other
        .create_tap(&tap("vm-i10t"), None)
        .expect_err("another VM's tap");
    assert!(
        err.to_string().contains("its alias is \"microvm:victim\""),
        "{err}"
    );
    let mut again = Links::for_vm(host.clone(), "victim");
    again
        .create_tap(&tap("vm-i10t"), None)
        .expect("the same VM replaces its own");
    assert!(again.remove_all().is_empty());
    assert!(!host.link_exists("vm-i10t"));
}

#[test]
fn attack4_links_microvm_did_not_create_are_never_replaced() {
    if std::env::var_os("I10_ATTACKS_IN_NETNS").is_some() {
        in_netns();
        return;
    }
    if !is_root() || !ip(&["-V"]) {
        eprintln!("skipped: needs root and iproute2 (a private network namespace)");
        return;
    }
    let ns = format!("i10-attacks-{}", std::process::id());
    assert!(ip(&["netns", "add", &ns]), "ip netns add {ns}");
    let status = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "attack4_links_microvm_did_not_create_are_never_replaced",
            "--nocapture",
        ])
        .env("I10_ATTACKS_IN_NETNS", "1")
        .status()
        .expect("run in the namespace");
    ip(&["netns", "del", &ns]);
    assert!(status.success(), "the test in {ns} failed");
}

/// Attacks 2 and 3 through the public API: `status.json`/`supervisor.pid` planted as
/// symlinks or by another user are neither followed nor trusted.
#[test]
fn attack2_planted_records_are_neither_followed_nor_trusted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = "vm1".parse().expect("name");
    let vm = microvm_host::state::VmDir::at(&name, dir.path().join("vm1"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    let victim = dir.path().join("shadow");
    fs::write(&victim, "root's secret").expect("write");
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).expect("chmod");
    symlink(&victim, vm.status_path()).expect("plant");
    symlink(&victim, vm.supervisor_pid_path()).expect("plant");
    assert_eq!(
        vm.supervisor_pid(),
        None,
        "a symlinked pid file is not read"
    );
    assert!(vm.status().is_err(), "a symlinked status is refused");
    vm.write_supervisor_pid(42).expect("write");
    assert_eq!(fs::read_to_string(&victim).expect("read"), "root's secret");
    assert_eq!(vm.supervisor_pid(), Some(42));
    let meta = fs::metadata(&victim).expect("stat");
    assert_eq!(
        (meta.mode() & 0o777, meta.uid()),
        (0o600, rustix::process::geteuid().as_raw())
    );
    if is_root() {
        // A pid file written by the hypervisors' user is ignored (root would signal it).
        fs::remove_file(vm.supervisor_pid_path()).expect("rm");
        fs::write(vm.supervisor_pid_path(), "1\n").expect("write");
        std::os::unix::fs::lchown(vm.supervisor_pid_path(), Some(65534), Some(65534))
            .expect("chown");
        assert_eq!(vm.supervisor_pid(), None);
    }
    let leftovers: Vec<_> = fs::read_dir(vm.path())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
