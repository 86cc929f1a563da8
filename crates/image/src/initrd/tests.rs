use std::io::Read;

use super::*;
use crate::modules::ModuleCompression;

struct Read1 {
    name: String,
    mode: u32,
    ino: u32,
    mtime: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Reads a cpio newc archive back with the cpio crate.
fn entries(mut archive: &[u8]) -> Vec<Read1> {
    let mut out = Vec::new();
    loop {
        let mut r = cpio::NewcReader::new(archive).expect("newc entry");
        if r.entry().is_trailer() {
            break;
        }
        let e = r.entry();
        let mut item = Read1 {
            name: e.name().to_string(),
            mode: e.mode(),
            ino: e.ino(),
            mtime: e.mtime(),
            rdev: (e.rdev_major(), e.rdev_minor()),
            data: Vec::new(),
        };
        r.read_to_end(&mut item.data).expect("data");
        archive = r.finish().expect("finish");
        out.push(item);
    }
    out
}

fn module_file(dir: &Path, name: &str) -> ResolvedModule {
    let path = dir.join(format!("{name}.ko.zst"));
    let elf = [&b"\x7fELF"[..], name.as_bytes()].concat();
    fs::write(&path, zstd::encode_all(&elf[..], 1).expect("zstd")).expect("write");
    ResolvedModule {
        name: name.to_string(),
        path,
        compression: ModuleCompression::Zstd,
    }
}

fn sample(dir: &Path) -> (InitrdBuilder, Vec<String>) {
    let mut b = InitrdBuilder::new();
    b.init(b"\x7fELF init".to_vec()).expect("init");
    let mods = [module_file(dir, "virtio_mmio"), module_file(dir, "erofs")];
    let paths = b.add_modules(&mods).expect("modules");
    b.add_file(PLAN_PATH, 0o644, b"{}".to_vec()).expect("plan");
    (b, paths)
}

#[test]
fn layout_and_metadata() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, paths) = sample(dir.path());
    assert_eq!(
        paths,
        [
            "/microvm/modules/virtio_mmio.ko",
            "/microvm/modules/erofs.ko"
        ]
    );
    let cpio = b.cpio().expect("cpio");
    let got = entries(&cpio);
    let names: Vec<&str> = got.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dev",
            "dev/console",
            "init",
            "microvm",
            "microvm/modules",
            "microvm/modules/erofs.ko",
            "microvm/modules/virtio_mmio.ko",
            "microvm/plan.json",
            "newroot",
            "proc",
            "run",
            "sys",
            "tmp"
        ]
    );
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.ino, i as u32 + 1);
        assert_eq!(e.mtime, 0);
    }
    let console = &got[1];
    assert_eq!(console.mode, 0o020600);
    assert_eq!(console.rdev, (5, 1));
    assert_eq!(got[2].mode, 0o100755);
    assert_eq!(got[2].data, b"\x7fELF init");
    assert_eq!(got[5].data, b"\x7fELFerofs", "modules are decompressed");
    assert_eq!(got[12].mode, 0o041777);
}

#[test]
fn deterministic_and_padded() {
    let dir = tempfile::tempdir().expect("tempdir");
    for compression in [
        InitrdCompression::None,
        InitrdCompression::Gzip,
        InitrdCompression::Zstd,
    ] {
        let a = sample(dir.path())
            .0
            .compression(compression)
            .build()
            .expect("a");
        let b = sample(dir.path())
            .0
            .compression(compression)
            .build()
            .expect("b");
        assert!(a == b, "{compression:?} output differs between runs");
        assert_eq!(a.len() % 4096, 64, "{compression:?}");
    }
}

#[test]
fn pad_edges() {
    for len in [0usize, 63, 64, 65, 4095, 4096, 4160, 10_000] {
        let mut v = vec![1u8; len];
        pad(&mut v);
        assert_eq!(v.len() % 4096, 64);
        assert!(v.len() >= len && v.len() < len + 4096);
    }
}

#[test]
fn written_file_is_readable_by_cpio_tool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (b, _) = sample(dir.path());
    let out = dir.path().join("initrd.img");
    let size = b.write_to(&out).expect("write");
    assert_eq!(fs::metadata(&out).expect("meta").len(), size);
    // Uncompressed by default: the archive, then the zero padding.
    let bytes = fs::read(&out).expect("read");
    let cpio = b.cpio().expect("cpio");
    assert_eq!(&bytes[..cpio.len()], &cpio[..]);
    assert!(bytes[cpio.len()..].iter().all(|&z| z == 0));
    assert_eq!(bytes.len() % PAD_BLOCK, PAD_REMAINDER);
    // cpio(1) reads the padded file as it is, as the kernel does.
    let Ok(output) = std::process::Command::new("cpio")
        .args(["-t", "--quiet"])
        .stdin(fs::File::open(&out).expect("initrd"))
        .output()
    else {
        eprintln!("skipping the cpio(1) check: cpio is not installed");
        return;
    };
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(listing.lines().any(|l| l == "dev/console"), "{listing}");
    assert!(
        listing.lines().any(|l| l == "microvm/plan.json"),
        "{listing}"
    );
}

#[test]
fn rejects_bad_paths() {
    let mut b = InitrdBuilder::new();
    for p in ["relative", "/", "/a/../b", "/a//b"] {
        let msg = b
            .add_file(p, 0o644, Vec::new())
            .expect_err("must fail")
            .to_string();
        assert!(msg.contains(p), "{msg}");
    }
}
