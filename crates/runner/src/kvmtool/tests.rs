use super::*;
use crate::crosvm::tests::{artifacts, load, EXAMPLE};
use crate::{HostFacts, MacvtapFd};

/// The example VM without its virtiofs share, which kvmtool refuses.
fn example() -> String {
    let start = EXAMPLE.find("[[shares]]").expect("share");
    let end = EXAMPLE.find("[[interfaces]]").expect("iface");
    format!("{}{}", &EXAMPLE[..start], &EXAMPLE[end..])
}

fn plan_of(toml: &str) -> Result<Invocation, PlanError> {
    plan(&load(toml), &artifacts(), &HostFacts::reference())
}

#[test]
fn example_vm() {
    let inv = plan_of(&example()).expect("plans");
    assert_eq!(inv.program, "lkvm");
    let args = inv.args.join(" ");
    assert!(
        args.starts_with("run --name vm1 -m 512 -c 2 --console serial --rng -k /k/bzImage -i /i/initrd -p console=ttyS0 reboot=k panic=1"),
        "{args}"
    );
    assert!(
        args.ends_with(
            " -d /s/store.img,ro -d var.img -n mode=tap,tapif=vm-vm1,guest_mac=02:00:00:00:00:01"
        ),
        "{args}"
    );
    assert_eq!(inv.env, vec![("HOME".to_owned(), ".".to_owned())]);
    assert_eq!(
        inv.shutdown,
        Shutdown::Signal {
            signal: "SIGTERM".into()
        }
    );
    assert!(!inv.capabilities.can_shutdown);
    assert_eq!(inv.control_socket, None);
}

#[test]
fn volumes_balloon_9p_net_devices() {
    let toml = format!(
        "balloon = true\nvsock.cid = 7\n{}\n\
         [[volumes]]\nimage = \"/data/b.img\"\nmountPoint = \"/b\"\nsize = 10\ndirect = true\nreadOnly = true\nserial = \"b\"\n\
         [[shares]]\nproto = \"9p\"\ntag = \"d\"\nsource = \"/srv/d\"\nmountPoint = \"/d\"\n\
         [[interfaces]]\ntype = \"user\"\nid = \"u1\"\nmac = \"02:00:00:00:00:03\"\n\
         [[interfaces]]\ntype = \"macvtap\"\nid = \"mv1\"\nmac = \"02:00:00:00:00:02\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n\
         [[devices]]\nbus = \"pci\"\npath = \"0000:01:00.0\"\n",
        example()
    );
    let inv = plan_of(&toml).expect("plans");
    let args = inv.args.join(" ");
    for part in [
        "-d /s/store.img,ro --balloon -d var.img -d /data/b.img,direct,ro",
        "--9p /srv/d,d",
        "-n mode=user,guest_mac=02:00:00:00:00:03",
        "-n mode=tap,tapif=/dev/fd/3,fd=3,guest_mac=02:00:00:00:00:02",
        "--vfio-pci 0000:01:00.0 --vsock 7",
    ] {
        assert!(args.contains(part), "{part} in {args}");
    }
    assert_eq!(
        inv.macvtap_fds,
        vec![MacvtapFd {
            interface: "mv1".into(),
            queue: 0,
            fd: 3
        }]
    );
    assert_eq!(
        inv.warnings,
        vec!["Volume serial is not supported for kvmtool".to_owned()]
    );
}

#[test]
fn rejections() {
    let e = plan_of(EXAMPLE).expect_err("virtiofs");
    assert!(
        e.to_string()
            .contains("virtiofs shares not implemented for kvmtool"),
        "{e}"
    );

    let bridge = example().replace("type = \"tap\"", "type = \"bridge\"\nbridge = \"br0\"");
    assert!(plan_of(&bridge).is_err());

    let comma = example().replace("var.img", "v,ar.img");
    let e = plan_of(&comma).expect_err("comma");
    assert!(e.to_string().contains("','"), "{e}");

    let mut too_many = example();
    for i in 0..4 {
        too_many.push_str(&format!(
            "[[volumes]]\nimage = \"v{i}.img\"\nmountPoint = \"/v{i}\"\nsize = 1\n"
        ));
    }
    let e = plan_of(&too_many).expect_err("disks");
    assert!(e.to_string().contains("at most 4 disks"), "{e}");
}

/// Without any `-n`, lkvm adds a user-mode NIC of its own: `-n mode=none` when the VM has
/// no interfaces.
#[test]
fn no_interfaces_means_no_nic() {
    let toml = example();
    let start = toml.find("[[interfaces]]").expect("iface");
    let inv = plan_of(&toml[..start]).expect("plans");
    assert_eq!(inv.args.iter().filter(|a| *a == "-n").count(), 1);
    assert!(
        inv.args.join(" ").contains("-n mode=none"),
        "{:?}",
        inv.args
    );
    let inv = plan_of(&toml).expect("plans");
    assert!(!inv.args.iter().any(|a| a == "mode=none"));
}
