use super::*;

#[test]
fn dropped_options_names_what_kconfig_lost() {
    let config =
        "CONFIG_EROFS_FS=y\n# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=64\nCONFIG_EXT4_FS=m\n";
    let fragment = "CONFIG_EROFS_FS=y\nCONFIG_SQUASHFS=y\nCONFIG_MODULES=n\nCONFIG_NR_CPUS=64\n";
    assert_eq!(
        dropped_options(config, [fragment].into_iter()),
        vec!["CONFIG_SQUASHFS=y"]
    );
    // A later fragment overrides an earlier one: ext4 as a module is then what is wanted.
    let user = "CONFIG_EXT4_FS=m\nCONFIG_NR_CPUS=8\n";
    assert_eq!(
        dropped_options(config, [fragment, user].into_iter()),
        vec!["CONFIG_SQUASHFS=y", "CONFIG_NR_CPUS=8"]
    );
}

#[test]
fn the_project_config_builds_in_what_guests_need() {
    use crate::kernel::{Availability, FsCompression as C, KernelConfig, KernelFeature as F};
    let config = KernelConfig::parse(MICROVM_CONFIG);
    for feature in [
        F::NineP,
        F::Virtiofs,
        F::Erofs(Some(C::Lz4)),
        F::Erofs(Some(C::Xz)),
        F::Squashfs(Some(C::Zstd)),
        F::Squashfs(Some(C::Gzip)),
        F::Overlay,
        F::VirtioMmio,
        F::VirtioPci,
        F::VirtioBlk,
        F::VirtioNet,
        F::VirtioConsole,
        F::Vsock,
        F::AcpiButton,
        F::Evdev,
        F::Ext4,
        F::Xfs,
        F::Btrfs,
        F::Vfat,
    ] {
        assert_eq!(
            crate::kernel::config::availability(Some(&config), feature),
            Availability::Builtin,
            "{feature}"
        );
    }
    assert!(!config.has("MODULES"));
    assert!(config.is_builtin("VIRTIO_BALLOON") && config.is_builtin("HW_RANDOM_VIRTIO"));
}

#[test]
fn the_key_follows_source_fragments_and_compiler() {
    let src = |id: &str| Source::Tarball {
        path: PathBuf::from("/usr/src/linux-source-6.1.tar.xz"),
        identity: id.to_owned(),
    };
    let base = key(&src("linux-source-6.1 6.1.192-3"), &[], "gcc 12");
    assert_eq!(base, key(&src("linux-source-6.1 6.1.192-3"), &[], "gcc 12"));
    assert_ne!(base, key(&src("linux-source-6.1 6.1.193-1"), &[], "gcc 12"));
    assert_ne!(base, key(&src("linux-source-6.1 6.1.192-3"), &[], "gcc 13"));
    let frag = vec!["CONFIG_XFS_FS=n\n".to_owned()];
    assert_ne!(
        base,
        key(&src("linux-source-6.1 6.1.192-3"), &frag, "gcc 12")
    );
}

#[test]
fn bad_sources_are_clear_errors() {
    let mut quiet = |_: &str| {};
    let err = resolve_source(&SourceRef::Package("linux-image-amd64".into()), &mut quiet)
        .expect_err("not a source package");
    assert!(err.to_string().contains("linux-source-X.Y"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let err = resolve_source(&SourceRef::Path(dir.path().to_path_buf()), &mut quiet)
        .expect_err("empty dir");
    assert!(
        err.to_string()
            .contains("neither a directory with a Makefile"),
        "{err}"
    );
}

#[test]
fn a_tree_is_named_by_its_path_and_a_tarball_by_its_stem() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = Store::open(tmp.path()).expect("store");
    let tarball = Source::Tarball {
        path: PathBuf::from("/usr/src/linux-source-6.1.tar.xz"),
        identity: String::new(),
    };
    if std::env::var_os("MICROVM_KERNEL_BUILD_DIR").is_none() {
        assert_eq!(
            work_dir(&store, &tarball),
            tmp.path().join(".cache/kernel-build/linux-source-6.1")
        );
    }
    let tree = |p: &str| Source::Tree {
        path: PathBuf::from(p),
        identity: String::new(),
    };
    assert_ne!(work_dir(&store, &tree("/a")), work_dir(&store, &tree("/b")));
}

#[test]
fn a_tarball_is_unpacked_once_and_again_when_it_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tree = tmp.path().join("in/linux-x");
    fs::create_dir_all(&tree).expect("mkdir");
    fs::write(tree.join("Makefile"), "# one\n").expect("write");
    let tarball = tmp.path().join("linux-x.tar.gz");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path().join("in"))
        .arg("linux-x")
        .status()
        .expect("tar");
    assert!(status.success());
    let mut quiet = |_: &str| {};
    let source = resolve_source(&SourceRef::Path(tarball.clone()), &mut quiet).expect("tarball");
    let work = tmp.path().join("work");
    fs::create_dir_all(&work).expect("mkdir");
    const PATCH: patches::Patch = (
        "note.patch",
        "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1,2 @@\n # one\n+# patched\n",
    );
    let src = prepare_tree(&source, &work, &[PATCH], &mut quiet).expect("unpack");
    assert_eq!(src, work.join("src"));
    assert_eq!(
        fs::read_to_string(src.join("Makefile")).expect("read"),
        "# one\n# patched\n"
    );
    // Unchanged: the tree is reused as it is (an object tree next to it stays), not
    // patched twice.
    fs::create_dir_all(work.join("obj")).expect("obj");
    fs::write(src.join("local"), "kept").expect("write");
    prepare_tree(&source, &work, &[PATCH], &mut quiet).expect("again");
    assert!(src.join("local").is_file() && work.join("obj").is_dir());
    assert_eq!(
        fs::read_to_string(src.join("Makefile")).expect("read"),
        "# one\n# patched\n"
    );
    assert_eq!(applied_patches(&work), ["note.patch"]);
    // A changed patch set is unpacked afresh; a patch that does not apply (written for
    // another kernel) is skipped with a warning that has patch's words, and not listed.
    let bad: patches::Patch = (
        "bad.patch",
        "--- a/Makefile\n+++ b/Makefile\n@@ -1 +1 @@\n-# nine\n+# ten\n",
    );
    let mut said = Vec::new();
    prepare_tree(&source, &work, &[bad, PATCH], &mut |l: &str| {
        said.push(l.to_owned())
    })
    .expect("a patch that does not apply is skipped");
    assert!(
        said.iter()
            .any(|l| l.starts_with("warning: microvm's patch bad.patch does not apply")),
        "{said:?}"
    );
    assert_eq!(applied_patches(&work), ["note.patch"]);
    prepare_tree(&source, &work, &[], &mut quiet).expect("no patches");
    assert!(applied_patches(&work).is_empty());
    assert_eq!(
        fs::read_to_string(src.join("Makefile")).expect("read"),
        "# one\n"
    );
    // A new tarball is a new identity: unpacked afresh, the old object tree dropped.
    std::thread::sleep(Duration::from_millis(20));
    fs::write(tree.join("Makefile"), "# two\n").expect("write");
    let status = Command::new("tar")
        .arg("-czf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path().join("in"))
        .arg("linux-x")
        .status()
        .expect("tar");
    assert!(status.success());
    let source = resolve_source(&SourceRef::Path(tarball), &mut quiet).expect("tarball");
    let src = prepare_tree(&source, &work, &[], &mut quiet).expect("unpack again");
    assert_eq!(
        fs::read_to_string(src.join("Makefile")).expect("read"),
        "# two\n"
    );
    assert!(!src.join("local").exists() && !work.join("obj").exists());
}
