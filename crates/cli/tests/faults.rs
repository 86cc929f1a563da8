//! Fault matrix (issue 10), the cases without a running VM: a full disk during `create`
//! (a small tmpfs the test mounts) fails once with "No space left on device" and leaves no
//! scratch file, no half-made VM, nothing a retry trips over.
//!
//! Needs root (mount) and the cloud test kernel; without them the test says why and
//! passes (under `CI` it fails instead).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn kernel() -> PathBuf {
    let dir = match std::env::var_os("MICROVM_TEST_KERNELS") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target/test-kernels"),
    };
    dir.join("cloud.deb")
}

fn skip(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run under CI: {why}"
    );
    eprintln!("skipped: {why}");
}

/// Every path under `dir`, relative.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap_or(&p).display().to_string());
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Unmounts on drop.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn create_on_a_full_disk_says_so_once_and_leaves_nothing() {
    if !microvm_host::privilege::is_root() {
        return skip("needs root (it mounts a small tmpfs)");
    }
    if !kernel().is_file() {
        return skip(&format!("{} is missing", kernel().display()));
    }
    let work = tempfile::tempdir().expect("tempdir");
    let root = work.path().join("root");
    fs::create_dir_all(root.join("sbin")).expect("mkdir");
    fs::write(root.join("sbin/init"), "#!/bin/sh\n").expect("init");
    let def = work.path().join("full.toml");
    fs::write(
        &def,
        format!(
            "hostName = \"full\"\nkernel = {:?}\n[[root]]\ndirectory = {:?}\n",
            kernel(),
            root
        ),
    )
    .expect("definition");
    let mnt = work.path().join("mnt");
    fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=10m", "i10-full"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        return skip("cannot mount a tmpfs here");
    }
    let _unmount = Tmpfs(mnt.clone());
    let state = mnt.join("state");
    for attempt in 1..=2 {
        let out = Command::new(env!("CARGO_BIN_EXE_microvm"))
            .args(["create", "full", "--from"])
            .arg(&def)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .expect("microvm create");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "attempt {attempt}: it fit? {stderr}");
        assert_eq!(
            stderr.matches("No space left on device").count(),
            1,
            "attempt {attempt}: {stderr}"
        );
        let left: Vec<String> = tree(&state)
            .into_iter()
            .filter(|p| {
                let name = p.rsplit('/').next().unwrap_or(p);
                name.contains("tmp") || p.starts_with("full")
            })
            .collect();
        assert!(left.is_empty(), "attempt {attempt} left {left:?}");
    }
}
