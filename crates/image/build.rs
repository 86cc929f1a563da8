//! Builds the guest init (`microvm-init`) as a static x86_64 binary and puts it in
//! `OUT_DIR` for `src/guest_init.rs` to embed.
//!
//! The nested cargo uses its own target dir and size-oriented release settings (set by
//! environment, so the workspace's shared profiles stay untouched), with the variables of
//! the outer build that would leak into it removed. `MICROVM_INIT_BINARY=<path>` embeds
//! a prebuilt binary instead.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Variables of the outer build that must not steer the nested one.
const LEAKY: &[&str] = &[
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_MAKEFLAGS",
    "MAKEFLAGS",
    "MFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "CARGO_INCREMENTAL",
    "CARGO_PRIMARY_PACKAGE",
    "CLIPPY_ARGS",
    "__CARGO_FIX_PLZ",
    "CARGO_LLVM_COV",
];

fn main() {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let init_dir = manifest_dir.join("../init");
    let embedded = out_dir.join("microvm-init");

    println!("cargo:rerun-if-env-changed=MICROVM_INIT_BINARY");
    if let Some(prebuilt) = env::var_os("MICROVM_INIT_BINARY") {
        let prebuilt = PathBuf::from(prebuilt);
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        copy(&prebuilt, &embedded);
        return;
    }
    println!("cargo:rerun-if-changed={}", init_dir.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        init_dir.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../../Cargo.lock").display()
    );

    let target_dir = out_dir.join("init-target");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--release",
            "--offline",
            "-p",
            "microvm-init",
            "--target",
            TARGET,
        ])
        .arg("--manifest-path")
        .arg(init_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    for key in LEAKY {
        command.env_remove(key);
    }
    for (key, _) in env::vars_os() {
        if key
            .to_str()
            .is_some_and(|k| k.starts_with("CARGO_PROFILE_"))
        {
            command.env_remove(key);
        }
    }
    command
        // A static, non-PIE executable: the PID 1 of a VM needs no load-time relocation
        // (static-pie carried 57 KB of relocations); with opt-level "z" and no
        // decompressor, 1.49 MB instead of 1.69 MB (docs/benchmarks.md).
        .env(
            "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
            "-C target-feature=+crt-static -C relocation-model=static",
        )
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the guest init: {e}"));
    if !status.success() {
        panic!(
            "building the guest init (microvm-init, static {TARGET}) failed ({status}); \
             set MICROVM_INIT_BINARY to a prebuilt binary to skip this step"
        );
    }
    copy(
        &target_dir.join(TARGET).join("release/microvm-init"),
        &embedded,
    );
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| {
        panic!(
            "cannot copy the guest init {} to {}: {e}",
            from.display(),
            to.display()
        )
    });
}
