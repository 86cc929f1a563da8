use std::io::Write;

use super::*;
use crate::kernel::bzimage::tests::fake_bzimage;
use crate::kernel::elf::synthetic_elf;
use crate::kernel::{Availability, KernelFeature, KernelSource};

const V: &str = "6.12.1-test";

fn gz_bzimage() -> (Vec<u8>, Vec<u8>) {
    let elf = synthetic_elf(&[("Xen", 18, &[1, 2, 3, 4])]);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&elf).expect("gzip");
    let img = fake_bzimage(1, &enc.finish().expect("gzip"), elf.len());
    (img, elf)
}

/// An unpacked Debian-like tree.
fn tree(root: &Path, config: &str) {
    fs::create_dir_all(root.join("boot")).expect("mkdir");
    fs::create_dir_all(root.join(format!("lib/modules/{V}/kernel"))).expect("mkdir");
    fs::write(root.join(format!("boot/vmlinuz-{V}")), gz_bzimage().0).expect("write");
    fs::write(root.join(format!("boot/config-{V}")), config).expect("write");
}

#[test]
fn unpacked_tree() {
    let dir = tempfile::tempdir().expect("tempdir");
    tree(dir.path(), "# CONFIG_9P_FS is not set\nCONFIG_EXT4_FS=y\n");
    let mut k = KernelInfo::from_path(dir.path(), &dir.path().join("cache")).expect("load");
    assert_eq!(k.version.as_deref(), Some(V));
    assert_eq!(k.image, dir.path().join(format!("boot/vmlinuz-{V}")));
    assert_eq!(
        k.modules_dir.as_deref(),
        Some(dir.path().join(format!("lib/modules/{V}")).as_path())
    );
    assert_eq!(k.supports(KernelFeature::Ext4), Availability::Builtin);
    let msg = k
        .require(KernelFeature::NineP)
        .expect_err("must fail")
        .to_string();
    assert_eq!(
        msg,
        format!(
            "kernel {} has no 9p support (CONFIG_9P_FS is not set); use a kernel with 9p, \
             such as Debian's linux-image-amd64, or a virtiofs share",
            k.image.display()
        )
    );

    assert_eq!(
        k.modules_for(&[KernelFeature::Ext4]).expect("ext4"),
        Vec::<String>::new()
    );
    assert!(k
        .modules_for(&[KernelFeature::Ext4, KernelFeature::NineP])
        .is_err());

    assert!(k.vmlinux.is_none());
    let cache = dir.path().join("cache");
    let elf_path = k.ensure_vmlinux(&cache).expect("extract").to_path_buf();
    assert_eq!(fs::read(&elf_path).expect("read"), gz_bzimage().1);
    assert_eq!(k.vmlinux_pvh, Some(true));
    // Cached: the second extraction reuses the file.
    let mut again = KernelInfo::from_path(dir.path(), &cache).expect("load");
    assert_eq!(again.ensure_vmlinux(&cache).expect("cached"), elf_path);
}

#[test]
fn single_image_file_finds_its_neighbours() {
    let dir = tempfile::tempdir().expect("tempdir");
    tree(dir.path(), "CONFIG_VIRTIO_MMIO=m\n");
    let image = dir.path().join(format!("boot/vmlinuz-{V}"));
    let source = KernelSource::from_path(&image).expect("source");
    assert_eq!(source, KernelSource::File(image.clone()));
    let k = KernelInfo::load(&source, dir.path()).expect("load");
    assert_eq!(k.version.as_deref(), Some(V));
    assert!(k.modules_dir.is_some());
    assert_eq!(
        k.supports(KernelFeature::VirtioMmio),
        Availability::Module(vec!["virtio_mmio".into()])
    );
}

#[test]
fn nix_output_with_dev_vmlinux() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (img, elf) = gz_bzimage();
    fs::write(dir.path().join("bzImage"), img).expect("write");
    fs::create_dir_all(dir.path().join("dev")).expect("mkdir");
    fs::write(dir.path().join("dev/vmlinux"), &elf).expect("write");
    fs::create_dir_all(dir.path().join(format!("lib/modules/{V}"))).expect("mkdir");
    let mut k = KernelInfo::from_path(dir.path(), dir.path()).expect("load");
    assert_eq!(k.image, dir.path().join("bzImage"));
    assert_eq!(k.vmlinux, Some(dir.path().join("dev/vmlinux")));
    assert!(k.config.is_none());
    assert_eq!(k.supports(KernelFeature::NineP), Availability::Unknown);
    assert_eq!(
        k.modules_for(&[
            KernelFeature::NineP,
            KernelFeature::VirtioBlk,
            KernelFeature::NineP
        ])
        .expect("unknown is fine"),
        ["9p", "9pnet_virtio", "virtio_blk"]
    );
    assert_eq!(
        k.ensure_vmlinux(dir.path()).expect("vmlinux"),
        dir.path().join("dev/vmlinux")
    );
    assert_eq!(k.vmlinux_pvh, Some(true));
}

#[test]
fn elf_file_is_its_own_vmlinux() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vmlinux");
    fs::write(&path, synthetic_elf(&[])).expect("write");
    let mut k = KernelInfo::from_path(&path, dir.path()).expect("load");
    assert_eq!(k.vmlinux, Some(path.clone()));
    k.ensure_vmlinux(dir.path()).expect("ok");
    assert_eq!(k.vmlinux_pvh, Some(false));
}

#[test]
fn errors_name_the_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let msg = KernelSource::from_path(&missing)
        .expect_err("must fail")
        .to_string();
    assert!(
        msg.contains("nope") && msg.contains("does not exist"),
        "{msg}"
    );
    let junk = dir.path().join("junk");
    fs::write(&junk, b"hello").expect("write");
    let msg = KernelInfo::from_path(&junk, dir.path())
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("junk") && msg.contains("neither"), "{msg}");
    let empty = dir.path().join("empty");
    fs::create_dir(&empty).expect("mkdir");
    let msg = KernelInfo::from_path(&empty, dir.path())
        .expect_err("must fail")
        .to_string();
    assert!(msg.starts_with("no kernel image in"), "{msg}");
}

#[test]
fn stale_vmlinux_scratch_of_dead_processes_is_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = {
        let mut c = std::process::Command::new("true").spawn().expect("true");
        let pid = c.id();
        c.wait().expect("wait");
        pid
    };
    let stale = dir.path().join(format!(".vmlinux.tmp-{dead}"));
    let live = dir
        .path()
        .join(format!(".vmlinux.tmp-{}", std::process::id()));
    let unpacking = dir.path().join(format!(".cloud.tmp-{dead}"));
    fs::create_dir_all(unpacking.join("boot")).expect("mkdir");
    fs::write(&stale, "half").expect("write");
    fs::write(&live, "mine").expect("write");
    remove_stale_scratch(dir.path());
    assert!(!stale.exists() && !unpacking.exists());
    assert!(live.exists());
}
