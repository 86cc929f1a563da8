use microvm_spec::config::{Interface, InterfaceType, KvmMode, Macvtap, MacvtapMode};

use super::plan;
use crate::testutil::example;
use crate::{Artifacts, HostFacts, PlanError, Shutdown};

fn args(c: &microvm_spec::config::Config, host: &HostFacts) -> Vec<String> {
    plan(c, &Artifacts::placeholders(), host)
        .expect("plan")
        .args
}

#[test]
fn example_vm_matches_the_inventory_with_later_fixes() {
    let inv = plan(
        &example(),
        &Artifacts::placeholders(),
        &HostFacts::reference(),
    )
    .expect("plan");
    let line = inv.args.join(" ");
    let expected = [
        "-name vm1",
        "-M microvm,accel=kvm:tcg,acpi=on,mem-merge=on,pcie=on,pic=off,pit=off,rtc=on,usb=off",
        "-m 512M -smp 2 -nodefaults -no-user-config -no-reboot",
        "-kernel $KERNEL/bzImage -initrd $INITRD",
        "-chardev stdio,id=stdio,signal=off -device virtio-rng-pci -serial chardev:stdio",
        "-enable-kvm -cpu host,+x2apic,-sgx -device i8042",
        "-append earlyprintk=ttyS0 console=ttyS0 reboot=t panic=-1 init=/sbin/init",
        "-drive id=store,format=raw,read-only=on,file=$STORE,if=none,aio=io_uring",
        "-device virtio-blk-pci,drive=store,disable-legacy=on",
        "-nographic -sandbox on -qmp unix:vm1.sock,server=on,wait=off",
        "-drive id=vdb,format=raw,file=var.img,if=none,aio=io_uring,discard=unmap,read-only=off",
        "-device virtio-blk-pci,drive=vdb",
        "-object memory-backend-memfd,id=mem,size=512M,share=on -numa node,memdev=mem",
        "-chardev socket,id=fs0,path=vm1-virtiofs-home.sock -device vhost-user-fs-pci,chardev=fs0,tag=home",
        "-netdev tap,id=vm-vm1,ifname=vm-vm1,script=no,downscript=no,queues=2",
        "-device virtio-net-pci,netdev=vm-vm1,mac=02:00:00:00:00:01,romfile=,mq=on,vectors=6",
    ];
    let mut rest = line.as_str();
    for part in expected {
        let at = rest
            .find(part)
            .unwrap_or_else(|| panic!("{part:?} not found in order in {line}"));
        rest = &rest[at + part.len()..];
    }
    assert_eq!(
        inv.shutdown,
        Shutdown::Qmp {
            socket: "vm1.sock".into(),
            command: "system_powerdown".into()
        }
    );
    assert_eq!(inv.helpers.len(), 1);
    assert_eq!(
        inv.helpers[0].args.join(" "),
        "--socket-path=vm1-virtiofs-home.sock --socket-group=kvm --shared-dir=/srv/home --rlimit-nofile 1048576 --thread-pool-size 4 --posix-acl --xattr"
    );
    assert!(inv.taps[0].multi_queue);
    assert!(line.contains("-device virtserialport,chardev=microvm-ctl,name=microvm.ctl"));
}

#[test]
fn mmio_without_shares() {
    let mut c = example();
    c.shares.clear();
    let line = args(&c, &HostFacts::reference()).join(" ");
    assert!(line.contains("pcie=off"));
    assert!(
        line.contains("-device virtio-blk-device,drive=store "),
        "{line}"
    );
    assert!(
        line.ends_with("-device virtio-net-device,netdev=vm-vm1,mac=02:00:00:00:00:01"),
        "{line}"
    );
    assert!(!line.contains("memfd"));
}

/// `-device virtio-keyboard-pci` from extraArgs fails on `pcie=off` (`No 'PCI' bus found
/// for device 'virtio-keyboard-pci'`, hypervisor-cli-notes): such a VM gets PCI.
#[test]
fn extra_args_with_pci_devices_get_pci() {
    let mut c = example();
    c.shares.clear();
    c.qemu.extra_args = vec!["-device".into(), "virtio-keyboard-pci".into()];
    let line = args(&c, &HostFacts::reference()).join(" ");
    assert!(line.contains("pcie=on"), "{line}");
    assert!(line.ends_with("-device virtio-keyboard-pci"), "{line}");
    c.qemu.extra_args = vec!["-device".into(), "virtio-keyboard-device".into()];
    let line = args(&c, &HostFacts::reference()).join(" ");
    assert!(line.contains("pcie=off"), "{line}");
}

#[test]
fn tcg_fallback() {
    let host = HostFacts {
        kvm: false,
        tsc_khz: Some(2_596_000),
        ..HostFacts::reference()
    };
    let inv = plan(&example(), &Artifacts::placeholders(), &host).expect("plan");
    let line = inv.args.join(" ");
    assert!(line.contains("accel=tcg,"));
    assert!(!line.contains("-enable-kvm"));
    assert!(line.contains("-cpu max"));
    assert!(line.contains("-kernel $KERNEL/vmlinux"));
    assert!(inv.kernel_cmdline.contains(" tsc_early_khz=2596000"));
    assert_eq!(inv.warnings.len(), 1);

    let mut c = example();
    c.kvm = KvmMode::Required;
    match plan(&c, &Artifacts::placeholders(), &host) {
        Err(PlanError::Invalid { message, .. }) => assert!(message.contains("KVM is not usable")),
        other => panic!("{other:?}"),
    }
    c.kvm = KvmMode::Disabled;
    assert!(args(&c, &HostFacts::reference())
        .join(" ")
        .contains("accel=tcg,"));
}

#[test]
fn macvtap_fd_numbering() {
    let mut c = example();
    c.vcpu = 2;
    c.interfaces = ["mv0", "mv1"]
        .iter()
        .enumerate()
        .map(|(i, id)| Interface {
            kind: InterfaceType::Macvtap,
            id: id.parse().expect("id"),
            mac: format!("02:00:00:00:01:0{i}").parse().expect("mac"),
            macvtap: Some(Macvtap {
                link: "eth0".into(),
                mode: MacvtapMode::Bridge,
            }),
            bridge: None,
            vhost: false,
        })
        .collect();
    let inv = plan(&c, &Artifacts::placeholders(), &HostFacts::reference()).expect("plan");
    let fds: Vec<(String, u32, u32)> = inv
        .macvtap_fds
        .iter()
        .map(|m| (m.interface.clone(), m.queue, m.fd))
        .collect();
    assert_eq!(
        fds,
        [
            ("mv0".into(), 0, 3),
            ("mv0".into(), 1, 4),
            ("mv1".into(), 0, 5),
            ("mv1".into(), 1, 6)
        ]
    );
    let line = inv.args.join(" ");
    assert!(line.contains("-netdev tap,id=mv0,fds=3:4 "));
    assert!(line.contains("-netdev tap,id=mv1,fds=5:6 "));
    assert!(inv.taps.is_empty());
}

#[test]
fn commas_in_paths_are_doubled() {
    let mut c = example();
    c.volumes[0].image = "a,b.img".into();
    assert!(args(&c, &HostFacts::reference())
        .iter()
        .any(|a| a.contains("file=a,,b.img,")));
}

/// One vCPU under TCG keeps the kernel's SMP code (`noreplace-smp`): the switch to
/// uniprocessor code costs a page-table switch per patched instruction there. With more
/// vCPUs there is no switch, and under KVM it is cheap.
#[test]
fn tcg_one_vcpu_keeps_smp_code() {
    let tcg = HostFacts {
        kvm: false,
        tsc_khz: Some(2_596_000),
        ..HostFacts::reference()
    };
    let cmdline = |vcpu: u32, host: &HostFacts| {
        let mut c = example();
        c.vcpu = vcpu;
        plan(&c, &Artifacts::placeholders(), host)
            .expect("plan")
            .kernel_cmdline
    };
    assert!(cmdline(1, &tcg).ends_with(" tsc_early_khz=2596000 tsc=reliable noreplace-smp"));
    assert!(!cmdline(2, &tcg).contains("noreplace-smp"));
    let kvm = cmdline(1, &HostFacts::reference());
    assert!(
        !kvm.contains("noreplace-smp") && !kvm.contains("tsc="),
        "{kvm}"
    );
}
