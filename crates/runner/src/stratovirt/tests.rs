use super::*;
use crate::crosvm::tests::{artifacts, load, EXAMPLE};
use crate::{HostFacts, MacvtapFd};

fn plan_of(toml: &str) -> Result<Invocation, PlanError> {
    plan(&load(toml), &artifacts(), &HostFacts::reference())
}

#[test]
fn example_vm() {
    let inv = plan_of(EXAMPLE).expect("plans");
    assert_eq!(inv.program, "stratovirt");
    let args = inv.args.join(" ");
    let expected = "-name vm1 -machine microvm,mem-share=on -m 512 -smp 2 -kernel /k/bzImage -initrd /i/initrd \
        -append console=ttyS0 edd=off reboot=t panic=-1";
    assert!(args.starts_with(expected), "{args}");
    // No virtio-rng-device: a stock stratovirt 2.5 has none (hypervisor-cli-notes).
    assert!(!args.contains("rng"), "{args}");
    let expected = "-serial stdio \
        -drive id=store,format=raw,readonly=on,file=/s/store.img,if=none,aio=io_uring,direct=false \
        -device virtio-blk-device,drive=store,id=blk_store -qmp unix:vm1.sock,server,nowait \
        -drive id=vdb,format=raw,if=none,aio=io_uring,file=var.img,direct=off,readonly=off \
        -device virtio-blk-device,drive=vdb,id=blk_vdb \
        -chardev socket,id=fs0,path=vm1-virtiofs-home.sock -device vhost-user-fs-device,chardev=fs0,tag=home,id=fs0 \
        -netdev tap,id=vm-vm1,ifname=vm-vm1,queues=2 \
        -device virtio-net-device,id=net_vm-vm1,netdev=vm-vm1,mac=02:00:00:00:00:01,mq=on";
    assert!(args.ends_with(expected), "{args}");
    assert_eq!(args.matches("queues=").count(), 1);
    assert_eq!(
        inv.shutdown,
        Shutdown::Signal {
            signal: "SIGTERM".into()
        }
    );
    assert_eq!(inv.control_socket.as_deref(), Some("vm1.sock"));
    assert!(inv.taps[0].multi_queue);
    assert!(inv.capabilities.tap_multi_queue);
    assert_eq!(inv.helpers.len(), 1);
    assert!(!inv.helpers[0].args.iter().any(|a| a.starts_with("--tag")));
}

#[test]
fn single_vcpu_macvtap_and_no_virtiofs() {
    let start = EXAMPLE.find("[[shares]]").expect("share");
    let end = EXAMPLE.find("[[interfaces]]").expect("iface");
    let toml = format!(
        "{}{}\n[[interfaces]]\ntype = \"macvtap\"\nid = \"mv1\"\nmac = \"02:00:00:00:00:02\"\nmacvtap.link = \"eth0\"\nmacvtap.mode = \"bridge\"\n",
        &EXAMPLE[..start].replace("vcpu = 2", "vcpu = 1"),
        &EXAMPLE[end..]
    );
    let inv = plan_of(&toml).expect("plans");
    let args = inv.args.join(" ");
    assert!(args.contains("-machine microvm -m"), "{args}");
    assert!(args.contains("-netdev tap,id=mv1,fd=3,queues=1"), "{args}");
    assert!(args.contains("mq=off"), "{args}");
    assert_eq!(
        inv.macvtap_fds,
        vec![MacvtapFd {
            interface: "mv1".into(),
            queue: 0,
            fd: 3
        }]
    );

    let four = toml.replace("vcpu = 1", "vcpu = 4");
    let inv = plan_of(&four).expect("plans");
    assert!(inv
        .args
        .join(" ")
        .contains("-netdev tap,id=mv1,fds=3:4:5:6,queues=4"));
    assert_eq!(inv.macvtap_fds.len(), 4);
}

#[test]
fn rejections() {
    let mut no_socket = load(EXAMPLE);
    no_socket.socket = None;
    let e = plan(&no_socket, &artifacts(), &HostFacts::reference()).expect_err("socket");
    assert!(e.to_string().contains("QMP socket"), "{e}");

    let nine_p = EXAMPLE.replace("proto = \"virtiofs\"", "proto = \"9p\"");
    let e = plan_of(&nine_p).expect_err("9p");
    assert!(
        e.to_string()
            .contains("9p shares not implemented for stratovirt"),
        "{e}"
    );

    let pci = format!("{EXAMPLE}\n[[devices]]\nbus = \"pci\"\npath = \"0000:01:00.0\"\n");
    let e = plan_of(&pci).expect_err("pci");
    assert!(
        e.to_string()
            .contains("PCI configuration for stratovirt is non-functional"),
        "{e}"
    );

    let comma = EXAMPLE.replace("var.img", "v=ar.img");
    assert!(plan_of(&comma).is_err());
}

#[test]
fn ignored_options_warn() {
    let toml = format!("vsock.cid = 9\n{EXAMPLE}\n[graphics]\nenable = true\n");
    let inv = plan_of(&toml).expect("plans");
    assert_eq!(
        inv.warnings,
        [
            "stratovirt ignores `vsock.cid`",
            "stratovirt ignores `graphics.enable`"
        ]
    );
}

/// stratovirt 2.5 takes a balloon with an `id=` (hypervisor-cli-notes, second round).
#[test]
fn balloon() {
    let toml = format!("balloon = true\ndeflateOnOOM = true\n{EXAMPLE}");
    let args = plan_of(&toml).expect("plans").args.join(" ");
    assert!(
        args.ends_with(
            " -device virtio-balloon-device,id=balloon0,deflate-on-oom=true,free-page-reporting=true"
        ),
        "{args}"
    );
}

/// The microvm machine takes raw disks only.
#[test]
fn qcow2_is_refused() {
    let toml = EXAMPLE.replace("size = 1024", "size = 1024\nimageType = \"qcow2\"");
    let e = crate::plan_for(HV, &load(&toml), &artifacts(), &HostFacts::reference())
        .expect_err("qcow2");
    assert!(e.to_string().contains("raw disks only"), "{e}");
}
