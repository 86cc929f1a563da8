//! `nix eval --json .#nixosConfigurations.vm1.config.microvm` output loads as a
//! definition: tests/fixtures/nix-eval-example.json is that output for the inventory's
//! example VM (every option present with microvm.nix's default; `vmHostPackages`, which
//! nix cannot serialise, and `balloonMem`, which throws, left out). `hostName` is not part
//! of `config.microvm`, so the name comes from the caller (`microvm … --name vm1`).
//!
//! `kernelParams` is what microvm.nix computes: NixOS's `boot.kernelParams`
//! (`root=fstab` with systemd-initrd, `loglevel=4`) ++ `init=<toplevel>/init` ++
//! `regInfo=…`; the console and reboot parameters are added by each runner. Nix could
//! not print the unset `macvtap.link`/`macvtap.mode` of a tap interface (they have no
//! default), so they are absent, as are the runners that throw for this VM.

use std::path::{Path, PathBuf};

use microvm_spec::config::{InterfaceType, KernelRef, ShareProto, StoreDiskType, ThreadPool};
use microvm_spec::types::Hypervisor;
use microvm_spec::{load_file, load_with, LoadOptions, Loaded};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/nix-eval-example.json")
}

fn load_vm1() -> Loaded {
    let options = LoadOptions {
        name: Some("vm1".parse().expect("a VM name")),
        ..LoadOptions::default()
    };
    match load_with(&fixture(), &options) {
        Ok(loaded) => loaded,
        Err(failure) => panic!("the nix eval output does not load:\n{}", failure.render()),
    }
}

#[test]
fn nix_eval_output_loads_without_warnings() {
    let loaded = load_vm1();
    assert!(
        loaded.warnings.is_empty(),
        "{}",
        loaded.sources.render(&loaded.warnings)
    );
    let c = &loaded.config;
    assert_eq!(c.name.as_str(), "vm1");
    assert_eq!(c.hypervisor, Hypervisor::Qemu);
    assert_eq!((c.vcpu, c.mem), (2, 512));
    assert!(!c.balloon && c.deflate_on_oom && !c.hugepage_mem);
    assert_eq!(
        (c.hotplug_mem, c.hotplugged_mem, c.initial_balloon_mem),
        (0, 0, 0)
    );
    assert_eq!(c.cpu, None);
}

#[test]
fn nix_eval_output_boot_artifacts() {
    let c = load_vm1().config;
    assert_eq!(
        c.kernel,
        Some(KernelRef::Path(PathBuf::from(
            "/nix/store/1h8s2x0ldz5nw7c9kqyg4m3vbfr6jpi2-linux-6.6.58"
        )))
    );
    assert_eq!(
        c.initrd_path.as_deref(),
        Some(Path::new(
            "/nix/store/5d0w7q2kbm9x1hf3zg8ncy6vl4rj1sia-initrd-linux-6.6.58/initrd"
        ))
    );
    assert_eq!(
        c.store_disk.as_deref(),
        Some(Path::new(
            "/nix/store/m2z8k1y0xq9dw5c3bn7hf4lg6vrsjia8-store-disk.erofs"
        ))
    );
    assert!(c.store_on_disk && !c.system_symlink);
    assert_eq!(c.store_disk_type, StoreDiskType::Erofs);
    assert_eq!(
        c.store_disk_erofs_flags.as_deref(),
        Some(&["-zlz4hc".to_owned(), "-Eztailpacking".to_owned()][..])
    );
    assert_eq!(
        c.kernel_params,
        [
            "root=fstab",
            "loglevel=4",
            "init=/nix/store/zf9mb2x5k1q8cw3d0n4yhl7gvr6sjia1-nixos-system-vm1-24.11/init",
            "regInfo=/nix/store/c3yq1k8z0dw5x2nm9fb7hg4lv6rsjia2-closure-info/registration",
        ]
    );
}

#[test]
fn nix_eval_output_devices() {
    let c = load_vm1().config;
    assert_eq!(c.volumes.len(), 1);
    let v = &c.volumes[0];
    assert_eq!(v.image, "var.img");
    assert_eq!(v.mount_point.as_deref(), Some("/var"));
    assert_eq!(v.size, Some(1024));
    assert!(v.auto_create && !v.read_only && !v.direct);
    assert_eq!((v.fs_type.as_str(), v.label.as_deref()), ("ext4", None));

    assert_eq!(c.shares.len(), 1);
    let s = &c.shares[0];
    assert_eq!(
        (s.tag.as_str(), s.source.as_str(), s.mount_point.as_str()),
        ("home", "/srv/home", "/home")
    );
    assert_eq!(s.proto, ShareProto::Virtiofs);
    assert_eq!(s.socket.as_deref(), Some("vm1-virtiofs-home.sock"));
    assert!(s.posix_acl);

    assert_eq!(c.interfaces.len(), 1);
    let i = &c.interfaces[0];
    assert_eq!(i.kind, InterfaceType::Tap);
    assert_eq!(i.id.as_str(), "vm-vm1");
    assert_eq!(i.mac.to_string(), "02:00:00:00:00:01");
    assert_eq!((i.bridge.as_deref(), i.macvtap.as_ref()), (None, None));

    assert_eq!(c.socket.as_deref(), Some("vm1.sock"));
    assert_eq!(c.graphics.socket, "vm1-gpu.sock");
    assert_eq!(c.vsock.cid, None);
    assert_eq!(c.machine_id, "6bcc7e1a-4e54-07b1-3402-a69fef2434c0");
}

#[test]
fn nix_eval_output_hypervisor_options() {
    let c = load_vm1().config;
    assert_eq!(c.qemu.machine, "microvm");
    assert!(c.qemu.serial_console);
    assert_eq!(
        c.qemu.package.as_deref(),
        Some(Path::new(
            "/nix/store/n6y2b9x1kq0dz5c8wm3hf7lg4vrsjia3-qemu-host-cpu-only-9.1.2"
        ))
    );
    assert_eq!(c.virtiofsd.thread_pool_size, ThreadPool::Nproc);
    assert_eq!(c.virtiofsd.group.as_deref(), Some("kvm"));
    assert_eq!(
        c.virtiofsd.package.as_deref(),
        Some(Path::new(
            "/nix/store/r7z1k2y0xq9dm8c3wn5hf4lg6vbsjia0-virtiofsd-1.13.0"
        ))
    );
    assert!(c.bin_scripts.contains_key("tap-up"));
    assert!(c.pretty_procnames && c.register_closure && c.optimize);
}

#[test]
fn the_machine_id_microvm_nix_derives_is_the_one_microvm_derives() {
    // The fixture carries microvm.nix's default; without it the same value is computed.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vm1.toml");
    std::fs::write(&path, "vcpu = 2\n").expect("write");
    let loaded = load_file(&path).expect("loads");
    assert_eq!(loaded.config.machine_id, load_vm1().config.machine_id);
}

#[test]
fn without_a_name_the_file_stem_names_the_vm() {
    let loaded = load_file(&fixture()).expect("loads");
    assert_eq!(loaded.config.name.as_str(), "nix-eval-example");
    // Values nix computed from hostName stay as nix wrote them.
    assert_eq!(loaded.config.socket.as_deref(), Some("vm1.sock"));
}
