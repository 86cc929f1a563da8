//! The Nix path for real: a closure built by the real `nix-build` (Debian's nix-bin, no
//! nixpkgs) from a `builtins.derivation` whose output references a second store path
//! (a static busybox added with `builtins.path`) is packed by `microvm build` from the
//! real `nix-store -qR`/`--dump-db`, and boots: the guest runs a script from the store
//! with the store's busybox as its interpreter, and `microvm run` exits with its status.
//!
//! Needs root (nix-build without a daemon), nix-bin, qemu, busybox-static and the cloud
//! test kernel; a missing one skips the test with a printed reason (fails it under `CI`).
//! The two store paths it builds are deleted again at the end.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const GREETING: &str = "nix-guest: hello from the store";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn kernel() -> PathBuf {
    std::env::var_os("MICROVM_TEST_KERNELS")
        .map_or_else(|| workspace().join("target/test-kernels"), PathBuf::from)
        .join("cloud.deb")
}

fn on_path(program: &str) -> bool {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join(program).is_file())
}

fn missing() -> Vec<String> {
    let mut out = Vec::new();
    let root = fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    });
    if !root {
        out.push("not root (nix-build without a daemon)".to_owned());
    }
    for (p, pkg) in [
        ("nix-build", "nix-bin"),
        ("nix-store", "nix-bin"),
        ("qemu-system-x86_64", "qemu-system-x86"),
    ] {
        if !on_path(p) {
            out.push(format!("{p} is not installed ({pkg})"));
        }
    }
    if !Path::new("/bin/busybox").is_file() {
        out.push("/bin/busybox is missing (busybox-static)".into());
    }
    if !kernel().exists() {
        out.push(format!("{} is missing", kernel().display()));
    }
    out
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("spawn");
    eprintln!(
        "$ {cmd:?} → {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `nix-build` of the test derivation in `dir`; returns the output path.
fn nix_build(dir: &Path) -> PathBuf {
    fs::write(
        dir.join("default.nix"),
        format!(
            r#"let bb = builtins.path {{ path = /bin/busybox; name = "busybox"; }}; in
builtins.derivation {{
  name = "microvm-nix-test";
  system = "x86_64-linux";
  builder = "/bin/sh";
  args = [ "-c" "/bin/mkdir -p $out/bin && /bin/ln -s ${{bb}} $out/bin/sh && printf '#!%s\\necho {GREETING}\\nexit 7\\n' $out/bin/sh > $out/bin/hello && /bin/chmod 555 $out/bin/hello" ];
}}
"#
        ),
    )
    .expect("default.nix");
    let out = run(Command::new("nix-build")
        .args([
            "--option",
            "sandbox",
            "false",
            "--option",
            "build-users-group",
            "",
        ])
        .arg(dir.join("default.nix"))
        .arg("--no-out-link"));
    assert!(out.status.success(), "nix-build");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn a_real_nix_closure_is_packed_and_boots() {
    let why = missing();
    if !why.is_empty() {
        let list = why.join("; ");
        if std::env::var_os("CI").is_some() {
            panic!("prerequisites missing under CI: {list}");
        }
        eprintln!("SKIPPED a_real_nix_closure_is_packed_and_boots: {list}");
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = nix_build(tmp.path());
    let q = run(Command::new("nix-store").arg("-qR").arg(&out));
    let closure: Vec<String> = String::from_utf8_lossy(&q.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(closure.len(), 2, "the output and busybox: {closure:?}");
    let busybox = closure
        .iter()
        .find(|p| p.ends_with("-busybox"))
        .expect("busybox in the closure")
        .clone();

    let def = tmp.path().join("vm.toml");
    fs::write(
        &def,
        format!(
            "hostName = \"nixvm\"\nmem = 256\nkernel = {:?}\ncommand = [\"{}/bin/hello\"]\n\n[[root]]\nnix = {:?}\n",
            kernel().canonicalize().expect("kernel"),
            out.display(),
            out
        ),
    )
    .expect("vm.toml");
    let store = tmp.path().join("store");
    let microvm = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_microvm"));
        c.current_dir(tmp.path()).env_remove("MICROVM_STORE");
        c
    };
    let list = run(microvm()
        .arg("build")
        .arg(&def)
        .arg("--store")
        .arg(&store)
        .arg("--list-root"));
    assert!(list.status.success(), "build");
    let listing = String::from_utf8_lossy(&list.stdout);
    let base = |p: &str| p.trim_start_matches("/nix/store/").to_owned();
    for p in &closure {
        assert!(listing.contains(&base(p)), "{p} is on the store disk");
    }
    assert!(
        listing.contains("closure-info/registration"),
        "the registration of nix-store --dump-db"
    );

    let run_out = run(microvm()
        .arg("run")
        .arg(&def)
        .arg("--store")
        .arg(&store)
        .args(["--console-log", "console.log"]));
    let console = fs::read_to_string(tmp.path().join("console.log")).unwrap_or_default();
    assert_eq!(
        run_out.status.code(),
        Some(7),
        "the script's status\n{console}"
    );
    assert!(console.contains(GREETING), "{console}");

    // Leave the Nix store as found: the paths have no roots (--no-out-link); the
    // derivation goes too (it references busybox as an input).
    let drv = run(Command::new("nix-store")
        .arg("--query")
        .arg("--deriver")
        .arg(&out));
    let drv = String::from_utf8_lossy(&drv.stdout).trim().to_owned();
    let deleted = run(Command::new("nix-store")
        .arg("--delete")
        .arg(&out)
        .arg(&busybox)
        .arg(&drv));
    assert!(deleted.status.success(), "removing the test's store paths");
}
