//! One test per validation rule of the loader (inventory §1.17 and the value checks of
//! `resolve`): each asserts the exact message, the file and the line it points at.

mod common;

use common::{expect, fails, loads, one_error, one_error_in, one_warning, Dir};
use microvm_spec::diag::Severity;

const TAP: &str = "type = \"tap\"\n";

// --- §1.17: assertions ----------------------------------------------------------------

#[test]
fn duplicate_volume_image() {
    let e = one_error(
        "[[volumes]]\nimage = \"a.img\"\nsize = 1\n\n[[volumes]]\nimage = \"a.img\"\nsize = 2\n",
        "MicroVM vm1: volume image \"a.img\" is used 2 > 1 times.",
        6,
    );
    assert_eq!(e.key.as_deref(), Some("volumes[1].image"));
}

#[test]
fn duplicate_volume_image_three_times_is_reported_once() {
    let e = one_error(
        "[[volumes]]\nimage = \"a.img\"\nsize = 1\n[[volumes]]\nimage = \"b.img\"\nsize = 1\n[[volumes]]\nimage = \"a.img\"\nsize = 1\n[[volumes]]\nimage = \"a.img\"\nsize = 1\n",
        "MicroVM vm1: volume image \"a.img\" is used 3 > 1 times.",
        11,
    );
    assert_eq!(e.key.as_deref(), Some("volumes[3].image"));
}

#[test]
fn duplicate_interface_id() {
    one_error(
        &format!("[[interfaces]]\n{TAP}id = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n[[interfaces]]\n{TAP}id = \"vm-a\"\nmac = \"02:00:00:00:00:02\"\n"),
        "MicroVM vm1: interface id \"vm-a\" is used 2 > 1 times.",
        7,
    );
}

#[test]
fn duplicate_mac_is_a_warning() {
    one_warning(
        &format!("[[interfaces]]\n{TAP}id = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n[[interfaces]]\n{TAP}id = \"vm-b\"\nmac = \"02:00:00:00:00:01\"\n"),
        "MicroVM vm1: MAC address 02:00:00:00:00:01 is used by more than one interface",
        8,
    );
}

#[test]
fn bridge_interface_without_bridge() {
    let e = one_error(
        "mem = 256\n[[interfaces]]\ntype = \"bridge\"\nid = \"br-vm1\"\nmac = \"02:00:00:00:00:01\"\n",
        "MicroVM vm1: interface br-vm1 is of type \"bridge\" but doesn't have a bridge to attach to defined.",
        2,
    );
    assert_eq!(e.key.as_deref(), Some("interfaces[0]"));
}

#[test]
fn bridge_option_on_a_non_bridge_interface() {
    // A tap may join a bridge (extension, #247); a user interface may not.
    let e = one_error(
        "[[interfaces]]\ntype = \"user\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nbridge = \"br0\"\n",
        "MicroVM vm1: interface vm-a is not of type \"bridge\" and therefore shouldn't have a \"bridge\" option defined.",
        5,
    );
    assert_eq!(e.key.as_deref(), Some("interfaces[0].bridge"));
}

#[test]
fn bridge_interface_with_bridge_is_fine() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "[[interfaces]]\ntype = \"bridge\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nbridge = \"br0\"\n",
    );
    let (loaded, warnings) = loads(&path);
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(loaded.config.interfaces[0].bridge.as_deref(), Some("br0"));
}

#[test]
fn tap_with_bridge_is_fine() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        &format!("[[interfaces]]\n{TAP}id = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nbridge = \"microvm0\"\n"),
    );
    let (loaded, warnings) = loads(&path);
    assert!(warnings.is_empty(), "{warnings:#?}");
    assert_eq!(
        loaded.config.interfaces[0].bridge.as_deref(),
        Some("microvm0")
    );
}

#[test]
fn interface_id_longer_than_15() {
    one_error(
        &format!("[[interfaces]]\n{TAP}id = \"vm-0123456789abc\"\nmac = \"02:00:00:00:00:01\"\n"),
        "MicroVM vm1: interface name vm-0123456789abc is longer than the maximum length of 15 characters on Linux.",
        3,
    );
}

#[test]
fn interface_id_of_15_is_fine_and_bad_characters_are_not() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        &format!("[[interfaces]]\n{TAP}id = \"vm-0123456789ab\"\nmac = \"02:00:00:00:00:01\"\n"),
    );
    loads(&path);
    one_error(
        &format!("[[interfaces]]\n{TAP}id = \"vm/a\"\nmac = \"02:00:00:00:00:01\"\n"),
        "interface name \"vm/a\" is not valid on Linux (no '/', ':' or whitespace)",
        3,
    );
    one_error(
        &format!("[[interfaces]]\n{TAP}id = \"\"\nmac = \"02:00:00:00:00:01\"\n"),
        "an interface name cannot be empty",
        3,
    );
}

#[test]
fn duplicate_share_tag() {
    let e = one_error(
        "[[shares]]\ntag = \"home\"\nsource = \"/a\"\nmountPoint = \"/a\"\n\n[[shares]]\ntag = \"home\"\nsource = \"/b\"\nmountPoint = \"/b\"\n",
        "MicroVM vm1: share tag \"home\" is used 2 > 1 times.",
        7,
    );
    assert_eq!(e.key.as_deref(), Some("shares[1].tag"));
}

#[test]
fn duplicate_virtiofs_socket() {
    one_error(
        "[[shares]]\nproto = \"virtiofs\"\ntag = \"a\"\nsource = \"/a\"\nmountPoint = \"/a\"\nsocket = \"fs.sock\"\n[[shares]]\nproto = \"virtiofs\"\ntag = \"b\"\nsource = \"/b\"\nmountPoint = \"/b\"\nsocket = \"fs.sock\"\n",
        "MicroVM vm1: share socket \"fs.sock\" is used 2 > 1 times.",
        12,
    );
}

#[test]
fn duplicate_virtiofs_socket_against_a_default_socket() {
    // Share `b` names the socket share `a` gets by default (<hostName>-virtiofs-<tag>.sock).
    one_error(
        "[[shares]]\nproto = \"virtiofs\"\ntag = \"a\"\nsource = \"/a\"\nmountPoint = \"/a\"\n[[shares]]\nproto = \"virtiofs\"\ntag = \"b\"\nsource = \"/b\"\nmountPoint = \"/b\"\nsocket = \"vm1-virtiofs-a.sock\"\n",
        "MicroVM vm1: share socket \"vm1-virtiofs-a.sock\" is used 2 > 1 times.",
        11,
    );
}

#[test]
fn a_9p_share_socket_is_not_a_virtiofs_socket() {
    // The original only compares the sockets of virtiofs shares.
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "[[shares]]\nproto = \"virtiofs\"\ntag = \"a\"\nsource = \"/a\"\nmountPoint = \"/a\"\nsocket = \"s\"\n[[shares]]\nproto = \"9p\"\ntag = \"b\"\nsource = \"/b\"\nmountPoint = \"/b\"\nsocket = \"s\"\n",
    );
    loads(&path);
}

#[test]
fn virtiofs_share_with_null_socket() {
    let e = one_error_in(
        "vm1.json",
        "{\n  \"shares\": [\n    {\n      \"proto\": \"virtiofs\",\n      \"tag\": \"home\",\n      \"source\": \"/srv/home\",\n      \"mountPoint\": \"/home\",\n      \"socket\": null\n    }\n  ]\n}\n",
        "MicroVM vm1: virtiofs share with tag \"home\" is missing a `socket` path.",
        8,
    );
    assert_eq!(e.key.as_deref(), Some("shares[0].socket"));
}

#[test]
fn forward_ports_need_qemu_user_networking_or_a_tap() {
    let fwd = "[[forwardPorts]]\nhost.port = 2222\nguest.port = 22\n";
    let text = format!("vcpu = 1\n{fwd}[[interfaces]]\ntype = \"macvtap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n");
    let e = one_error(
        &text,
        "MicroVM vm1: `config.microvm.forwardPorts` works only with qemu and a network interface with `type = \"user\"` (hostfwd), or with a `tap` interface (nftables DNAT on the host)",
        2,
    );
    assert_eq!(e.key.as_deref(), Some("forwardPorts"));
    // With a user interface on qemu it loads; on another hypervisor it does not.
    let user = format!(
        "{fwd}[[interfaces]]\ntype = \"user\"\nid = \"qemu\"\nmac = \"02:00:00:00:00:01\"\n"
    );
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write("vm1.toml", &user));
    assert_eq!(loaded.config.forward_ports[0].host_port, 2222);
    let dir = Dir::new();
    let path = dir.write("vm1.toml", &format!("hypervisor = \"crosvm\"\n{user}"));
    let (_, found) = fails(&path);
    assert!(found[0]
        .message
        .contains("forwardPorts` works only with qemu"));
}

/// On a tap (any hypervisor) the host forwards by DNAT: the guest's address must be
/// known, the forward goes from the host, never from loopback, and no port twice.
#[test]
fn forward_ports_on_a_tap_need_a_known_address_and_distinct_ports() {
    let tap = format!("[[interfaces]]\n{TAP}id = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n");
    let fwd = "[[forwardPorts]]\nhost.port = 8080\nguest.port = 80\n";
    one_error(
        &format!("hypervisor = \"crosvm\"\n{fwd}{tap}"),
        "MicroVM vm1: the guest's address of tap vm-a is unknown: set `guest.address`, give the tap a static IPv4 address in a `[[network]]` entry, or attach it to a microvm network (`bridge`) with `dhcp = true`",
        2,
    );
    for extra in [
        "[[network]]\ninterface = \"vm-a\"\naddresses = [\"10.0.0.5/24\"]\n",
        "bridge = \"microvm0\"\n[[network]]\ninterface = \"vm-a\"\ndhcp = true\n",
    ] {
        let dir = Dir::new();
        let text = format!("hypervisor = \"firecracker\"\n{fwd}{tap}{extra}");
        let (loaded, _) = loads(&dir.write("vm1.toml", &text));
        let c = &loaded.config;
        let f = microvm_spec::forward::tap_forwards(
            false,
            &c.interfaces,
            &c.guest.network,
            &c.forward_ports,
        )
        .expect("known")
        .expect("forwards");
        assert_eq!(f.interface, "vm-a");
        assert_eq!(f.ports[0].host_port, 8080);
        assert_eq!(f.address.is_some(), !f.dhcp, "{f:?}");
    }
    let with_address = format!(
        "[[forwardPorts]]\nhost.port = 8080\nguest.port = 80\nguest.address = \"10.0.0.9\"\n{tap}"
    );
    let dir = Dir::new();
    loads(&dir.write("vm1.toml", &with_address));
    one_error(
        &format!("[[forwardPorts]]\nfrom = \"guest\"\nhost.port = 1\nguest.port = 2\nguest.address = \"10.0.0.9\"\n{tap}"),
        "MicroVM vm1: `from = \"guest\"` (qemu's guestfwd) needs a `user` interface; a VM on a tap reaches the host directly",
        2,
    );
    one_error(
        &format!("[[forwardPorts]]\nhost.port = 1\nhost.address = \"127.0.0.1\"\nguest.port = 2\nguest.address = \"10.0.0.9\"\n{tap}"),
        "MicroVM vm1: a tap VM's port cannot be forwarded from the loopback address 127.0.0.1 (DNAT does not apply to it); leave `host.address` empty to forward it on every other host address",
        3,
    );
    one_error(
        &format!("{with_address}[[forwardPorts]]\nhost.port = 8080\nhost.address = \"10.1.1.1\"\nguest.port = 81\nguest.address = \"10.0.0.9\"\n"),
        "MicroVM vm1: tcp port 8080 is forwarded twice (forwardPorts[0] and forwardPorts[1])",
        10,
    );
}

#[test]
fn forward_port_values() {
    let base = "[[interfaces]]\ntype = \"user\"\nid = \"qemu\"\nmac = \"02:00:00:00:00:01\"\n";
    one_error(
        &format!("{base}[[forwardPorts]]\nhost.port = 0\nguest.port = 22\n"),
        "must be at least 1, found 0",
        6,
    );
    one_error(
        &format!("{base}[[forwardPorts]]\nhost.port = 70000\nguest.port = 22\n"),
        "70000 is more than 65535, the most a TCP or UDP port can be",
        6,
    );
    one_error(
        &format!("{base}[[forwardPorts]]\nguest.port = 22\n"),
        "missing required key `port`",
        5,
    );
    one_error(
        &format!(
            "{base}[[forwardPorts]]\nhost.port = 2\nhost.address = \"::1\"\nguest.port = 22\n"
        ),
        "\"::1\" is not an IPv4 address (port forwarding is IPv4 only)",
        7,
    );
}

#[test]
fn posix_acl_with_translate_uid() {
    let e = one_error(
        "[[shares]]\nproto = \"virtiofs\"\ntag = \"home\"\nsource = \"/a\"\nmountPoint = \"/a\"\nextraArgs = [\"--translate-uid=map:0:1000:1\"]\n",
        "MicroVM vm1: virtiofs share \"home\" has posixAcl=true but extraArgs contains --translate-uid/--translate-gid; virtiofsd refuses both together, set posixAcl = false",
        1,
    );
    // posixAcl is absent (default true): the share's table is blamed.
    assert_eq!(e.key.as_deref(), Some("shares[0].posixAcl"));
    // From the global virtiofsd.extraArgs, with posixAcl written out.
    one_error(
        "virtiofsd.extraArgs = [\"--translate-gid\", \"map:0:100:1\"]\n[[shares]]\nproto = \"virtiofs\"\ntag = \"home\"\nsource = \"/a\"\nmountPoint = \"/a\"\nposixAcl = true\n",
        "MicroVM vm1: virtiofs share \"home\" has posixAcl=true but extraArgs contains --translate-uid/--translate-gid; virtiofsd refuses both together, set posixAcl = false",
        7,
    );
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "[[shares]]\nproto = \"virtiofs\"\ntag = \"home\"\nsource = \"/a\"\nmountPoint = \"/a\"\nposixAcl = false\nextraArgs = [\"--translate-uid=map:0:1000:1\"]\n",
    );
    loads(&path);
}

#[test]
fn balloon_mem_was_removed() {
    let e = one_error(
        "vcpu = 2\nballoonMem = 256\n",
        "The balloonMem option has been removed and replaced by the boolean option balloon",
        2,
    );
    assert_eq!(e.key.as_deref(), Some("balloonMem"));
}

#[test]
fn vsock_ssh_needs_a_cid() {
    one_error(
        "[vsock]\nssh.enable = true\n",
        "MicroVM vm1: vsock.ssh.enable needs vsock.cid to be set",
        2,
    );
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write("vm1.toml", "[vsock]\ncid = 3\nssh.enable = true\n"));
    assert!(loaded.config.vsock.ssh);
}

#[test]
fn vsock_cid_reserved_values() {
    for cid in [0, 1, 2] {
        one_error(
            &format!("vsock.cid = {cid}\n"),
            &format!("vsock CID {cid} is reserved (0: hypervisor, 1: loopback, 2: host); use 3 or higher"),
            1,
        );
    }
    one_error(
        "vsock.cid = 4294967295\n",
        "vsock CID 4294967295 is out of range (3 to 4294967294)",
        1,
    );
}

#[test]
fn writable_store_overlay_must_be_a_volume_mount_point() {
    one_error(
        "writableStoreOverlay = \"/nix/.rw-store\"\n[[volumes]]\nimage = \"a.img\"\nsize = 8\nmountPoint = \"/var\"\n",
        "MicroVM vm1: writableStoreOverlay /nix/.rw-store must be the mountPoint of a volume (the writable layer needs a real local filesystem)",
        1,
    );
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "writableStoreOverlay = \"/nix/.rw-store\"\n[[volumes]]\nimage = \"a.img\"\nsize = 8\nmountPoint = \"/nix/.rw-store\"\n",
    );
    loads(&path);
}

#[test]
fn cloud_hypervisor_oem_strings_in_extra_args() {
    let e = one_error(
        "[cloud-hypervisor]\nextraArgs = [\n  \"--platform\",\n  \"oem_strings=[a]\",\n]\n",
        "MicroVM vm1: use cloud-hypervisor.platformOEMStrings instead of oem_strings in extraArgs",
        4,
    );
    assert_eq!(e.key.as_deref(), Some("cloud-hypervisor.extraArgs[1]"));
}

#[test]
fn cloud_hypervisor_platform_oem_strings_must_not_hold_oem_strings() {
    one_error(
        "[cloud-hypervisor]\nplatformOEMStrings = [\"oem_strings=[x]\"]\n",
        "MicroVM vm1: `config.microvm.cloud-hypervisor.platformOEMStrings` items must not contain `oem_strings`",
        2,
    );
}

// --- §1.17: warnings ------------------------------------------------------------------

#[test]
fn little_memory_warns() {
    let w = one_warning(
        "vcpu = 1\nmem = 16\n",
        "MicroVM vm1: 16 MB of RAM is uncomfortably narrow.",
        2,
    );
    assert_eq!(w.key.as_deref(), Some("mem"));
    let dir = Dir::new();
    let (_, warnings) = loads(&dir.write("vm1.toml", "mem = 32\n"));
    assert!(warnings.is_empty(), "{warnings:#?}");
}

#[test]
fn label_without_auto_create_warns() {
    one_warning(
        "[[volumes]]\nimage = \"a.img\"\nautoCreate = false\nlabel = \"data\"\n",
        "Volume is not automatically labeled unless autoCreate is true. Volume \"data\" will be unlabeled unless you label it yourself.",
        4,
    );
}

#[test]
fn label_on_an_unlabellable_filesystem_warns() {
    one_warning(
        "[[volumes]]\nimage = \"a.img\"\nsize = 8\nfsType = \"ntfs\"\nlabel = \"data\"\n",
        "Will not label volume data with filesystem type ntfs. Open an issue if you need it.",
        5,
    );
    for fs in ["ext2", "ext3", "ext4", "xfs", "btrfs", "vfat"] {
        let dir = Dir::new();
        let path = dir.write(
            "vm1.toml",
            &format!(
                "[[volumes]]\nimage = \"a.img\"\nsize = 8\nfsType = \"{fs}\"\nlabel = \"data\"\n"
            ),
        );
        let (_, warnings) = loads(&path);
        assert!(warnings.is_empty(), "{fs}: {warnings:#?}");
    }
}

// --- required keys --------------------------------------------------------------------

#[test]
fn volume_image_is_required() {
    let e = one_error(
        "vcpu = 1\n[[volumes]]\nsize = 8\nmountPoint = \"/var\"\n",
        "missing required key `image`",
        2,
    );
    assert_eq!(e.key.as_deref(), Some("volumes[0].image"));
}

#[test]
fn volume_size_is_required_with_auto_create() {
    let e = one_error(
        "[[volumes]]\nimage = \"a.img\"\nmountPoint = \"/var\"\n",
        "MicroVM vm1: volume a.img needs a `size` (MiB) to be created automatically",
        1,
    );
    assert_eq!(e.key.as_deref(), Some("volumes[0].size"));
    let dir = Dir::new();
    loads(&dir.write(
        "vm1.toml",
        "[[volumes]]\nimage = \"a.img\"\nautoCreate = false\n",
    ));
}

#[test]
fn volume_sizes() {
    one_error(
        "[[volumes]]\nimage = \"a.img\"\nsize = 0\n",
        "must be at least 1 MiB, found 0",
        3,
    );
    one_error(
        "[[volumes]]\nimage = \"a.img\"\nsize = 9223372036854775807\n",
        "9223372036854775807 MiB is more than 67108864 MiB, the most a volume image may hold here",
        3,
    );
    one_error(
        "[[volumes]]\nimage = \"\"\nsize = 1\n",
        "a volume image path cannot be empty",
        2,
    );
}

#[test]
fn share_keys_are_required() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "vcpu = 1\n\n[[shares]]\nproto = \"virtiofs\"\n");
    let (_, found) = fails(&path);
    for key in ["tag", "source", "mountPoint"] {
        let d = expect(
            &found,
            Severity::Error,
            &format!("missing required key `{key}`"),
            &path,
            3,
        );
        assert_eq!(d.key.as_deref(), Some(&*format!("shares[0].{key}")));
    }
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn share_values() {
    let share = "[[shares]]\ntag = \"t\"\nmountPoint = \"/t\"\n";
    one_error(
        &format!("{share}source = \"\"\n"),
        "a share source cannot be empty",
        4,
    );
    one_error(
        "[[shares]]\ntag = \"\"\nmountPoint = \"/t\"\nsource = \"/s\"\n",
        "a share tag cannot be empty",
        2,
    );
}

#[test]
fn interface_keys_are_required() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "[[interfaces]]\nbridge = \"br0\"\n");
    let (_, found) = fails(&path);
    for key in ["type", "id", "mac"] {
        expect(
            &found,
            Severity::Error,
            &format!("missing required key `{key}`"),
            &path,
            1,
        );
    }
    assert_eq!(found.len(), 3, "{found:#?}");
}

#[test]
fn macvtap_needs_link_and_mode() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "[[interfaces]]\ntype = \"macvtap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n",
    );
    let (_, found) = fails(&path);
    let link = expect(
        &found,
        Severity::Error,
        "missing required key `link`",
        &path,
        1,
    );
    assert_eq!(link.key.as_deref(), Some("interfaces[0].macvtap.link"));
    expect(
        &found,
        Severity::Error,
        "missing required key `mode`",
        &path,
        1,
    );
    assert_eq!(found.len(), 2);
    // With `macvtap.link` only, the mode is missing; it is blamed on the macvtap table.
    one_error(
        "[[interfaces]]\ntype = \"macvtap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nmacvtap = { link = \"eth0\" }\n",
        "missing required key `mode`",
        5,
    );
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write(
        "vm1.toml",
        "[[interfaces]]\ntype = \"macvtap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n",
    ));
    assert!(loaded.config.interfaces[0].macvtap.is_some());
}

#[test]
fn mac_addresses() {
    let iface = format!("[[interfaces]]\n{TAP}id = \"vm-a\"\n");
    one_error(
        &format!("{iface}mac = \"02:00:00:00:00\"\n"),
        "\"02:00:00:00:00\" is not a MAC address like 02:00:00:00:00:01",
        4,
    );
    one_error(
        &format!("{iface}mac = \"zz:00:00:00:00:01\"\n"),
        "\"zz:00:00:00:00:01\" is not a MAC address like 02:00:00:00:00:01",
        4,
    );
    one_error(
        &format!("{iface}mac = \"01:00:5e:00:00:01\"\n"),
        "MAC address 01:00:5e:00:00:01 is a multicast address; a NIC needs a unicast one (the lowest bit of the first byte clear, e.g. 02:…)",
        4,
    );
    one_error(
        &format!("{iface}mac = \"00:00:00:00:00:00\"\n"),
        "MAC address 00:00:00:00:00:00 is not usable",
        4,
    );
}

#[test]
fn devices() {
    one_error(
        "[[devices]]\nbus = \"pci\"\npath = \"01:00.0\"\n",
        "\"01:00.0\" is not a PCI address like 0000:01:00.0",
        3,
    );
    one_error(
        "[[devices]]\nbus = \"usb\"\n",
        "missing required key `path`",
        1,
    );
    let dir = Dir::new();
    loads(&dir.write(
        "vm1.toml",
        "[[devices]]\nbus = \"pci\"\npath = \"0000:01:00.0\"\n[[devices]]\nbus = \"usb\"\npath = \"vendorid=0xabcd,productid=0x0123\"\n",
    ));
}

#[test]
fn pcie_root_port_needs_an_id() {
    one_error(
        "[[qemu.pcieRootPorts]]\nbus = \"pcie.0\"\n",
        "missing required key `id`",
        1,
    );
}
