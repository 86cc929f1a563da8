use super::*;
use std::os::unix::fs::PermissionsExt;

fn spec(image: PathBuf, fs_type: &str, label: Option<&str>) -> VolumeSpec {
    VolumeSpec {
        image,
        size_mib: Some(64),
        fs_type: fs_type.into(),
        label: label.map(Into::into),
        mkfs_extra_args: Vec::new(),
        auto_create: true,
    }
}

/// The tools, or `None` after printing why the test is skipped.
fn have(tools: &Toolbox, names: &[&str]) -> bool {
    for name in names {
        if let Err(e) = tools.locate(name) {
            eprintln!("skipped: {e}");
            return false;
        }
    }
    true
}

fn tool_stdout(tools: &Toolbox, name: &str, args: &[&Path]) -> String {
    let mut cmd = tools.command(name).expect("tool");
    cmd.args(args);
    String::from_utf8_lossy(&tools::run(&mut cmd).expect("run").stdout)
        .trim()
        .to_owned()
}

#[test]
fn creates_labelled_sparse_ext4_once() {
    let tools = Toolbox::from_env();
    if !have(&tools, &["mkfs.ext4", "e2label"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("nested/dir/data.img");
    let s = spec(image.clone(), "ext4", Some("data"));
    let outcome = ensure_volume_with(&tools, &s).expect("create");
    let VolumeOutcome::Created {
        bytes_allocated,
        argv,
    } = outcome
    else {
        panic!("expected Created, got {outcome:?}");
    };
    assert_eq!(fs::metadata(&image).expect("meta").len(), 64 * MIB);
    assert!(
        bytes_allocated < 16 * MIB,
        "not sparse: {bytes_allocated} bytes allocated"
    );
    assert!(
        argv.iter().any(|a| a == "-L") && argv.iter().any(|a| a == "data"),
        "{argv:?}"
    );
    assert_eq!(tool_stdout(&tools, "e2label", &[&image]), "data");
    let leftovers: Vec<_> = fs::read_dir(image.parent().expect("parent"))
        .expect("read_dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != "data.img")
        .collect();
    assert!(leftovers.is_empty(), "temp files left: {leftovers:?}");

    let before = fs::read(&image).expect("read");
    let mtime = fs::metadata(&image)
        .expect("meta")
        .modified()
        .expect("mtime");
    // A second call with different options must not touch it (issue #315).
    let mut s2 = spec(image.clone(), "ext4", Some("other"));
    s2.size_mib = Some(128);
    assert_eq!(
        ensure_volume_with(&tools, &s2).expect("second"),
        VolumeOutcome::Existing
    );
    assert_eq!(fs::read(&image).expect("read"), before);
    assert_eq!(
        fs::metadata(&image)
            .expect("meta")
            .modified()
            .expect("mtime"),
        mtime
    );
}

#[test]
fn vfat_label_uses_dash_n() {
    let tools = Toolbox::from_env();
    if !have(&tools, &["mkfs.vfat", "blkid"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("boot.img");
    let outcome = ensure_volume_with(&tools, &spec(image.clone(), "vfat", Some("BOOT")));
    let Ok(VolumeOutcome::Created { argv, .. }) = outcome else {
        panic!("expected Created, got {outcome:?}");
    };
    assert!(argv.windows(2).any(|w| w == ["-n", "BOOT"]), "{argv:?}");
    let mut cmd = tools.command("blkid").expect("blkid");
    cmd.args(["-o", "value", "-s", "LABEL"]).arg(&image);
    let out = tools::run(&mut cmd).expect("blkid");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "BOOT");
}

#[test]
fn mkfs_failure_removes_the_half_made_image() {
    let tools = Toolbox::from_env();
    if !have(&tools, &["mkfs.ext4"]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let image = dir.path().join("bad.img");
    let mut s = spec(image.clone(), "ext4", None);
    s.mkfs_extra_args = vec!["-b".into(), "99".into()];
    let err = ensure_volume_with(&tools, &s).expect_err("mkfs must fail");
    let chain = format!(
        "{err}: {}",
        std::error::Error::source(&err).expect("source")
    );
    assert!(chain.contains("-b 99"), "argv missing: {chain}");
    assert!(
        chain.contains("invalid block size"),
        "stderr missing: {chain}"
    );
    assert!(!image.exists());
    assert_eq!(
        fs::read_dir(dir.path()).expect("read_dir").count(),
        0,
        "temp file left"
    );
}

#[test]
fn missing_image_without_autocreate_or_size_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tools = Toolbox::with_search_path(dir.path());
    let image = dir.path().join("x.img");
    let mut s = spec(image.clone(), "ext4", None);
    s.auto_create = false;
    let err = ensure_volume_with(&tools, &s).expect_err("no autocreate");
    assert_eq!(
        err.to_string(),
        format!(
            "volume image {} does not exist and autoCreate is false",
            image.display()
        )
    );
    s.auto_create = true;
    s.size_mib = None;
    assert!(matches!(
        ensure_volume_with(&tools, &s),
        Err(VolumeError::NoSize { .. })
    ));
    s.size_mib = Some(1);
    s.fs_type = "../../bin/sh".into();
    assert!(matches!(
        ensure_volume_with(&tools, &s),
        Err(VolumeError::BadFsType { .. })
    ));
    s.fs_type = "ext4".into();
    let err = ensure_volume_with(&tools, &s).expect_err("no mkfs on this path");
    let source = std::error::Error::source(&err)
        .map(ToString::to_string)
        .unwrap_or_default();
    assert!(source.contains("e2fsprogs"), "{source}");
    assert!(
        !image.exists(),
        "nothing is created when the tool is missing"
    );
}

#[test]
fn unlabelled_fs_types_get_no_label_flag() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fake = dir.path().join("mkfs.foofs");
    fs::write(&fake, "#!/bin/sh\necho \"$@\" > \"$0.args\"\n").expect("write");
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let tools = Toolbox::with_search_path(dir.path());
    let mut s = spec(dir.path().join("v.img"), "foofs", Some("lbl"));
    s.mkfs_extra_args = vec!["--fast".into()];
    let outcome = ensure_volume_with(&tools, &s).expect("create");
    let VolumeOutcome::Created { argv, .. } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(argv[1], "--fast");
    assert!(!argv.iter().any(|a| a == "lbl"), "{argv:?}");
}
