use std::path::PathBuf;

use microvm_spec::config::{Arch, Config};
use microvm_spec::{load_with, LoadOptions};

use super::*;
use crate::MacvtapFd;
use crate::{Artifacts, HostFacts, Shutdown};

/// The inventory's example VM (§2.0); shared with the kvmtool, stratovirt and alioth tests.
pub(crate) const EXAMPLE: &str = r#"
hostName = "vm1"
hypervisor = "crosvm"
vcpu = 2
mem = 512
kernel = "/boot/vmlinuz"
socket = "vm1.sock"

[[root]]
directory = "/srv/root"

[[volumes]]
image = "var.img"
mountPoint = "/var"
size = 1024

[[shares]]
proto = "virtiofs"
tag = "home"
source = "/srv/home"
mountPoint = "/home"

[[interfaces]]
type = "tap"
id = "vm-vm1"
mac = "02:00:00:00:00:01"
"#;

/// Loads a definition written as `vm1.toml` for an x86_64 guest.
pub(crate) fn load(toml: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("vm1.toml");
    std::fs::write(&file, toml).expect("write");
    let options = LoadOptions {
        arch: Some(Arch::X86_64),
        ..LoadOptions::default()
    };
    match load_with(&file, &options) {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("{}", e.render()),
    }
}

pub(crate) fn artifacts() -> Artifacts {
    Artifacts {
        kernel: PathBuf::from("/k/bzImage"),
        vmlinux: Some(PathBuf::from("/k/vmlinux")),
        initrd: PathBuf::from("/i/initrd"),
        store_disk: Some(PathBuf::from("/s/store.img")),
    }
}

fn argv(config: &Config) -> String {
    let inv = plan(config, &artifacts(), &HostFacts::reference()).expect("plans");
    inv.args.join(" ")
}

#[test]
fn example_vm() {
    let config = load(EXAMPLE);
    let inv = plan(&config, &artifacts(), &HostFacts::reference()).expect("plans");
    assert_eq!(inv.program, "crosvm");
    let args = inv.args.join(" ");
    assert!(args.starts_with("run -m 512 -c 2 --serial type=stdout,console=true,stdin=true -p console=ttyS0 reboot=k panic=1"), "{args}");
    assert!(args.contains(" --no-balloon --block path=/s/store.img,ro=true,root=true -s vm1.sock --block path=var.img,o_direct=false,ro=false --vhost-user type=fs,socket=vm1-virtiofs-home.sock --net tap-name=vm-vm1,mac=02:00:00:00:00:01 --initrd /i/initrd /k/vmlinux"), "{args}");
    assert!(!args.contains("--seccomp-log-failures"));
    assert_eq!(
        inv.shutdown,
        Shutdown::CrosvmPowerButton {
            socket: "vm1.sock".into()
        }
    );
    assert!(inv.capabilities.can_shutdown);
    assert_eq!(
        inv.pre_start,
        vec![
            PreStart::RemoveFile("vm1.sock".into()),
            PreStart::CreateDir("/var/empty".into())
        ]
    );
    assert_eq!(inv.helpers.len(), 1);
    assert!(inv.helpers[0].args.contains(&"--tag=home".to_owned()));
    assert_eq!(inv.taps.len(), 1);
    assert!(!inv.taps[0].multi_queue);
}

#[test]
fn seccomp_flag_by_version() {
    let mut config = load(EXAMPLE);
    let mut host = HostFacts::reference();
    host.versions.push((HV, Version::new(0, 1, 0)));
    let inv = plan(&config, &artifacts(), &host).expect("plans");
    assert!(
        !inv.args.contains(&"--seccomp-log-failures".to_owned()),
        "crate version means unknown"
    );
    config.crosvm.version = Some("107.0".into());
    assert!(argv(&config).contains("--seccomp-log-failures"));
    config.crosvm.version = Some("107.1".into());
    assert!(!argv(&config).contains("--seccomp-log-failures"));
    config.crosvm.version = Some("x".into());
    assert!(plan(&config, &artifacts(), &host).is_err());
}

#[test]
fn x86_64_needs_vmlinux() {
    let config = load(EXAMPLE);
    let mut a = artifacts();
    a.vmlinux = None;
    let e = plan(&config, &a, &HostFacts::reference()).expect_err("no vmlinux");
    assert!(e.to_string().contains("vmlinux"), "{e}");
}

#[test]
fn devices_vsock_balloon_macvtap_9p() {
    let config = load(&format!(
        "balloon = true\nvsock.cid = 5\n{EXAMPLE}\n\
         [[interfaces]]\ntype = \"macvtap\"\nid = \"mv1\"\nmac = \"02:00:00:00:00:02\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n\
         [[shares]]\nproto = \"9p\"\ntag = \"data\"\nsource = \"/srv/a,b\"\nmountPoint = \"/data\"\n\
         [[devices]]\nbus = \"pci\"\npath = \"0000:01:00.0\"\n"
    ));
    let inv = plan(&config, &artifacts(), &HostFacts::reference()).expect("plans");
    let args = inv.args.join(" ");
    assert!(args.contains("--balloon-page-reporting"), "{args}");
    assert!(
        args.contains("--net tap-fd=3,mac=02:00:00:00:00:02"),
        "{args}"
    );
    assert!(
        args.contains("--shared-dir /srv/a,b:data:type=p9"),
        "{args}"
    );
    assert!(args.contains("--vsock cid=5"), "{args}");
    assert!(
        args.contains("--vfio /sys/bus/pci/devices/0000:01:00.0,iommu=viommu --initrd"),
        "{args}"
    );
    assert_eq!(
        inv.macvtap_fds,
        vec![MacvtapFd {
            interface: "mv1".into(),
            queue: 0,
            fd: 3
        }]
    );
}

#[test]
fn rejections() {
    let user_net = load(&EXAMPLE.replace("type = \"tap\"", "type = \"user\""));
    let e = plan(&user_net, &artifacts(), &HostFacts::reference()).expect_err("user net");
    assert!(
        e.to_string()
            .contains("Unsupported interface type user for crosvm"),
        "{e}"
    );

    let ro9p = load(&format!(
        "{EXAMPLE}\n[[shares]]\nproto = \"9p\"\ntag = \"d\"\nsource = \"/d\"\nmountPoint = \"/d\"\nreadOnly = true\n"
    ));
    let e = plan(&ro9p, &artifacts(), &HostFacts::reference()).expect_err("ro 9p");
    assert!(
        e.to_string().contains("Readonly 9p share is not supported"),
        "{e}"
    );

    let usb = load(&format!(
        "{EXAMPLE}\n[[devices]]\nbus = \"usb\"\npath = \"vendorid=0x1,productid=0x2\"\n"
    ));
    assert!(plan(&usb, &artifacts(), &HostFacts::reference()).is_err());

    let mut long_serial = load(EXAMPLE);
    long_serial.volumes[0].serial = Some("x".repeat(21));
    assert!(plan(&long_serial, &artifacts(), &HostFacts::reference()).is_err());
}

#[test]
fn graphics_helper() {
    let config = load(&format!("{EXAMPLE}\n[graphics]\nenable = true\n"));
    let inv = plan(&config, &artifacts(), &HostFacts::reference()).expect("plans");
    let gpu = inv
        .helpers
        .iter()
        .find(|h| h.kind == HelperKind::GpuDevice)
        .expect("gpu");
    assert_eq!(gpu.args[..4], ["device", "gpu", "--socket", "vm1-gpu.sock"]);
    assert!(inv
        .args
        .join(" ")
        .contains("--vhost-user type=gpu,socket=vm1-gpu.sock"));
}

#[test]
fn no_socket_means_signal() {
    let mut config = load(EXAMPLE);
    config.socket = None;
    let inv = plan(&config, &artifacts(), &HostFacts::reference()).expect("plans");
    assert_eq!(
        inv.shutdown,
        Shutdown::Signal {
            signal: "SIGTERM".into()
        }
    );
    assert!(!inv.capabilities.can_shutdown);
    assert!(!inv.args.contains(&"-s".to_owned()));
}

#[test]
fn kv_quoting() {
    assert_eq!(kv_value("x", "a.img").expect("valid"), "a.img");
    assert_eq!(kv_value("x", "a,b.img").expect("valid"), "\"a,b.img\"");
    assert_eq!(
        kv_value("x", "a\"b\\c[").expect("valid"),
        "\"a\\\"b\\\\c[\""
    );
    assert_eq!(kv_value("x", "").expect("valid"), "\"\"");
    assert!(kv_value("x", "a\0").is_err());
}

/// crosvm reads a bare first `--block` value as an option when the file name starts with
/// one of its option names (`ro.img,…` → `expected '=' at position 2`): always `path=`.
#[test]
fn block_paths_are_named() {
    for name in ["ro.img", "root.img", "sparse.img", "lock.img", "id.img"] {
        let toml = EXAMPLE.replace("var.img", name);
        let inv = plan(&load(&toml), &artifacts(), &HostFacts::reference()).expect("plans");
        assert!(
            inv.args
                .iter()
                .any(|a| a.starts_with(&format!("path={name},o_direct=false"))),
            "{:?}",
            inv.args
        );
        assert!(
            inv.args.iter().all(|a| !a.starts_with(name)),
            "{:?}",
            inv.args
        );
    }
}

/// The sandbox pivots into `/var/empty` (`cannot create jail` without it), or into
/// `crosvm.pivotRoot`: the one used is created before start.
#[test]
fn jail_directory_is_created() {
    let inv = plan(&load(EXAMPLE), &artifacts(), &HostFacts::reference()).expect("plans");
    assert!(inv
        .pre_start
        .contains(&PreStart::CreateDir("/var/empty".into())));
    let toml = EXAMPLE.replace(
        "socket = \"vm1.sock\"",
        "socket = \"vm1.sock\"\ncrosvm.pivotRoot = \"/run/vm1-jail\"",
    );
    let inv = plan(&load(&toml), &artifacts(), &HostFacts::reference()).expect("plans");
    assert!(inv
        .pre_start
        .contains(&PreStart::CreateDir("/run/vm1-jail".into())));
    assert!(!inv
        .pre_start
        .contains(&PreStart::CreateDir("/var/empty".into())));
}
