//! `microvm kernel build` against the kernel scripts/test.sh built (its store is
//! `$MICROVM_KERNEL_STORE`): a second build finds it in the store without compiling, and
//! the configuration it reports builds in what microvm's guests need. Skipped with a
//! printed reason when that store is not set (it takes a 15-minute build to make one);
//! fails instead under `CI`.

use std::path::PathBuf;
use std::process::Command;

fn store() -> Option<PathBuf> {
    match std::env::var_os("MICROVM_KERNEL_STORE") {
        Some(s) => Some(PathBuf::from(s)),
        None if std::env::var_os("CI").is_some() => {
            panic!("MICROVM_KERNEL_STORE is not set under CI (scripts/test.sh sets it)")
        }
        None => {
            eprintln!("SKIPPED: MICROVM_KERNEL_STORE is not set (scripts/test.sh builds the kernel and sets it)");
            None
        }
    }
}

fn microvm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_microvm"))
        .args(args)
        .output()
        .expect("run microvm")
}

#[test]
fn a_built_kernel_is_found_in_the_store() {
    let Some(store) = store() else { return };
    let store = store.to_str().expect("utf-8 store path");
    let out = microvm(&["kernel", "build", "--store", store, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["cached"], true, "{report}");
    let dir = PathBuf::from(report["dir"].as_str().expect("dir"));
    for file in ["bzImage", "vmlinux", ".config"] {
        assert!(dir.join(file).is_file(), "{} lacks {file}", dir.display());
    }
    let config = std::fs::read_to_string(dir.join(".config")).expect("config");
    for option in [
        "CONFIG_VIRTIO_MMIO=y",
        "CONFIG_EROFS_FS=y",
        "CONFIG_SQUASHFS=y",
        "CONFIG_9P_FS=y",
        "CONFIG_VIRTIO_FS=y",
        "CONFIG_BTRFS_FS=y",
        "CONFIG_XFS_FS=y",
        "CONFIG_ACPI_BUTTON=y",
        "CONFIG_PVH=y",
    ] {
        assert!(config.lines().any(|l| l == option), "{option} missing");
    }
    assert!(config.contains("# CONFIG_MODULES is not set"));
    assert!(config.contains("CONFIG_CC_OPTIMIZE_FOR_PERFORMANCE=y"));
    // microvm's own patches were applied to the package's tarball, and are recorded.
    let info: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("build-info.json")).expect("build-info.json"),
    )
    .expect("build-info json");
    assert_eq!(
        info["patches"],
        serde_json::json!(["qemu-tcg-lapic-timer.patch"]),
        "{info}"
    );
    // The plain form prints the same directory.
    let out = microvm(&["kernel", "build", "--store", store]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.to_string_lossy()
    );
}

#[test]
fn print_config_is_the_project_config_and_bad_sources_are_refused() {
    let out = microvm(&["kernel", "build", "--print-config"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CONFIG_VIRTIO_BLK=y") && text.contains("CONFIG_MODULES=n"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = tmp.path().join("store");
    let out = microvm(&[
        "kernel",
        "build",
        "--store",
        store.to_str().expect("utf-8"),
        "--source",
        "linux-image-amd64",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not a Debian kernel source package name"),
        "{err}"
    );
}
