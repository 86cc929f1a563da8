use std::io::Write;

use super::*;

const V: &str = "6.12.1-test";

/// A synthetic `lib/modules/<V>` whose module files are fake ELFs named after themselves.
fn tree(root: &Path) -> PathBuf {
    let dir = root.join("lib/modules").join(V);
    let files = [
        "kernel/drivers/virtio/virtio_mmio.ko.xz",
        "kernel/drivers/block/virtio_blk.ko.xz",
        "kernel/lib/libcrc32c.ko.xz",
        "kernel/fs/erofs/erofs.ko.xz",
        "kernel/fs/netfs/netfs.ko.xz",
        "kernel/net/9p/9pnet.ko.xz",
        "kernel/net/9p/9pnet_virtio.ko.xz",
        "kernel/fs/9p/9p.ko.xz",
        "kernel/crypto/crc32c_generic.ko.xz",
        "kernel/arch/x86/crypto/crc32c-intel.ko.xz",
        "kernel/fs/a.ko",
        "kernel/fs/b.ko",
    ];
    for f in files {
        let path = dir.join(f);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(&path, b"not really compressed").expect("write");
    }
    let dep = "\
kernel/drivers/virtio/virtio_mmio.ko.xz:
kernel/drivers/block/virtio_blk.ko.xz:
kernel/lib/libcrc32c.ko.xz:
kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz
kernel/crypto/crc32c_generic.ko.xz:
kernel/arch/x86/crypto/crc32c-intel.ko.xz:
kernel/fs/a.ko: kernel/fs/b.ko
kernel/fs/b.ko: kernel/fs/a.ko
";
    fs::write(dir.join("modules.dep"), dep).expect("write");
    fs::write(
        dir.join("modules.builtin"),
        "kernel/fs/ext4/ext4.ko\nkernel/drivers/virtio/virtio_pci.ko\n",
    )
    .expect("write");
    fs::write(
        dir.join("modules.softdep"),
        "# Soft dependencies extracted from modules themselves.\nsoftdep libcrc32c pre: crc32c\n",
    )
    .expect("write");
    fs::write(
        dir.join("modules.alias"),
        "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias virtio:d00000002v* virtio_blk\n",
    )
    .expect("write");
    dir
}

fn names(mods: &[ResolvedModule]) -> Vec<&str> {
    mods.iter().map(|m| m.name.as_str()).collect()
}

#[test]
fn closure_in_load_order() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = tree(root.path());
    let index = ModuleIndex::open(&dir, root.path()).expect("open");
    let mods = index
        .resolve(&[
            "virtio-mmio",
            "virtio_blk",
            "erofs",
            "ext4",
            "9p",
            "9pnet_virtio",
        ])
        .expect("resolve");
    assert_eq!(
        names(&mods),
        [
            "virtio_mmio",
            "virtio_blk",
            "crc32c_generic",
            "libcrc32c",
            "erofs",
            "netfs",
            "9pnet",
            "9p",
            "9pnet_virtio"
        ]
    );
    assert_eq!(
        mods[0].path,
        dir.join("kernel/drivers/virtio/virtio_mmio.ko.xz")
    );
    assert_eq!(mods[0].compression, ModuleCompression::Xz);
    assert!(index.is_builtin("virtio-pci"));
    assert!(index.has_module("crc32c_intel"));
}

#[test]
fn soft_dependency_served_by_a_builtin_is_skipped() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = tree(root.path());
    fs::write(
        dir.join("modules.builtin.modinfo"),
        b"crc32c_generic.alias=crc32c-generic\0crc32c_generic.alias=crc32c\0",
    )
    .expect("write");
    let mods = resolve_modules(&dir, &["erofs"], root.path()).expect("resolve");
    assert_eq!(names(&mods), ["libcrc32c", "erofs"]);
}

#[test]
fn missing_module_names_module_and_version() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = tree(root.path());
    let err = resolve_modules(&dir, &["virtio_blk", "vsock"], root.path()).expect_err("must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("vsock") && msg.contains(V) && msg.contains("neither built into"),
        "{msg}"
    );
}

#[test]
fn cycle_is_an_error() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = tree(root.path());
    let msg = resolve_modules(&dir, &["a"], root.path())
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("cycle"), "{msg}");
}

#[test]
fn bad_dep_line_names_file_and_line() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = tree(root.path());
    fs::write(dir.join("modules.dep"), "kernel/x.ko:\ngarbage\n").expect("write");
    let msg = resolve_modules(&dir, &["x"], root.path())
        .expect_err("must fail")
        .to_string();
    assert!(msg.contains("modules.dep line 2"), "{msg}");
}

#[test]
fn decompresses_modules() {
    let root = tempfile::tempdir().expect("tempdir");
    let elf = b"\x7fELF\x02\x01\x01 a kernel module".repeat(100);
    let write = |name: &str, bytes: Vec<u8>| {
        let p = root.path().join(name);
        fs::write(&p, bytes).expect("write");
        p
    };
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
    xz.write_all(&elf).expect("xz");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&elf).expect("gz");
    let cases = [
        (write("m.ko", elf.clone()), ModuleCompression::None),
        (
            write("m.ko.xz", xz.finish().expect("xz")),
            ModuleCompression::Xz,
        ),
        (
            write("m.ko.zst", zstd::encode_all(&elf[..], 3).expect("zstd")),
            ModuleCompression::Zstd,
        ),
        (
            write("m.ko.gz", gz.finish().expect("gz")),
            ModuleCompression::Gzip,
        ),
    ];
    for (path, compression) in cases {
        let m = ResolvedModule {
            name: "m".into(),
            path,
            compression,
        };
        assert_eq!(m.read_plain().expect("plain"), elf, "{compression:?}");
    }
    let bad = ResolvedModule {
        name: "m".into(),
        path: write("bad.ko", b"text".to_vec()),
        compression: ModuleCompression::None,
    };
    let msg = bad.read_plain().expect_err("must fail").to_string();
    assert!(msg.contains("bad.ko"), "{msg}");
}
