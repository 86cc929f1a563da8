//! Version detection as `plan` and `check` report it: the real qemu of this machine is
//! detected (and cached under `XDG_CACHE_HOME`), a missing binary is planned for the
//! newest syntax and said so, and a configured version wins.

use std::path::Path;
use std::process::{Command, Output};

fn microvm(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microvm"))
        .args(args)
        .current_dir(dir)
        .env("MICROVM_STATE_DIR", dir.join("state"))
        .env("MICROVM_STORE", dir.join("store"))
        .env("HOME", dir)
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run microvm")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const VM: &str = "hostName = \"vm1\"\nsocket = \"vm1.sock\"\n";

#[test]
fn plan_reports_the_detected_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("vm1.toml"), VM).expect("write");
    let out = microvm(dir.path(), &["plan", "vm1.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    let qemu_here = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("qemu-system-x86_64").exists());
    if !qemu_here {
        eprintln!("skipped the detection half: qemu-system-x86_64 is not installed here");
        assert!(
            err.contains("not found: planned for the newest qemu syntax"),
            "{err}"
        );
        return;
    }
    assert!(err.contains("microvm: version: qemu "), "{err}");
    assert!(err.contains("(detected from "), "{err}");
    let cache = dir.path().join("cache/microvm/hypervisor-versions.json");
    assert!(cache.exists(), "no cache at {}", cache.display());
    let again = text(&microvm(dir.path(), &["plan", "vm1.toml"]).stderr);
    assert!(again.contains(", cached)"), "{again}");
    let out = microvm(dir.path(), &["plan", "--json", "vm1.toml"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let version = plan["version"]["version"].as_str().unwrap_or_default();
    assert!(
        version.split('.').count() == 3 && plan["version"]["source"].as_str().is_some(),
        "{}",
        plan["version"]
    );
    assert!(
        plan["args"].is_array(),
        "the invocation is still there: {plan}"
    );
}

#[test]
fn missing_binary_gets_the_newest_syntax_and_a_configured_version_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    // qemu: the only hypervisor `plan` accepts on a host without usable KVM.
    let missing = format!(
        "{VM}user = \"alice\"\nqemu.package = \"/nonexistent/microvm-i9a/qemu-system-x86_64\"\n"
    );
    std::fs::write(dir.path().join("q.toml"), &missing).expect("write");
    let out = microvm(dir.path(), &["plan", "q.toml"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(
            "/nonexistent/microvm-i9a/qemu-system-x86_64 not found: planned for the newest qemu syntax"
        ),
        "{}",
        text(&out.stderr)
    );
    // The newest syntax: `-run-with user=` (qemu >= 9.1), not `-runas`.
    assert!(
        text(&out.stdout).contains("-run-with user=alice"),
        "{}",
        text(&out.stdout)
    );

    let fc = format!(
        "{VM}hypervisor = \"firecracker\"\nfirecracker.package = \"/nonexistent/microvm-i9a/firecracker\"\n"
    );
    std::fs::write(dir.path().join("fc.toml"), &fc).expect("write");
    let out = microvm(dir.path(), &["check", "--json", "fc.toml"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let version = report["hypervisors"][0]["version"]
        .as_str()
        .unwrap_or_default();
    assert!(
        version.contains("not found: planned for the newest firecracker syntax"),
        "{report}"
    );
    std::fs::write(
        dir.path().join("old.toml"),
        format!("{fc}firecracker.version = \"1.12.0\"\n"),
    )
    .expect("write");
    let out = microvm(dir.path(), &["check", "old.toml"]);
    assert!(
        text(&out.stdout).contains("    version: firecracker 1.12.0 (configured `version`)"),
        "{}",
        text(&out.stdout)
    );
}
