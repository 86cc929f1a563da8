use std::path::PathBuf;

use super::*;
use crate::testutil::example;

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn outputs() {
    use Hypervisor::*;
    for (hv, text, want) in [
        (
            Qemu,
            "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)",
            Some(Version::new(10, 0, 2)),
        ),
        (
            CloudHypervisor,
            "cloud-hypervisor v53.0",
            Some(Version::new(53, 0, 0)),
        ),
        (
            Firecracker,
            "Firecracker v1.16.1\n",
            Some(Version::new(1, 16, 1)),
        ),
        (Alioth, "alioth-cli 0.12.0", Some(Version::new(0, 12, 0))),
        (Kvmtool, "kvm tool 3.18.0", Some(Version::new(3, 18, 0))),
        (Crosvm, "crosvm 0.1.0", None),
        (Firecracker, "usage: firecracker", None),
    ] {
        assert_eq!(parse_output(hv, text), want, "{hv} {text:?}");
    }
}

#[test]
fn configured_version_wins_and_missing_binary_is_said() {
    let mut c = example();
    c.firecracker.version = Some("1.12.0".into());
    assert_eq!(
        detect(Hypervisor::Firecracker, &c, None),
        Detection::Configured {
            version: Version::new(1, 12, 0)
        }
    );
    c.firecracker.version = None;
    c.firecracker.package = Some("/nonexistent/microvm-test/firecracker".into());
    let d = detect(Hypervisor::Firecracker, &c, None);
    assert_eq!(
        d,
        Detection::Missing {
            program: "/nonexistent/microvm-test/firecracker".into()
        }
    );
    assert_eq!(d.version(), None);
    assert!(
        d.describe(Hypervisor::Firecracker)
            .ends_with("not found: planned for the newest firecracker syntax"),
        "{}",
        d.describe(Hypervisor::Firecracker)
    );
}

/// The real qemu of this machine (scripts/setup-host.sh installs it).
#[test]
fn real_qemu_is_detected_and_cached() {
    let c = example();
    let Some(path) = resolve(&program_of(Hypervisor::Qemu, &c)) else {
        eprintln!("skipped: qemu-system-x86_64 is not installed on this host");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("versions.json");
    let first = detect(Hypervisor::Qemu, &c, Some(&cache));
    let Detection::Detected {
        version, cached, ..
    } = &first
    else {
        panic!("qemu not detected: {first:?}");
    };
    assert!(!cached);
    assert!(version.major >= 7, "{version}");
    let again = detect_binary(Hypervisor::Qemu, &path, Some(&cache));
    assert!(
        matches!(again, Detection::Detected { cached: true, version: v, .. } if v == *version),
        "{again:?}"
    );
    eprintln!("{}", again.describe(Hypervisor::Qemu));
}

/// A new build at the same path (another size or mtime) is run again.
#[test]
fn cache_follows_the_binary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache/versions.json");
    let bin = script(dir.path(), "firecracker", "echo Firecracker v1.12.0");
    let d = detect_binary(Hypervisor::Firecracker, &bin, Some(&cache));
    assert_eq!(d.version(), Some(Version::new(1, 12, 0)));
    let d = detect_binary(Hypervisor::Firecracker, &bin, Some(&cache));
    assert!(
        matches!(d, Detection::Detected { cached: true, .. }),
        "{d:?}"
    );
    script(
        dir.path(),
        "firecracker",
        "echo Firecracker v1.16.1 # rebuilt",
    );
    let d = detect_binary(Hypervisor::Firecracker, &bin, Some(&cache));
    assert_eq!(d.version(), Some(Version::new(1, 16, 1)), "{d:?}");
    assert!(matches!(d, Detection::Detected { cached: false, .. }));
    // A corrupt cache is ignored.
    std::fs::write(&cache, "{not json").expect("write");
    let d = detect_binary(Hypervisor::Firecracker, &bin, Some(&cache));
    assert_eq!(d.version(), Some(Version::new(1, 16, 1)));
}

#[test]
fn hanging_or_silent_binaries_are_unknown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let silent = script(dir.path(), "alioth", "echo usage");
    let d = detect_binary(Hypervisor::Alioth, &silent, None);
    assert!(matches!(d, Detection::Unknown { .. }), "{d:?}");
    assert!(d
        .describe(Hypervisor::Alioth)
        .contains("planned for the newest alioth syntax"));
    let hang = script(dir.path(), "lkvm", "exec sleep 30");
    let start = Instant::now();
    let d = detect_binary(Hypervisor::Kvmtool, &hang, None);
    assert!(
        matches!(d, Detection::Unknown { ref reason, .. } if reason.contains("did not exit")),
        "{d:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(25));
}
