//! Root/store disk builds with the real mkfs tools: reproducible bytes, the files inside,
//! and the cost of microvm's wrapper over calling mkfs directly.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use microvm_image::disk::{build_disk_with, DiskOptions, DiskType};
use microvm_image::rootfs::{stage, RootSource};
use microvm_image::tools::{Toolbox, Version};

/// True when every tool is there; otherwise prints why the test is skipped.
fn have(tools: &Toolbox, names: &[&str]) -> bool {
    names.iter().all(|n| match tools.locate(n) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    })
}

/// A small busybox-style root: the busybox binary (or a stand-in), applet symlinks, a
/// hard link, /etc files with various modes, an empty dir.
fn make_tree(dir: &Path) {
    let put = |rel: &str, bytes: &[u8], mode: u32| {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        fs::write(&p, bytes).expect("write");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
    };
    let busybox = fs::read("/bin/busybox").unwrap_or_else(|_| vec![0x7f; 300_000]);
    put("bin/busybox", &busybox, 0o755);
    for applet in ["sh", "ls", "mount", "cat", "echo", "sleep", "poweroff"] {
        symlink("busybox", dir.join("bin").join(applet)).expect("symlink");
    }
    fs::hard_link(dir.join("bin/busybox"), dir.join("bin/init")).expect("hardlink");
    put("etc/hostname", b"guest\n", 0o644);
    put("etc/shadow", b"root:*:19000::::::\n", 0o600);
    put("etc/motd", &b"welcome to the guest\n".repeat(500), 0o644);
    put("usr/bin/su", b"#!/bin/sh\n", 0o4755);
    fs::create_dir_all(dir.join("proc")).expect("mkdir");
    fs::create_dir_all(dir.join("tmp")).expect("mkdir");
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).expect("chmod");
}

fn copy_tree_with_new_mtimes(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success());
    let later = SystemTime::now() + Duration::from_secs(86_400);
    for rel in ["bin/busybox", "etc/hostname", "etc/motd", "usr/bin/su"] {
        let f = fs::OpenOptions::new()
            .write(true)
            .open(to.join(rel))
            .expect("open");
        f.set_modified(later).expect("set mtime");
    }
}

fn opts(disk_type: DiskType) -> DiskOptions {
    DiskOptions {
        disk_type,
        kernel_version: Some(Version::new(6, 1, 0)),
        processors: Some(2),
        ..DiskOptions::default()
    }
}

/// Extracts an image with the filesystem's own userspace tool.
fn extract(tools: &Toolbox, disk_type: DiskType, image: &Path, dest: &Path) {
    let mut cmd = match disk_type {
        DiskType::Erofs => {
            let mut c = tools.command("fsck.erofs").expect("fsck.erofs");
            c.arg(format!("--extract={}", dest.display())).arg(image);
            c
        }
        DiskType::Squashfs => {
            let mut c = tools.command("unsquashfs").expect("unsquashfs");
            c.arg("-no-progress").arg("-d").arg(dest).arg(image);
            c
        }
    };
    microvm_image::tools::run(&mut cmd).expect("extract image");
}

fn check_contents(extracted: &Path) {
    let read = |rel: &str| fs::read(extracted.join(rel)).expect(rel);
    assert_eq!(read("etc/hostname"), b"guest\n");
    assert_eq!(read("etc/motd"), b"welcome to the guest\n".repeat(500));
    let busybox = fs::read("/bin/busybox").unwrap_or_else(|_| vec![0x7f; 300_000]);
    assert!(read("bin/busybox") == busybox, "busybox differs");
    assert_eq!(
        fs::read_link(extracted.join("bin/sh")).expect("sh"),
        Path::new("busybox")
    );
    let mode = |rel: &str| fs::symlink_metadata(extracted.join(rel)).expect(rel).mode() & 0o7777;
    assert_eq!(mode("etc/shadow"), 0o600);
    assert_eq!(mode("bin/busybox"), 0o755);
    assert!(extracted.join("proc").is_dir());
}

fn determinism_and_contents(disk_type: DiskType, tools_needed: &[&str]) {
    let tools = Toolbox::from_env();
    if !have(&tools, tools_needed) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree_a = tmp.path().join("tree-a");
    make_tree(&tree_a);
    let tree_b = tmp.path().join("tree-b");
    copy_tree_with_new_mtimes(&tree_a, &tree_b);

    let out_a = tmp.path().join("one/root.img");
    let out_b = tmp.path().join("two/other-name.img");
    let a = build_disk_with(&tools, &tree_a, &out_a, &opts(disk_type)).expect("build a");
    let b = build_disk_with(&tools, &tree_b, &out_b, &opts(disk_type)).expect("build b");
    eprintln!(
        "{disk_type:?}: {} bytes in {:?}: {}",
        a.bytes,
        a.duration,
        a.argv.join(" ")
    );
    assert_eq!(a.bytes, fs::metadata(&out_a).expect("meta").len());
    assert_eq!(a.bytes, b.bytes);
    assert!(
        fs::read(&out_a).expect("a") == fs::read(&out_b).expect("b"),
        "{disk_type:?} not reproducible"
    );
    let leftovers = fs::read_dir(tmp.path().join("one")).expect("dir").count();
    assert_eq!(leftovers, 1, "temp file left beside the image");

    let extracted = tmp.path().join("extracted");
    extract(&tools, disk_type, &out_a, &extracted);
    check_contents(&extracted);
}

#[test]
fn erofs_is_reproducible_and_holds_the_tree() {
    determinism_and_contents(DiskType::Erofs, &["mkfs.erofs", "fsck.erofs"]);
}

#[test]
fn squashfs_is_reproducible_and_holds_the_tree() {
    determinism_and_contents(DiskType::Squashfs, &["mksquashfs", "unsquashfs"]);
}

#[test]
fn staged_tarball_root_builds_into_an_image() {
    let tools = Toolbox::from_env();
    if !have(&tools, &["mkfs.erofs", "fsck.erofs", "tar"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    let tarball = tmp.path().join("root.tar");
    let status = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status();
    assert!(status.expect("tar").success());
    let staged =
        stage(&[RootSource::Tarball(tarball)], &tmp.path().join("staging")).expect("stage");
    staged
        .add_file(Path::new("/etc/hostname"), b"guest\n", 0o644)
        .expect("hostname");
    let out = tmp.path().join("root.erofs");
    build_disk_with(&tools, &staged.root, &out, &opts(DiskType::Erofs)).expect("build");
    extract(&tools, DiskType::Erofs, &out, &tmp.path().join("x"));
    check_contents(&tmp.path().join("x"));
}

#[test]
fn missing_tree_and_missing_tool_are_typed_errors() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = tmp.path().join("x.img");
    let err = build_disk_with(
        &Toolbox::from_env(),
        &tmp.path().join("nope"),
        &out,
        &opts(DiskType::Erofs),
    )
    .expect_err("no tree");
    assert!(err.to_string().contains("nope"), "{err}");
    let empty = Toolbox::with_search_path(tmp.path());
    let err =
        build_disk_with(&empty, tmp.path(), &out, &opts(DiskType::Squashfs)).expect_err("no tool");
    let source = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(source.contains("squashfs-tools"), "{source}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Prints build_disk's time against the same mkfs argv run directly (median of 5).
#[test]
fn build_time_against_direct_mkfs() {
    let tools = Toolbox::from_env();
    if !have(&tools, &["mkfs.erofs", "mksquashfs"]) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("tree");
    make_tree(&tree);
    for disk_type in [DiskType::Erofs, DiskType::Squashfs] {
        let out = tmp.path().join("ours.img");
        let mut argv: Vec<String> = Vec::new();
        let ours = median(
            (0..5)
                .map(|_| {
                    let t = Instant::now();
                    let r = build_disk_with(&tools, &tree, &out, &opts(disk_type)).expect("build");
                    argv = r.argv;
                    t.elapsed()
                })
                .collect(),
        );
        let direct_out = tmp.path().join("direct.img");
        let tmp_name = argv
            .iter()
            .position(|a| a.contains(".partial-"))
            .expect("temp arg");
        argv[tmp_name] = direct_out.display().to_string();
        let direct = median(
            (0..5)
                .map(|_| {
                    let _ = fs::remove_file(&direct_out);
                    let t = Instant::now();
                    let st = Command::new(&argv[0])
                        .args(&argv[1..])
                        .status()
                        .expect("mkfs");
                    assert!(st.success());
                    t.elapsed()
                })
                .collect(),
        );
        assert!(fs::read(&out).expect("ours") == fs::read(&direct_out).expect("direct"));
        eprintln!(
            "bench {disk_type:?}: build_disk {ours:?}, direct mkfs {direct:?}, ratio {:.2}, {} bytes",
            ours.as_secs_f64() / direct.as_secs_f64(),
            fs::metadata(&out).expect("meta").len()
        );
    }
}
