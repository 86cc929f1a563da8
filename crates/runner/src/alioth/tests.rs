use super::*;
use crate::crosvm::tests::{artifacts, load, EXAMPLE};
use crate::{HostFacts, MacvtapFd};

fn plan_of(toml: &str) -> Result<Invocation, PlanError> {
    plan(&load(toml), &artifacts(), &HostFacts::reference())
}

#[test]
fn example_vm() {
    let inv = plan_of(EXAMPLE).expect("plans");
    assert_eq!(inv.program, "alioth");
    let args = inv.args.join(" ");
    let expected =
        "boot --memory size=512M,backend=memfd,shared=true --cpu count=2 --pvh /k/vmlinux \
        -i /i/initrd -c console=ttyS0 reboot=k panic=1";
    assert!(args.starts_with(expected), "{args}");
    let expected = " --entropy --blk file,path=/s/store.img,readonly=true \
        --blk file,path=var.img,readonly=false --fs vu,socket=vm1-virtiofs-home.sock,tag=home \
        --net tap,if=vm-vm1,mac=02:00:00:00:00:01,mtu=1500,qp=2";
    assert!(args.ends_with(expected), "{args}");
    assert!(inv.taps[0].multi_queue);
    assert_eq!(
        inv.shutdown,
        Shutdown::Signal {
            signal: "SIGTERM".into()
        }
    );
    assert_eq!(inv.helpers.len(), 1);
}

#[test]
fn bzimage_objects_vsock_warnings() {
    let start = EXAMPLE.find("[[shares]]").expect("share");
    let end = EXAMPLE.find("[[interfaces]]").expect("iface");
    let toml = format!(
        "vsock.cid = 4\n{}[[volumes]]\nimage = \"id_a,b=c.img\"\nmountPoint = \"/x\"\nsize = 1\nserial = \"s\"\ndirect = true\nreadOnly = true\n{}",
        &EXAMPLE[..start].replace("vcpu = 2", "vcpu = 1"),
        &EXAMPLE[end..]
    );
    let config = load(&toml);
    let mut a = artifacts();
    a.vmlinux = None;
    let inv = plan(&config, &a, &HostFacts::reference()).expect("plans");
    let args = inv.args.join(" ");
    assert!(
        args.contains("--memory size=512M,backend=memfd --cpu count=1 -k /k/bzImage"),
        "{args}"
    );
    assert!(
        args.contains("--blk file,path=id_0,readonly=true"),
        "{args}"
    );
    assert!(
        args.contains("qp=1 --vsock vhost,cid=4 -o id_0,id_a,b=c.img"),
        "{args}"
    );
    assert!(!inv.taps[0].multi_queue);
    assert_eq!(
        inv.warnings,
        [
            "Volume serial is not supported for alioth",
            "Volume direct IO is not supported for alioth"
        ]
    );
}

#[test]
fn rejections() {
    for (toml, message) in [
        (
            EXAMPLE.replace("proto = \"virtiofs\"", "proto = \"9p\""),
            "9p shares not implemented for alioth",
        ),
        (
            EXAMPLE.replace("type = \"tap\"", "type = \"user\""),
            "interface type user is not supported by alioth",
        ),
        (
            format!("{EXAMPLE}\n[[devices]]\nbus = \"pci\"\npath = \"0000:01:00.0\"\n"),
            "PCI/USB passthrough is not supported on alioth",
        ),
    ] {
        let e = plan_of(&toml).expect_err(message);
        assert!(e.to_string().contains(message), "{e}");
    }
}

/// alioth 0.12 takes `--balloon free_page_reporting=true` and a macvtap as `tap=<char
/// device>` (hypervisor-cli-notes, second round); the original refused both.
#[test]
fn balloon_and_macvtap() {
    let toml = format!(
        "balloon = true\n{EXAMPLE}\n[[interfaces]]\ntype = \"macvtap\"\nid = \"mvt1\"\nmac = \"02:00:00:00:00:02\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n"
    );
    let inv =
        crate::plan_for(HV, &load(&toml), &artifacts(), &HostFacts::reference()).expect("plans");
    let args = inv.args.join(" ");
    assert!(
        args.contains(
            "qp=2 --net tap,tap=/dev/fd/3,mac=02:00:00:00:00:02,mtu=1500 --balloon free_page_reporting=true"
        ),
        "{args}"
    );
    assert_eq!(
        inv.macvtap_fds,
        [MacvtapFd {
            interface: "mvt1".into(),
            queue: 0,
            fd: 3
        }]
    );
    assert_eq!(inv.taps.len(), 1);
}

/// alioth reads every disk as raw: a qcow2 volume would show the guest qcow2 bytes.
#[test]
fn qcow2_is_refused() {
    let toml = EXAMPLE.replace("size = 1024", "size = 1024\nimageType = \"qcow2\"");
    let e = crate::plan_for(HV, &load(&toml), &artifacts(), &HostFacts::reference())
        .expect_err("qcow2");
    assert!(
        e.to_string().contains("alioth opens every disk as raw"),
        "{e}"
    );
}
