//! The README's `vm1` definition, exactly as written there, builds (its kernel from the
//! host's apt) and runs: its command writes `uname -a` to the `/var` volume, with the
//! virtiofs share of `/srv/home` and the tap `vm-vm1`, which live in a network namespace
//! the test creates. The root directory `rootfs` (a static busybox) is the user's part.
//!
//! Needs root, qemu, virtiofsd (scripts/install-virtiofsd.sh; the demo links it onto
//! PATH), busybox-static, debugfs, and apt access for the kernel package; a missing one
//! skips the test with a printed reason. `/srv/home` is created when missing and removed
//! again.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn path_var() -> std::ffi::OsString {
    let mut dirs = vec![workspace().join("target/tools/bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    std::env::join_paths(dirs).expect("PATH")
}

fn find(program: &str) -> bool {
    std::env::split_paths(&path_var()).any(|d| d.join(program).is_file())
}

/// The first ```toml block after "## A definition".
fn readme_definition() -> String {
    let text = fs::read_to_string(workspace().join("README.md")).expect("README.md");
    let section = &text[text.find("## A definition").expect("the section")..];
    let start = section.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = section[start..].find("```").expect("end of the block");
    section[start..start + end].to_owned()
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .output()
        .expect("spawn");
    eprintln!(
        "$ {cmd:?} → {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes what the test made outside its temporary directory (the directories it
/// created, innermost first).
struct Cleanup {
    netns: String,
    created: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        for d in self.created.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }
}

#[test]
fn readme_vm1_example_runs_as_written() {
    let test = "readme_vm1_example_runs_as_written";
    let root = fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    let missing: Vec<&str> = [
        "qemu-system-x86_64",
        "virtiofsd",
        "debugfs",
        "ip",
        "apt-get",
    ]
    .into_iter()
    .filter(|p| !find(p))
    .collect();
    if !root || !missing.is_empty() || !Path::new("/bin/busybox").is_file() {
        let why = format!("root: {root}, missing: {missing:?}, busybox-static needed");
        assert!(std::env::var_os("CI").is_none(), "{test}: {why}");
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    fs::write(dir.join("vm1.toml"), readme_definition()).expect("vm1.toml");
    fs::create_dir_all(dir.join("rootfs/bin")).expect("rootfs");
    fs::create_dir_all(dir.join("rootfs/var")).expect("rootfs");
    fs::copy("/bin/busybox", dir.join("rootfs/bin/busybox")).expect("busybox");
    for applet in ["sh", "uname"] {
        std::os::unix::fs::symlink("busybox", dir.join("rootfs/bin").join(applet)).expect("ln");
    }
    let cleanup = Cleanup {
        netns: format!("mvt-readme-{}", std::process::id()),
        created: ["/srv", "/srv/home"]
            .into_iter()
            .map(PathBuf::from)
            .filter(|d| !d.exists())
            .collect(),
    };
    fs::create_dir_all("/srv/home").expect("/srv/home");

    let microvm = env!("CARGO_BIN_EXE_microvm");
    let store = dir.join("store");
    // The build fetches the kernel package with apt, outside the namespace.
    let out = run(Command::new(microvm)
        .current_dir(dir)
        .args(["build", "vm1.toml", "--store"])
        .arg(&store));
    assert!(out.status.success(), "microvm build vm1.toml");
    assert!(
        run(Command::new("ip").args(["netns", "add", &cleanup.netns]))
            .status
            .success()
    );
    let out = run(Command::new("ip")
        .args(["netns", "exec", &cleanup.netns, microvm])
        .current_dir(dir)
        .args(["run", "vm1.toml", "--console-log", "console.log", "--store"])
        .arg(&store));
    let console = fs::read_to_string(dir.join("console.log")).unwrap_or_default();
    assert!(out.status.success(), "microvm run vm1.toml\n{console}");
    let uname = run(Command::new("debugfs")
        .args(["-R", "cat /uname"])
        .arg(dir.join("var.img")));
    let uname = String::from_utf8_lossy(&uname.stdout);
    assert!(uname.starts_with("Linux vm1 "), "{uname:?}");
    drop(cleanup);
}
