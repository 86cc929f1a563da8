//! Checks against real Debian kernel packages, run whenever `MICROVM_TEST_KERNELS` names
//! a directory (scripts/test.sh sets it after scripts/fetch-test-kernels.sh) that holds
//! `linux-image-*-cloud-amd64-unsigned_*.deb` and the full `linux-image-*-amd64-unsigned_*.deb`
//! of the same version (or `cloud.deb`/`full.deb` links to them); skipped with a message
//! otherwise. Unpacked trees and the extracted ELFs are left in `<dir>/cache`.

use std::path::PathBuf;
use std::time::Instant;

use crate::initrd::InitrdBuilder;
use crate::kernel::{Availability, KernelFeature, KernelInfo};
use crate::modules::ModuleIndex;

fn debs() -> Option<(PathBuf, Vec<PathBuf>)> {
    let Some(dir) = std::env::var_os("MICROVM_TEST_KERNELS").map(PathBuf::from) else {
        eprintln!("skipping: MICROVM_TEST_KERNELS is not set");
        return None;
    };
    let mut debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("kernel dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    // `cloud.deb`/`full.deb` are links to the versioned files: test each package once.
    let mut seen = std::collections::HashSet::new();
    debs.retain(|p| seen.insert(std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())));
    Some((dir, debs))
}

#[test]
fn real_debian_kernels() {
    let Some((dir, debs)) = debs() else { return };
    let cache = dir.join("cache");
    assert!(!debs.is_empty(), "no .deb in {}", dir.display());
    for deb in debs {
        let cloud = deb.to_string_lossy().contains("cloud");
        let t = Instant::now();
        let mut k = KernelInfo::from_path(&deb, &cache).expect("load");
        let unpack = t.elapsed();
        let t = Instant::now();
        let vmlinux = k.ensure_vmlinux(&cache).expect("vmlinux").to_path_buf();
        let extract = t.elapsed();
        let elf_len = std::fs::metadata(&vmlinux).expect("vmlinux").len();
        eprintln!(
            "{}: version {:?}, image {}, unpack {unpack:?}, vmlinux {} ({elf_len} bytes) in {extract:?}, pvh {:?}",
            deb.display(),
            k.version,
            k.image.display(),
            vmlinux.display(),
            k.vmlinux_pvh
        );
        assert_eq!(k.vmlinux_pvh, Some(true));
        let nine_p = k.supports(KernelFeature::NineP);
        eprintln!("  9p: {nine_p:?}");
        if cloud {
            assert!(matches!(nine_p, Availability::Missing { .. }));
            eprintln!("  {}", k.require(KernelFeature::NineP).expect_err("no 9p"));
        } else {
            assert!(matches!(nine_p, Availability::Module(_)));
        }
        for f in [
            KernelFeature::VirtioMmio,
            KernelFeature::VirtioBlk,
            KernelFeature::Erofs(None),
            KernelFeature::Overlay,
            KernelFeature::VirtioConsole,
            KernelFeature::AcpiButton,
            KernelFeature::Evdev,
            KernelFeature::Virtiofs,
            KernelFeature::Vsock,
            KernelFeature::Ext4,
        ] {
            eprintln!("  {f}: {:?}", k.supports(f));
        }
        let t = Instant::now();
        let index =
            ModuleIndex::open(k.modules_dir.as_deref().expect("modules"), &cache).expect("index");
        let indexing = t.elapsed();
        let mut wanted = vec![
            "virtio_mmio",
            "virtio_blk",
            "erofs",
            "overlay",
            "virtio_console",
            "button",
            "evdev",
        ];
        if !cloud {
            wanted.extend(["9p", "9pnet_virtio"]);
        }
        let mods = index.resolve(&wanted).expect("resolve");
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        eprintln!("  modules ({indexing:?} to index): {names:?}");

        let five = index
            .resolve(&[
                "virtio_mmio",
                "virtio_blk",
                "erofs",
                "overlay",
                "virtio_console",
            ])
            .expect("resolve");
        let t = Instant::now();
        let mut b = InitrdBuilder::new();
        b.init(vec![0x7f; 500_000]).expect("init");
        let paths = b.add_modules(&five).expect("modules");
        b.add_file(microvm_init::plan::PLAN_PATH, 0o644, b"{}".to_vec())
            .expect("plan");
        let out = cache.join(format!(
            "initrd-test-{}.img",
            k.version.as_deref().unwrap_or("x")
        ));
        let size = b.write_to(&out).expect("write");
        eprintln!(
            "  initrd with {} modules {paths:?} + a 500 kB init: {size} bytes in {:?}",
            paths.len(),
            t.elapsed()
        );
        assert_eq!(size % 4096, 64);
    }
}

/// A module tree without an index, not shaped `lib/modules/<ver>`: depmod must run in a
/// shadow tree under the cache (through symlinks) and the paths must resolve to the tree.
#[test]
fn real_depmod_in_shadow_tree() {
    let Some((dir, debs)) = debs() else { return };
    let cache = dir.join("cache");
    let deb = debs
        .iter()
        .find(|p| p.to_string_lossy().contains("cloud"))
        .unwrap_or_else(|| panic!("no cloud kernel .deb in {}", dir.display()));
    // Unpacks into the cache when this runs first (a fresh cache), else reuses it.
    let k = KernelInfo::from_path(deb, &cache).expect("load");
    let modules = k.modules_dir.clone().expect("modules");
    let version = modules.file_name().expect("name").to_owned();
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree").join(&version);
    std::fs::create_dir_all(&tree).expect("mkdir");
    std::os::unix::fs::symlink(modules.join("kernel"), tree.join("kernel")).expect("link");
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        std::fs::copy(modules.join(f), tree.join(f)).expect("copy");
    }
    let t = Instant::now();
    let index = ModuleIndex::open(&tree, &tmp.path().join("cache")).expect("index");
    let mods = index.resolve(&["erofs", "virtio_blk"]).expect("resolve");
    eprintln!("shadow depmod {:?}: {mods:#?}", t.elapsed());
    assert!(tmp.path().join("cache/depmod").join(&version).is_dir());
    assert!(mods
        .iter()
        .all(|m| m.path.starts_with(&tree) && m.path.exists()));
}
