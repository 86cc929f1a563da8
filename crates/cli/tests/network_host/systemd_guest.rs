//! A Debian systemd guest (bookworm minbase + systemd-sysv, the same root as
//! tests/debian.rs, built once into the e2e store) with systemd-networkd enabled, on a
//! network with IPv6 and a 2-minute lease: the init takes the lease, networkd takes it
//! over under the same client id (the init's renewing process says so and exits; the
//! address stays the same and networkd renews it) and configures a SLAAC address from
//! the network's router advertisements, which the host pings.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::guests::{lease_of, work_dir, Guests};
use super::{assert_gone, bin, microvm, ok, run, skip, workspace, Namespaces};

const MAC: &str = "02:00:00:33:00:0d";
/// Its EUI-64 SLAAC address in fd91::/64.
const SLAAC: &str = "fd91::ff:fe33:d";

fn cloud_kernel() -> PathBuf {
    let dir = match std::env::var_os("MICROVM_TEST_KERNELS") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target/test-kernels"),
    };
    dir.join("cloud.deb")
}

/// `/etc/systemd/system` links that enable systemd-networkd (what `systemctl enable`
/// makes), in a root overlay.
fn networkd_overlay(dir: &Path) {
    let units = dir.join("etc/systemd/system");
    for (wants, unit) in [
        ("multi-user.target.wants", "systemd-networkd.service"),
        ("sockets.target.wants", "systemd-networkd.socket"),
    ] {
        fs::create_dir_all(units.join(wants)).expect("overlay");
        symlink(
            format!("/lib/systemd/system/{unit}"),
            units.join(wants).join(unit),
        )
        .expect("overlay");
    }
    for d in ["etc", "etc/systemd", "etc/systemd/system"] {
        fs::set_permissions(dir.join(d), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    for d in ["multi-user.target.wants", "sockets.target.wants"] {
        fs::set_permissions(units.join(d), fs::Permissions::from_mode(0o755)).expect("chmod");
    }
}

#[test]
fn a_systemd_guest_hands_its_lease_to_networkd_and_gets_a_slaac_address() {
    let test = "a_systemd_guest_hands_its_lease_to_networkd_and_gets_a_slaac_address";
    if skip(test, &["qemu-system-x86_64", "mmdebstrap"]) {
        return;
    }
    if !cloud_kernel().is_file() {
        assert!(std::env::var_os("CI").is_none(), "{test}: no cloud kernel");
        eprintln!(
            "SKIPPED {test}: {} is missing (scripts/fetch-test-kernels.sh)",
            cloud_kernel().display()
        );
        return;
    }
    let tag = format!("n3d{}", std::process::id() % 100000);
    let dir = tempfile::tempdir_in(work_dir()).expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let state = dir.path().join("state");
    let mut ns = Namespaces(Vec::new());
    let h = ns.add(format!("{tag}-h"));
    let (net, br) = ("n3d", "n3br4");
    microvm(
        &h,
        &state,
        &[
            "network",
            "create",
            net,
            "--bridge",
            br,
            "--subnet",
            "10.190.0.1/24",
            "--ipv6",
            "fd91::1/64",
            "--lease-time",
            "2m",
        ],
    );
    let overlay = dir.path().join("overlay");
    networkd_overlay(&overlay);
    // The systemd guest wants the Debian kernel (tinyconfig leaves out what systemd needs).
    let head = format!(
        "hostName = \"n3-deb\"\nvcpu = 2\nmem = 512\nkernel = {kernel:?}\ninit = \"/sbin/init\"\n\n\
         [[root]]\ndebian = {{ suite = \"bookworm\", variant = \"minbase\", packages = \
         [\"systemd-sysv\", \"udev\", \"dbus\", \"busybox\"] }}\n\n\
         [[root]]\ndirectory = {overlay:?}\n",
        kernel = cloud_kernel(),
    );
    // The e2e store, where tests/debian.rs builds the same root.
    let store = bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("e2e/store"))
        .expect("target dir");
    let guests = Guests {
        ns: &h,
        state: &state,
        dir: dir.path(),
        bridge: br,
    };
    guests.build_toml("n3-deb", &tag, MAC, &head, &store);
    let mut vm = guests.start_toml("n3-deb", &tag, MAC, &head, &store);
    let log = || fs::read_to_string(state.join(".networks/n3d/dnsmasq.log")).unwrap_or_default();
    let until = |what: &str, secs: u64, vm: &mut super::VmProcess, done: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(secs);
        while !done() {
            let exited = vm.0.try_wait().expect("wait").is_some();
            assert!(
                Instant::now() < end && !exited,
                "{what}:\n{}\n--- dnsmasq.log\n{}",
                guests.console("n3-deb"),
                log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    };
    // A TCG boot of systemd.
    until("the init's lease", 300, &mut vm, &|| {
        lease_of(&state, net, MAC).is_some()
    });
    let (_, ip) = lease_of(&state, net, MAC).expect("lease");
    until("networkd taking the lease over", 300, &mut vm, &|| {
        guests
            .console("n3-deb")
            .contains("systemd-networkd manages the DHCP lease from now on")
    });
    ok(&[
        "ip", "netns", "exec", &h, "ping", "-c", "2", "-W", "10", &ip,
    ]);
    until("the guest's SLAAC address", 120, &mut vm, &|| {
        run(&[
            "ip", "netns", "exec", &h, "ping", "-6", "-c", "1", "-W", "2", SLAAC,
        ])
        .status
        .success()
    });
    // networkd asked for the same address and renews it at T1 (60 s): three ACKs at least.
    let acks = |l: &str| l.matches(&format!("DHCPACK({br}) {ip} ")).count();
    until("networkd's renewal", 150, &mut vm, &|| acks(&log()) >= 3);
    let (_, still) = lease_of(&state, net, MAC).expect("lease");
    assert_eq!(still, ip, "networkd kept the init's address");
    drop(vm);
    microvm(&h, &state, &["network", "remove", net]);
    assert_gone(&h, &state, net, br);
}
