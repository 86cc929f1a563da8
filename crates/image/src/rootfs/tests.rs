use super::*;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt};

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).expect("meta").mode() & 0o7777
}

fn write(p: &Path, content: &str, m: u32) {
    fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    fs::write(p, content).expect("write");
    fs::set_permissions(p, fs::Permissions::from_mode(m)).expect("chmod");
}

fn header() -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

/// A tarball with a file, a hard link to it, a symlink, a setuid file and a fifo.
fn tar_bytes() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut dir = header();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o750);
    dir.set_size(0);
    b.append_data(&mut dir, "etc/", std::io::empty())
        .expect("dir");
    let mut file = header();
    file.set_mode(0o640);
    file.set_uid(1234);
    file.set_gid(5678);
    file.set_size(5);
    b.append_data(&mut file, "etc/motd", &b"hello"[..])
        .expect("file");
    let mut link = header();
    link.set_entry_type(tar::EntryType::Link);
    link.set_size(0);
    b.append_link(&mut link, "etc/motd.link", "etc/motd")
        .expect("hardlink");
    let mut sym = header();
    sym.set_entry_type(tar::EntryType::Symlink);
    sym.set_size(0);
    b.append_link(&mut sym, "bin/sh", "/bin/busybox")
        .expect("symlink");
    let mut suid = header();
    suid.set_mode(0o4755);
    suid.set_size(2);
    b.append_data(&mut suid, "bin/su", &b"su"[..])
        .expect("suid");
    let mut fifo = header();
    fifo.set_entry_type(tar::EntryType::Fifo);
    fifo.set_mode(0o600);
    fifo.set_size(0);
    b.append_data(&mut fifo, "run/initctl", std::io::empty())
        .expect("fifo");
    let mut null = header();
    null.set_entry_type(tar::EntryType::Char);
    null.set_mode(0o666);
    null.set_device_major(1).expect("major");
    null.set_device_minor(3).expect("minor");
    null.set_size(0);
    b.append_data(&mut null, "dev/null", std::io::empty())
        .expect("char");
    b.into_inner().expect("tar")
}

fn compressed(kind: Compression, raw: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    match kind {
        Compression::None => raw.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(raw).expect("gz");
            e.finish().expect("gz")
        }
        Compression::Xz => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(raw).expect("xz");
            e.finish().expect("xz")
        }
        Compression::Zstd => zstd::encode_all(raw, 1).expect("zstd"),
    }
}

#[test]
fn tarballs_in_every_compression_keep_links_modes_and_specials() {
    let tmp = tempfile::tempdir().expect("tempdir");
    for (i, kind) in [
        Compression::None,
        Compression::Gzip,
        Compression::Xz,
        Compression::Zstd,
    ]
    .into_iter()
    .enumerate()
    {
        let tarball = tmp.path().join(format!("root{i}.tar.whatever"));
        fs::write(&tarball, compressed(kind, &tar_bytes())).expect("write tarball");
        let staged = stage(
            &[RootSource::Tarball(tarball)],
            &tmp.path().join(format!("s{i}")),
        )
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        let r = &staged.root;
        assert_eq!(
            fs::read_to_string(r.join("etc/motd")).expect("motd"),
            "hello",
            "{kind:?}"
        );
        assert_eq!(mode(&r.join("etc")), 0o750);
        assert_eq!(mode(&r.join("etc/motd")), 0o640);
        assert_eq!(mode(&r.join("bin/su")), 0o4755, "{kind:?}: setuid kept");
        let ino = |p: &str| fs::metadata(r.join(p)).expect("meta").ino();
        assert_eq!(
            ino("etc/motd"),
            ino("etc/motd.link"),
            "{kind:?}: hard link kept"
        );
        assert_eq!(
            fs::read_link(r.join("bin/sh")).expect("link"),
            Path::new("/bin/busybox")
        );
        let fifo = fs::symlink_metadata(r.join("run/initctl")).expect("fifo");
        assert!(
            fifo.file_type().is_fifo(),
            "{kind:?}: fifo is a fifo, not a file"
        );
        match fs::symlink_metadata(r.join("dev/null")) {
            Ok(m) => {
                assert!(m.file_type().is_char_device(), "{kind:?}: /dev/null");
                assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
            }
            Err(_) => assert_eq!(staged.skipped[0].path, Path::new("/dev/null")),
        }
        if staged.ownership_preserved {
            let m = fs::metadata(r.join("etc/motd")).expect("meta");
            assert_eq!((m.uid(), m.gid()), (1234, 5678));
        } else {
            eprintln!("not root: ownership not checked");
        }
        assert_eq!(mode(r), 0o755);
    }
}

#[test]
fn later_sources_overwrite_earlier_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    write(&a.join("etc/os-release"), "A", 0o644);
    write(&a.join("etc/keep"), "A", 0o600);
    write(&a.join("opt/thing"), "file in A", 0o644);
    write(&b.join("etc/os-release"), "B", 0o644);
    write(&b.join("opt/thing/inner"), "dir in B", 0o644);
    let tarball = tmp.path().join("c.tar");
    fs::write(&tarball, tar_bytes()).expect("tarball");
    let sources = [
        RootSource::Directory(a),
        RootSource::Directory(b),
        RootSource::Tarball(tarball),
    ];
    let staged = stage(&sources, &tmp.path().join("s")).expect("stage");
    let r = &staged.root;
    assert_eq!(
        fs::read_to_string(r.join("etc/os-release")).expect("read"),
        "B"
    );
    assert_eq!(fs::read_to_string(r.join("etc/keep")).expect("read"), "A");
    assert_eq!(mode(&r.join("etc/keep")), 0o600);
    assert_eq!(
        fs::read_to_string(r.join("opt/thing/inner")).expect("read"),
        "dir in B"
    );
    assert_eq!(
        fs::read_to_string(r.join("etc/motd")).expect("read"),
        "hello"
    );
}

#[test]
fn directory_copy_does_not_follow_symlinks_and_keeps_hard_links() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = tmp.path().join("src");
    write(&src.join("bin/busybox"), "bb", 0o755);
    fs::hard_link(src.join("bin/busybox"), src.join("bin/ls")).expect("hardlink");
    symlink("/etc/shadow", src.join("shadow-link")).expect("symlink");
    symlink("busybox", src.join("bin/sh")).expect("symlink");
    fs::create_dir(src.join("locked")).expect("mkdir");
    write(&src.join("locked/secret"), "s", 0o400);
    fs::set_permissions(src.join("locked"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let staged = stage(&[RootSource::Directory(src)], &tmp.path().join("s")).expect("stage");
    let r = &staged.root;
    assert_eq!(
        fs::read_link(r.join("shadow-link")).expect("link"),
        Path::new("/etc/shadow")
    );
    assert_eq!(
        fs::read_link(r.join("bin/sh")).expect("link"),
        Path::new("busybox")
    );
    let ino = |p: &str| fs::metadata(r.join(p)).expect("meta").ino();
    assert_eq!(ino("bin/busybox"), ino("bin/ls"));
    assert_eq!(mode(&r.join("locked")), 0o700);
    assert_eq!(mode(&r.join("locked/secret")), 0o400);
    assert!(staged.skipped.is_empty(), "{:?}", staged.skipped);
}

#[test]
fn nothing_is_written_through_a_staged_symlink_to_the_host() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let outside = tmp.path().join("host-etc");
    write(&outside.join("passwd"), "host", 0o644);
    let a = tmp.path().join("a");
    fs::create_dir(&a).expect("mkdir");
    symlink(&outside, a.join("etc")).expect("symlink");

    // A tarball writing etc/passwd must not follow the absolute symlink.
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header();
    h.set_mode(0o644);
    h.set_size(4);
    b.append_data(&mut h, "etc/passwd", &b"evil"[..])
        .expect("append");
    let tarball = tmp.path().join("t.tar");
    fs::write(&tarball, b.into_inner().expect("tar")).expect("write");
    let err = stage(
        &[
            RootSource::Directory(a.clone()),
            RootSource::Tarball(tarball),
        ],
        &tmp.path().join("s1"),
    )
    .expect_err("must refuse");
    assert!(matches!(err, RootfsError::Escapes { .. }), "{err}");
    assert_eq!(
        fs::read_to_string(outside.join("passwd")).expect("read"),
        "host"
    );

    // A directory source with a real etc/ replaces the symlink instead of following it.
    let b = tmp.path().join("b");
    write(&b.join("etc/passwd"), "guest", 0o644);
    let staged = stage(
        &[RootSource::Directory(a), RootSource::Directory(b)],
        &tmp.path().join("s2"),
    )
    .expect("stage");
    assert_eq!(
        fs::read_to_string(staged.root.join("etc/passwd")).expect("read"),
        "guest"
    );
    assert_eq!(
        fs::read_to_string(outside.join("passwd")).expect("read"),
        "host"
    );

    // add_file refuses a symlink on the way.
    let c = tmp.path().join("c");
    fs::create_dir(&c).expect("mkdir");
    symlink(&outside, c.join("etc")).expect("symlink");
    let staged = stage(&[RootSource::Directory(c)], &tmp.path().join("s3")).expect("stage");
    let err = staged
        .add_file(Path::new("/etc/passwd"), b"x", 0o644)
        .expect_err("symlink");
    assert!(
        matches!(err, RootfsError::NotADirectoryInRoot { .. }),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(outside.join("passwd")).expect("read"),
        "host"
    );
}

#[test]
fn dotdot_entries_are_an_error() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut h = header();
    h.set_mode(0o644);
    h.set_size(1);
    // tar-rs refuses to write `..` paths, so patch the raw name field.
    let name = b"../escape";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[b'x'; 512]);
    raw.extend_from_slice(&[0; 1024]);
    let tarball = tmp.path().join("evil.tar");
    fs::write(&tarball, raw).expect("write");
    let err = stage(&[RootSource::Tarball(tarball)], &tmp.path().join("s")).expect_err("refused");
    assert!(matches!(err, RootfsError::UnsafeEntry { .. }), "{err}");
    assert!(err.to_string().contains("../escape"), "{err}");
    assert!(!tmp.path().join("escape").exists());
}

#[test]
fn add_file_creates_parents_and_replaces() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let staged = stage(&[], &tmp.path().join("s")).expect("stage");
    staged
        .add_file(Path::new("/etc/hostname"), b"vm1\n", 0o644)
        .expect("add");
    staged
        .add_file(Path::new("etc/hostname"), b"vm2\n", 0o600)
        .expect("replace");
    assert_eq!(
        fs::read_to_string(staged.root.join("etc/hostname")).expect("read"),
        "vm2\n"
    );
    assert_eq!(mode(&staged.root.join("etc/hostname")), 0o600);
    assert_eq!(mode(&staged.root.join("etc")), 0o755);
    let err = staged
        .add_file(Path::new("/../x"), b"", 0o644)
        .expect_err("dotdot");
    assert!(matches!(err, RootfsError::BadPathInRoot { .. }));
    assert!(staged.add_file(Path::new("/"), b"", 0o644).is_err());
}

#[test]
fn staging_must_be_empty_and_compression_known() {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(&tmp.path().join("s/old"), "x", 0o644);
    let err = stage(&[], &tmp.path().join("s")).expect_err("not empty");
    assert!(matches!(err, RootfsError::StagingNotEmpty { .. }));
    let bz = tmp.path().join("r.tar.bz2");
    fs::write(&bz, b"BZh91AY&SY").expect("write");
    let err = stage(&[RootSource::Tarball(bz)], &tmp.path().join("t")).expect_err("bzip2");
    assert!(err.to_string().contains("bzip2"), "{err}");
    let err = stage(
        &[RootSource::Directory(tmp.path().join("nope"))],
        &tmp.path().join("u"),
    )
    .expect_err("missing");
    assert!(err.to_string().contains("nope"), "{err}");
}
