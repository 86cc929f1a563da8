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
    let link_script = manifest_dir.join("init-link.ld");
    println!("cargo:rerun-if-changed={}", link_script.display());
    command
        // A static, non-PIE executable: the PID 1 of a VM needs no load-time relocation
        // (static-pie carried 57 KB of relocations); the unwind tables, which nothing in
        // it reads, left out (init-link.ld, 140 KB); with opt-level "z", no decompressor
        // and crates/init/src/libc_min.rs, 1.34 MB instead of 1.69 MB
        // (docs/benchmarks.md). Passed encoded, so that a path with spaces stays one
        // argument.
        .env("CARGO_ENCODED_RUSTFLAGS", init_rustflags(&link_script))
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

/// The nested build's flags, 0x1f-separated as `CARGO_ENCODED_RUSTFLAGS` wants them.
fn init_rustflags(link_script: &Path) -> std::ffi::OsString {
    // The C compiler driver passes `-T FILE` on to the linker as it is (`-Wl,` would split
    // a path at its commas).
    let mut script = std::ffi::OsString::from("link-arg=");
    script.push(link_script);
    let mut flags = std::ffi::OsString::new();
    for (i, flag) in [
        "-C".into(),
        "target-feature=+crt-static".into(),
        "-C".into(),
        "relocation-model=static".into(),
        "-C".into(),
        "link-arg=-T".into(),
        "-C".into(),
        script,
        // The script leaves .eh_frame out; its index would be an empty header.
        "-C".into(),
        "link-arg=-Wl,--no-eh-frame-hdr".into(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            flags.push("\u{1f}");
        }
        flags.push(flag);
    }
    flags
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
