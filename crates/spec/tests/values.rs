//! One test per value check of the loader beyond inventory §1.17 (guest paths, root
//! sources, static network, other values, unknown keys and types, and all errors at once):
//! each asserts the exact message, the file and the line it points at.

mod common;

use common::{expect, fails, loads, one_error, one_error_in, Dir};
use microvm_spec::diag::Severity;

// --- guest paths and root sources -----------------------------------------------------

#[test]
fn relative_guest_paths() {
    let msg = |p: &str| {
        format!("{p:?} must be an absolute path in the guest (starting with /, without ..)")
    };
    one_error(
        "[[volumes]]\nimage = \"a.img\"\nsize = 1\nmountPoint = \"var\"\n",
        &msg("var"),
        4,
    );
    one_error(
        "[[shares]]\ntag = \"t\"\nsource = \"/s\"\nmountPoint = \"mnt/t\"\n",
        &msg("mnt/t"),
        4,
    );
    one_error("init = \"sbin/init\"\n", &msg("sbin/init"), 1);
    one_error(
        "vcpu = 1\nworkingDirectory = \"/a/../b\"\n",
        &msg("/a/../b"),
        2,
    );
    one_error(
        "[[root]]\ndirectory = \"rootfs\"\ntarget = \"opt\"\n",
        &msg("opt"),
        3,
    );
    // The check stops there: no second complaint about the overlay not being a volume.
    one_error("writableStoreOverlay = \"rw\"\n", &msg("rw"), 1);
}

#[test]
fn root_source_needs_exactly_one_kind() {
    let e = one_error(
        "vcpu = 1\n[[root]]\ntarget = \"/\"\n",
        "a root source needs exactly one of `directory`, `tarball`, `oci`, `debian`, `nix`",
        2,
    );
    assert_eq!(e.key.as_deref(), Some("root[0]"));
    one_error(
        "vcpu = 1\n[[root]]\ndirectory = \"a\"\ntarball = \"b.tar\"\n",
        "a root source needs exactly one of `directory`, `tarball`, `oci`, `debian`, `nix` (found directory, tarball)",
        2,
    );
}

#[test]
fn root_source_details() {
    one_error(
        "[[root]]\ntarball = \"b.tar\"\nociRef = \"latest\"\n",
        "`ociRef` only applies to an `oci` source",
        3,
    );
    one_error(
        "[[root]]\ndebian = { packages = [\"curl\"] }\n",
        "missing required key `suite`",
        2,
    );
    one_error("command = []\n", "`command` needs at least a program", 1);
    one_error(
        "command = [\"\"]\n",
        "`command` needs at least a program",
        1,
    );
}

#[test]
fn root_source_paths_are_relative_to_the_file() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "[[root]]\ndirectory = \"rootfs\"\n[[root]]\ntarball = \"/abs/x.tar\"\ntarget = \"/opt\"\n",
    );
    let (loaded, _) = loads(&path);
    let text = format!("{:?}", loaded.config.guest.root);
    assert!(
        text.contains(&format!("{:?}", dir.path().join("rootfs"))),
        "{text}"
    );
    assert!(text.contains("\"/abs/x.tar\""), "{text}");
}

// --- static network -------------------------------------------------------------------

const NET_IFACE: &str =
    "[[interfaces]]\ntype = \"tap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n";

#[test]
fn network_unknown_interface() {
    let e = one_error(
        &format!("{NET_IFACE}[[network]]\ninterface = \"vm-b\"\n"),
        "no interface with id \"vm-b\" in `interfaces`",
        6,
    );
    assert_eq!(e.key.as_deref(), Some("network[0].interface"));
}

#[test]
fn network_needs_interface_or_mac() {
    let msg = "a network entry needs exactly one of `interface` or `mac`";
    one_error("[[network]]\naddresses = [\"10.0.0.2/24\"]\n", msg, 1);
    one_error(
        &format!("{NET_IFACE}[[network]]\ninterface = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n"),
        msg,
        5,
    );
    one_error(
        "[[network]]\nmac = \"nope\"\n",
        "\"nope\" is not a MAC address like 02:00:00:00:00:01",
        2,
    );
}

#[test]
fn network_addresses() {
    let head = format!("{NET_IFACE}[[network]]\ninterface = \"vm-a\"\n");
    for bad in [
        "10.0.0.2",
        "10.0.0.2/33",
        "10.0.0.300/24",
        "fd00::1/129",
        "x/24",
    ] {
        one_error(
            &format!("{head}addresses = [\"10.0.0.3/24\", \"{bad}\"]\n"),
            &format!("{bad:?} is not an address with prefix length like 10.0.0.2/24"),
            7,
        );
    }
    one_error(
        &format!("{head}gateways = [\"10.0.0.1\", \"10.0.0\"]\n"),
        "\"10.0.0\" is not an IP address",
        7,
    );
    one_error(
        &format!("{head}dns = [\"one.one.one.one\"]\n"),
        "\"one.one.one.one\" is not an IP address",
        7,
    );
    let e = one_error(
        &format!("{head}mtu = 67\n"),
        "must be at least 68, found 67",
        7,
    );
    assert_eq!(e.key.as_deref(), Some("network[0].mtu"));
    one_error(
        &format!("{head}mtu = 65536\n"),
        "65536 is more than 65535, the most Linux sets on an interface",
        7,
    );
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write(
        "vm1.toml",
        &format!("{head}addresses = [\"10.0.0.2/24\", \"fd00::2/64\"]\ngateways = [\"10.0.0.1\"]\ndns = [\"fd00::1\"]\nmtu = 1500\n"),
    ));
    assert_eq!(loaded.config.guest.network[0].mtu, Some(1500));
    assert_eq!(
        loaded.config.guest.network[0].mac.to_string(),
        "02:00:00:00:00:01"
    );
}

// --- other values ---------------------------------------------------------------------

#[test]
fn machine_id() {
    one_error(
        "machineId = \"not-a-uuid\"\n",
        "\"not-a-uuid\" is not a machine id (32 hex digits, dashes allowed)",
        1,
    );
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write(
        "vm1.toml",
        "machineId = \"A67472E5-570E-5C8A-B18C-AE3C77701050\"\n",
    ));
    assert_eq!(
        loaded.config.machine_id,
        "a67472e5-570e-5c8a-b18c-ae3c77701050"
    );
}

#[test]
fn machine_id_default_is_derived_from_the_host_name() {
    // sha256("microvm.nix:vm1"), first 32 hex digits, as microvm.nix computes it.
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write("vm1.toml", "vcpu = 1\n"));
    let id = &loaded.config.machine_id;
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        id.split('-').map(str::len).collect::<Vec<_>>(),
        [8, 4, 4, 4, 12]
    );
}

#[test]
fn thread_pool_size() {
    one_error(
        "virtiofsd.threadPoolSize = \"lots\"\n",
        "\"lots\" is neither a number nor \"`nproc`\"",
        1,
    );
    for ok in ["\"`nproc`\"", "\"nproc\"", "\"8\"", "8"] {
        let dir = Dir::new();
        loads(&dir.write("vm1.toml", &format!("virtiofsd.threadPoolSize = {ok}\n")));
    }
}

#[test]
fn resources() {
    one_error("vcpu = 0\n", "must be at least 1, found 0", 1);
    one_error(
        "vcpu = 99999999999\n",
        "99999999999 is more than 255, the most a supported hypervisor boots (x86 APIC ids)",
        1,
    );
    one_error("mem = 0\n", "must be at least 1 MB, found 0", 1);
    one_error(
        "mem = 9223372036854775807\n",
        "9223372036854775807 MB is more than 16777216 MB, the most a supported hypervisor maps",
        1,
    );
}

#[test]
fn host_name_invalid() {
    let e = one_error(
        "hostName = \"my vm\"\n",
        "VM name \"my vm\" contains ' '; use letters, digits, '-', '_' and '.'",
        1,
    );
    assert_eq!(e.key.as_deref(), Some("hostName"));
    one_error(
        "vcpu = 1\nhostName = \"../etc\"\n",
        "VM name \"../etc\" cannot start with '.' or '-'",
        2,
    );
    one_error("hostName = \"\"\n", "a VM name cannot be empty", 1);
    let long = "x".repeat(65);
    one_error(
        &format!("hostName = \"{long}\"\n"),
        &format!("VM name \"{long}\" is 65 bytes long; the limit is 64"),
        1,
    );
}

#[test]
fn default_name_is_the_file_stem_and_a_bad_stem_asks_for_host_name() {
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write("web-1.toml", "vcpu = 1\n"));
    assert_eq!(loaded.config.name.as_str(), "web-1");
    assert_eq!(loaded.config.socket.as_deref(), Some("web-1.sock"));
    let path = dir.write("my vm.toml", "vcpu = 1\n");
    let (_, found) = fails(&path);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].message,
        format!(
            "cannot name the VM after the file {:?} (VM name \"my vm\" contains ' '; use letters, digits, '-', '_' and '.'); set `hostName`",
            path.to_string_lossy()
        )
    );
    assert_eq!(found[0].file.as_deref(), Some(&*path));
    // `hostName` fixes it.
    let path = dir.write("my vm2.toml", "hostName = \"vm2\"\n");
    assert_eq!(loads(&path).0.config.name.as_str(), "vm2");
}

// --- unknown keys, types, enums -------------------------------------------------------

#[test]
fn unknown_keys_are_all_reported_with_suggestions() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "vpcu = 2\nmem = 256\n[[volumes]]\nimgae = \"a.img\"\nsize = 1\nmountpiont = \"/var\"\n[qemu]\nmachien = \"q35\"\n[frobnicate]\nx = 1\n",
    );
    let (_, found) = fails(&path);
    let e = expect(
        &found,
        Severity::Error,
        "unknown key `vpcu`; did you mean `vcpu`?",
        &path,
        1,
    );
    assert_eq!(e.key.as_deref(), Some("vpcu"));
    let e = expect(
        &found,
        Severity::Error,
        "unknown key `imgae`; did you mean `image`?",
        &path,
        4,
    );
    assert_eq!(e.key.as_deref(), Some("volumes[0].imgae"));
    expect(
        &found,
        Severity::Error,
        "unknown key `mountpiont`; did you mean `mountPoint`?",
        &path,
        6,
    );
    expect(
        &found,
        Severity::Error,
        "unknown key `machien`; did you mean `machine`?",
        &path,
        8,
    );
    let far = found
        .iter()
        .find(|d| {
            d.message
                .starts_with("unknown key `frobnicate`; expected one of")
        })
        .unwrap_or_else(|| panic!("{found:#?}"));
    assert_eq!(far.line, Some(9));
    assert!(far.message.contains("`vcpu`"));
    // The misspelt `image` is also missing; that is reported as well.
    expect(
        &found,
        Severity::Error,
        "missing required key `image`",
        &path,
        3,
    );
    assert_eq!(found.len(), 6, "{found:#?}");
}

#[test]
fn type_errors() {
    let e = one_error("vcpu = \"2\"\n", "expected an integer, found a string", 1);
    assert_eq!(e.key.as_deref(), Some("vcpu"));
    one_error("mem = -1\n", "expected a non-negative integer, found -1", 1);
    one_error(
        "vcpu = 1\nmem = 1.5\n",
        "expected an integer, found a float",
        2,
    );
    one_error(
        "balloon = \"yes\"\n",
        "expected true or false, found a string",
        1,
    );
    one_error(
        "kernelParams = \"quiet\"\n",
        "expected a list, found a string",
        1,
    );
    one_error(
        "volumes = { image = \"a\" }\n",
        "expected a list, found a table",
        1,
    );
    one_error("qemu = 1\n", "expected a table, found an integer", 1);
    one_error(
        "[[volumes]]\nimage = \"a.img\"\nsize = \"1G\"\n",
        "expected an integer, found a string",
        3,
    );
    one_error(
        "kernelParams = [\"a\", 2]\n",
        "expected a string, found an integer",
        1,
    );
    one_error_in(
        "vm1.json",
        "{\"vcpu\": 1e400}",
        "expected an integer, found a float",
        1,
    );
    one_error_in(
        "vm1.json",
        "{\n\"mem\":\n18446744073709551616}",
        "expected an integer, found a float",
        3,
    );
    // JSON `null` is "not set": the default applies.
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write("vm1.json", "{\"vcpu\": null}"));
    assert_eq!(loaded.config.vcpu, 1);
}

#[test]
fn unknown_enum_values() {
    let e = one_error(
        "vcpu = 1\nhypervisor = \"vmware\"\n",
        "unknown value \"vmware\"; expected one of `qemu`, `cloud-hypervisor`, `firecracker`, `crosvm`, `kvmtool`, `stratovirt`, `alioth`, `vfkit`",
        2,
    );
    assert_eq!(e.key.as_deref(), Some("hypervisor"));
    one_error(
        "[[shares]]\nproto = \"nfs\"\ntag = \"t\"\nsource = \"/s\"\nmountPoint = \"/t\"\n",
        "unknown value \"nfs\"; expected one of `9p`, `virtiofs`",
        2,
    );
    one_error(
        "storeDiskType = 1\n",
        "expected one of `erofs`, `squashfs`, found an integer",
        1,
    );
}

#[test]
fn kernel_forms() {
    one_error(
        "kernel = { path = \"a\", package = \"b\" }\n",
        "a kernel is one of `path`, `package` or `build`, not several",
        1,
    );
    one_error(
        "kernel = {}\n",
        "a kernel table needs `path`, `package` or `build`",
        1,
    );
    one_error(
        "kernel = { pth = \"a\" }\n",
        "unknown key `pth`; did you mean `path`?",
        1,
    );
}

// --- everything at once ---------------------------------------------------------------

#[test]
fn all_errors_are_reported_at_once() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        r#"vcpu = 2
balloonMem = 128
mem = 16
machineId = "nope"

[[volumes]]
image = "a.img"
mountPoint = "var"
size = 8

[[interfaces]]
type = "bridge"
id = "vm-0123456789abcdef"
mac = "02:00:00:00:00:01"

[[shares]]
tag = "home"
mountPoint = "/home"
"#,
    );
    let (failure, found) = fails(&path);
    let errors: Vec<(&str, Option<usize>)> = found
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.message.as_str(), d.line))
        .collect();
    assert_eq!(
        errors,
        [
            (
                "The balloonMem option has been removed and replaced by the boolean option balloon",
                Some(2)
            ),
            (
                "\"var\" must be an absolute path in the guest (starting with /, without ..)",
                Some(8)
            ),
            ("missing required key `source`", Some(16)),
            (
                "MicroVM vm1: interface name vm-0123456789abcdef is longer than the maximum length of 15 characters on Linux.",
                Some(13)
            ),
            (
                "MicroVM vm1: interface interfaces[0] is of type \"bridge\" but doesn't have a bridge to attach to defined.",
                Some(11)
            ),
            (
                "\"nope\" is not a machine id (32 hex digits, dashes allowed)",
                Some(4)
            ),
        ]
    );
    // The warning comes along, and the failure counts only errors.
    expect(
        &found,
        Severity::Warning,
        "MicroVM vm1: 16 MB of RAM is uncomfortably narrow.",
        &path,
        3,
    );
    assert_eq!(failure.to_string(), "the definition has 6 errors");
    // The rendered form names the file and line of each.
    let rendered = failure.render();
    for line in [2, 3, 4, 8, 11, 13, 16] {
        assert!(
            rendered.contains(&format!("vm1.toml:{line}:")),
            "line {line} missing:\n{rendered}"
        );
    }
}

/// Every number has a range (`ranges::RANGES`): a huge `vcpu` with a macvtap interface
/// once made planning allocate 8 GiB and abort.
#[test]
fn numeric_ranges() {
    one_error(
        "vcpu = 2147483648\n[[interfaces]]\ntype = \"macvtap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n",
        "2147483648 is more than 255, the most a supported hypervisor boots (x86 APIC ids)",
        1,
    );
    one_error(
        "hypervisor = \"firecracker\"\nvcpu = 33\n",
        "33 is more than 32, the most firecracker runs",
        2,
    );
    one_error(
        "hotplugMem = 99999999999\n",
        "99999999999 MB is more than 16777216 MB, the most a supported hypervisor maps",
        1,
    );
    one_error(
        "[[qemu.pcieRootPorts]]\nid = \"p\"\nchassis = 256\n",
        "256 is more than 255, the most qemu's pcie-root-port takes (8 bits)",
        3,
    );
    one_error(
        "virtiofsd.threadPoolSize = \"100000\"\n",
        "100000 is more than 1024, the most virtiofsd threads microvm starts",
        1,
    );
}

#[test]
fn unknown_keys_and_rule_errors_together() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "vpcu = 1\nmem = 0\n[[volumes]]\nimage = \"a.img\"\nsize = 0\n[[network]]\nmtu = 9\n",
    );
    let (_, found) = fails(&path);
    let messages: Vec<&str> = found.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            "unknown key `vpcu`; did you mean `vcpu`?",
            "must be at least 1 MB, found 0",
            "must be at least 1 MiB, found 0",
            "must be at least 68, found 9",
            "a network entry needs exactly one of `interface` or `mac`",
        ]
    );
}

#[test]
fn all_type_errors_are_reported_at_once() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "vcpu = \"two\"\nmem = -1\nhypervisor = \"vmware\"\nvpcu = 1\nkernelParams = [\"a\", 2]\n[[volumes]]\nimage = \"a.img\"\nsize = \"1G\"\n[[volumes]]\nimage = 3\n[vsock]\ncid = 2\n",
    );
    let (_, found) = fails(&path);
    let errors: Vec<(&str, Option<usize>, Option<&str>)> = found
        .iter()
        .map(|d| (d.message.as_str(), d.line, d.key.as_deref()))
        .collect();
    assert_eq!(
        errors,
        [
            (
                "unknown key `vpcu`; did you mean `vcpu`?",
                Some(4),
                Some("vpcu")
            ),
            (
                "expected an integer, found a string",
                Some(1),
                Some("vcpu")
            ),
            (
                "expected a non-negative integer, found -1",
                Some(2),
                Some("mem")
            ),
            (
                "unknown value \"vmware\"; expected one of `qemu`, `cloud-hypervisor`, `firecracker`, `crosvm`, `kvmtool`, `stratovirt`, `alioth`, `vfkit`",
                Some(3),
                Some("hypervisor")
            ),
            (
                "expected a string, found an integer",
                Some(5),
                Some("kernelParams[1]")
            ),
            (
                "expected an integer, found a string",
                Some(8),
                Some("volumes[0].size")
            ),
            (
                "expected a string, found an integer",
                Some(10),
                Some("volumes[1].image")
            ),
            (
                "vsock CID 2 is reserved (0: hypervisor, 1: loopback, 2: host); use 3 or higher",
                Some(12),
                Some("vsock.cid")
            ),
            // The rules still run on what is left once the wrong values are out.
            (
                "MicroVM vm1: volume volumes[1] needs a `size` (MiB) to be created automatically",
                Some(9),
                Some("volumes[1].size")
            ),
        ]
    );
}
