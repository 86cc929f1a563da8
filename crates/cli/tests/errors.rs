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
    assert!(err.contains("3 inputs cannot be used"), "{err}");
    // A file where a directory is wanted.
    std::fs::write(dir.path().join("rootdir"), "").expect("write");
    let out = microvm(dir.path(), ["check", "vm1.toml"]);
    assert!(
        stderr(&out).contains("rootdir is not a directory"),
        "{}",
        stderr(&out)
    );

    // A kernel may be a package directory; an unreadable one cannot be used.
    std::fs::create_dir_all(dir.path().join("kernel-dir")).expect("mkdir");
    std::fs::write(dir.path().join("k.toml"), "kernel = \"kernel-dir\"\n").expect("write");
    let out = microvm(dir.path(), ["check", "k.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    if let Some(mut cmd) = as_nobody() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = dir.path();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(d.join("k.toml"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        std::fs::set_permissions(d.join("kernel-dir"), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let out = cmd
            .arg(env!("CARGO_BIN_EXE_microvm"))
            .args(["check", "k.toml"])
            .current_dir(d)
            .env("HOME", d)
            .output()
            .expect("run microvm");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(3), "{err}");
        assert!(err.contains("kernel-dir: Permission denied"), "{err}");
    }

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

/// A bzImage that microvm recognises but cannot decompress (an unknown payload): the
/// build goes on without a vmlinux and warns about it.
fn undecompressable_bzimage() -> Vec<u8> {
    let pm_start = 2 * 512;
    let mut img = vec![0u8; pm_start + 16];
    img[0x1f1] = 1;
    img[0x202..0x206].copy_from_slice(b"HdrS");
    img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    let version = b"6.12.1-test (me@host) #1 SMP\0";
    img[0x300..0x300 + version.len()].copy_from_slice(version);
    img[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
    let mut payload = b"not a compressed kernel".to_vec();
    payload.extend(100u32.to_le_bytes());
    img[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
    img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    img.extend(payload);
    img.extend([0u8; 100]);
    img
}

/// Whether `nobody` can run things here (this suite runs as root).
fn as_nobody() -> Option<Command> {
    let root =
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0);
    let setpriv = Path::new("/usr/bin/setpriv").exists();
    if !(root && setpriv) {
        eprintln!("skipped the unprivileged build: needs root and setpriv");
        return None;
    }
    let mut cmd = Command::new("/usr/bin/setpriv");
    cmd.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"]);
    Some(cmd)
}

#[test]
fn library_warnings_and_skipped_root_entries_reach_stderr() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    std::fs::write(d.join("bzImage"), undecompressable_bzimage()).expect("write");
    // A root tarball with a device node, which an unprivileged build cannot create.
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Char);
    h.set_device_major(1).expect("major");
    h.set_device_minor(3).expect("minor");
    h.set_mode(0o666);
    h.set_size(0);
    tar.append_data(&mut h, "dev/null", std::io::empty())
        .expect("tar");
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(3);
    tar.append_data(&mut h, "etc/hello", &b"hi\n"[..])
        .expect("tar");
    std::fs::write(d.join("root.tar"), tar.into_inner().expect("tar")).expect("write");
    std::fs::write(
        d.join("vm1.toml"),
        "kernel = \"bzImage\"\n[[root]]\ntarball = \"root.tar\"\n",
    )
    .expect("write");
    for f in ["bzImage", "root.tar", "vm1.toml"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    let Some(mut cmd) = as_nobody() else { return };
    let store = d.join("store");
    let out = cmd
        .arg(env!("CARGO_BIN_EXE_microvm"))
        .args(["build", "vm1.toml"])
        .current_dir(d)
        .env("HOME", d)
        .env("MICROVM_STORE", &store)
        .env_remove("RUST_LOG")
        .output()
        .expect("run microvm");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("microvm: warning: no uncompressed kernel: "),
        "{err}"
    );
    assert!(
        err.contains(
            "microvm: warning: the guest root lacks 1 entry this build could not create \
             (build as root to keep them): /dev/null ("
        ),
        "{err}"
    );

    // RUST_LOG chooses: with errors only, no warning is said.
    let out = Command::new(env!("CARGO_BIN_EXE_microvm"))
        .args(["build", "vm1.toml"])
        .current_dir(d)
        .env("HOME", d)
        .env("MICROVM_STORE", &store)
        .env("RUST_LOG", "error")
        .output()
        .expect("run microvm");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let _ = std::fs::remove_dir_all(&store);
}

/// A temporary directory with a kernel the build cannot decompress (`bzImage`) and a
/// root directory (`root`, holding `/etc/hello`).
fn kernel_and_root() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("bzImage"), undecompressable_bzimage()).expect("write");
    std::fs::create_dir_all(d.join("root/etc")).expect("mkdir");
    std::fs::write(d.join("root/etc/hello"), "hi\n").expect("write");
    dir
}

#[test]
fn system_symlink_points_at_the_guest_root() {
    let dir = kernel_and_root();
    let d = dir.path();
    let def = "kernel = \"bzImage\"\n[[root]]\ndirectory = \"root\"\n";
    std::fs::write(d.join("with.toml"), format!("systemSymlink = true\n{def}")).expect("write");
    std::fs::write(d.join("without.toml"), def).expect("write");
    let runner = |name: &str| {
        let out = microvm(d, ["build", name]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    };
    let with = runner("with.toml");
    let system = std::fs::read_link(with.join("share/microvm/system")).expect("system link");
    let disk = std::fs::read_link(with.join("share/microvm/store-disk")).expect("store-disk");
    assert_eq!(system, disk);
    // Off by default when the root is on a disk (microvm.nix: `!storeOnDisk`).
    let without = runner("without.toml");
    assert!(!without.join("share/microvm/system").exists());
}

/// Every key of a JSON value, recursively (the values of maps keyed by user data, such
/// as environment tables, are not keys of the schema and are skipped).
fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                if k != "env" && k != "environment" {
                    keys(v, out);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| keys(i, out)),
        _ => {}
    }
}

#[test]
fn every_json_output_is_camel_case() {
    let dir = kernel_and_root();
    let d = dir.path();
    std::fs::write(
        d.join("vm1.toml"),
        "kernel = \"bzImage\"\n[[root]]\ndirectory = \"root\"\n[[volumes]]\nimage = \"v.img\"\n\
         mountPoint = \"/v\"\nsize = 8\n",
    )
    .expect("write");
    for args in [
        &["check", "--json", "vm1.toml"][..],
        &["check", "--json", "--all", "vm1.toml"],
        &["plan", "--json", "--reference-host", "vm1.toml"],
        &["build", "--json", "vm1.toml"],
        &["build", "--json", "--list-root", "vm1.toml"],
    ] {
        let out = microvm(d, args);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", stderr(&out)));
        let mut all = Vec::new();
        keys(&json, &mut all);
        let snake: Vec<&String> = all.iter().filter(|k| k.contains('_')).collect();
        assert!(snake.is_empty(), "{args:?}: snake_case keys {snake:?}");
    }
}

#[test]
fn man_pages_and_help_carry_the_exit_codes_and_the_run_name_form() {
    let dir = tempfile::tempdir().expect("tempdir");
    let man = dir.path().join("man");
    let out = microvm(
        dir.path(),
        ["generate", "man", man.to_str().expect("utf-8")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut pages = 0;
    for entry in std::fs::read_dir(&man).expect("man dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("page");
        for code in ["Exit codes:", "bad command\\-line usage", "121", "122"] {
            assert!(text.contains(code), "{}: no {code:?}", path.display());
        }
        pages += 1;
    }
    assert!(pages > 10, "{pages} pages");
    let out = microvm(dir.path(), ["help", "run"]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("microvm run [OPTIONS] <NAME>"), "{help}");
    assert!(
        help.contains("`run NAME` runs the managed VM NAME"),
        "{help}"
    );
    assert!(help.contains("Exit codes:"), "{help}");
    let out = microvm(dir.path(), ["--help"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("121"));
}

#[test]
fn plan_names_the_built_artifacts_or_says_what_the_placeholders_are() {
    let dir = kernel_and_root();
    let d = dir.path();
    std::fs::write(
        d.join("vm1.toml"),
        "kernel = \"bzImage\"\n[[root]]\ndirectory = \"root\"\n",
    )
    .expect("write");
    let plan = || {
        let out = microvm(d, ["plan", "--reference-host", "vm1.toml"]);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let before = plan();
    assert!(before.contains("'$INITRD'"), "{before}");
    assert!(
        before.contains("# $KERNEL, $INITRD and $STORE stand for the kernel directory"),
        "{before}"
    );
    let out = microvm(d, ["build", "--json", "vm1.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let after = plan();
    for placeholder in ["$KERNEL", "$INITRD", "$STORE"] {
        assert!(!after.contains(placeholder), "{placeholder}:\n{after}");
    }
    for key in ["kernel", "initrd", "storeDisk"] {
        let path = built[key].as_str().expect("a path");
        assert!(after.contains(path), "{key} {path}:\n{after}");
    }
    // A changed input: the plan no longer claims the old artifacts.
    let mut kernel = undecompressable_bzimage();
    kernel.extend([0u8; 512]);
    std::fs::write(d.join("bzImage"), kernel).expect("write");
    assert!(plan().contains("'$INITRD'"));
}
