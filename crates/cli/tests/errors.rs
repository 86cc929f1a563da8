//! What a user sees when something is wrong: a missing input is a `check` error with its
//! file and line, `build` says it the same way (and never repeats a cause), and the
//! tracing warnings of the libraries reach stderr.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};

fn microvm<I, S>(dir: &Path, args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_microvm"))
        .args(args)
        .current_dir(dir)
        .env("MICROVM_STATE_DIR", dir.join("state"))
        .env("MICROVM_STORE", dir.join("store"))
        .env("HOME", dir)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .output()
        .expect("run microvm")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn missing_inputs_are_check_errors_with_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("vm1.toml"),
        "vcpu = 1\nkernel = \"no-such-bzImage\"\ninitrdPath = \"/no/such/initrd\"\n\
         [[root]]\ndirectory = \"rootdir\"\n",
    )
    .expect("write");
    let out = microvm(dir.path(), ["check", "vm1.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    let kernel = dir.path().join("no-such-bzImage");
    for (message, line) in [
        (format!("{} does not exist", kernel.display()), 2),
        ("/no/such/initrd does not exist".to_owned(), 3),
        (
            format!("{} does not exist", dir.path().join("rootdir").display()),
            5,
        ),
    ] {
        assert!(
            err.contains(&format!("error: {message}")),
            "{message}: {err}"
        );
        assert!(
            err.contains(&format!("vm1.toml:{line}:")),
            "line {line}: {err}"
        );
    }
    assert!(err.contains("3 inputs are missing"), "{err}");
    // A file where a directory is wanted.
    std::fs::write(dir.path().join("rootdir"), "").expect("write");
    let out = microvm(dir.path(), ["check", "vm1.toml"]);
    assert!(
        stderr(&out).contains("rootdir is not a directory"),
        "{}",
        stderr(&out)
    );

    // `check --json` says the same, located.
    let out = microvm(dir.path(), ["check", "--json", "vm1.toml"]);
    assert_eq!(out.status.code(), Some(3));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["valid"], false);
    assert_eq!(report["diagnostics"][0]["path"], "kernel");
    assert_eq!(report["diagnostics"][0]["line"], 2);

    // `build` stops at the same place, before building anything.
    let out = microvm(dir.path(), ["build", "vm1.toml"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("vm1.toml:2:"), "{err}");
    assert!(
        !dir.path().join("store").exists() || !err.contains("building"),
        "{err}"
    );
}

#[test]
fn plan_does_not_need_the_inputs() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("vm1.toml"),
        "kernel = \"/no/such/bzImage\"\n",
    )
    .expect("write");
    let out = microvm(dir.path(), ["plan", "--reference-host", "vm1.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}
