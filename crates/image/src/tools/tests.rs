use super::*;
use std::os::unix::fs::PermissionsExt;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn missing_tool_names_the_debian_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tools = Toolbox::with_search_path(dir.path());
    let err = tools.locate("mkfs.erofs").expect_err("must be missing");
    let msg = err.to_string();
    assert!(msg.contains("`mkfs.erofs` not found"), "{msg}");
    assert!(msg.contains("erofs-utils"), "{msg}");
    let err = tools.locate("mkfs.xfs").expect_err("must be missing");
    assert!(err.to_string().contains("xfsprogs"), "{err}");
}

#[test]
fn finds_tools_on_search_path_and_by_override() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = script(dir.path(), "mytool", "exit 0");
    std::fs::write(dir.path().join("notexec"), "x").expect("write");
    let tools = Toolbox::with_search_path(dir.path());
    assert_eq!(tools.locate("mytool").ok(), Some(a.clone()));
    assert!(
        tools.locate("notexec").is_err(),
        "a non-executable file is not a tool"
    );

    let tools = Toolbox::with_search_path("").with_override("mkfs.erofs", &a);
    assert_eq!(tools.locate("mkfs.erofs").ok(), Some(a));
    let tools = Toolbox::with_search_path("").with_override("x", dir.path().join("nope"));
    assert!(matches!(
        tools.locate("x"),
        Err(ToolError::BadOverride { .. })
    ));
}

#[test]
fn run_failure_carries_argv_and_stderr_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    script(
        dir.path(),
        "failer",
        "echo progress; echo \"bad thing: $1\" >&2; exit 3",
    );
    let tools = Toolbox::with_search_path(dir.path());
    let mut cmd = tools.command("failer").expect("command");
    cmd.arg("with space");
    let err = run(&mut cmd).expect_err("must fail");
    let msg = err.to_string();
    assert!(msg.contains("failer 'with space'"), "{msg}");
    assert!(msg.contains("bad thing: with space"), "{msg}");
    assert!(msg.contains("exit status: 3"), "{msg}");
    assert!(!msg.contains("progress"), "stdout is not stderr: {msg}");
}

#[test]
fn run_success_returns_output_with_clean_env() {
    let dir = tempfile::tempdir().expect("tempdir");
    script(dir.path(), "envtool", "echo \"$LC_ALL $HOME\"");
    let tools = Toolbox::with_search_path(dir.path());
    let out = run(&mut tools.command("envtool").expect("command")).expect("run");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "C");
}

#[test]
fn long_stderr_is_cut_to_its_tail() {
    let long = "x".repeat(10_000) + "END";
    let t = tail(long.as_bytes());
    assert!(t.len() < 2100 && t.ends_with("END") && t.starts_with('…'));
}

#[test]
fn detects_installed_tool_versions() {
    let tools = Toolbox::from_env();
    match tools.version("mkfs.erofs", &["--version"]) {
        Ok(v) => assert!(v >= Version::new(1, 0, 0), "{v}"),
        Err(e @ ToolError::Missing { .. }) => eprintln!("skipped mkfs.erofs: {e}"),
        Err(e) => panic!("{e}"),
    }
    match tools.version("mksquashfs", &["-version"]) {
        Ok(v) => assert!(v >= Version::new(4, 0, 0), "{v}"),
        Err(e @ ToolError::Missing { .. }) => eprintln!("skipped mksquashfs: {e}"),
        Err(e) => panic!("{e}"),
    }
}
