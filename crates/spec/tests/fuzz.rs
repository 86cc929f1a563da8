//! Property tests: `load_file` never panics, whatever the input, and every error it
//! reports points inside a file it read.
//!
//! - `random_text`: token soup shaped like TOML or JSON (2000 cases by default);
//! - `random_definitions`: well-formed TOML and JSON whose keys come from the schema
//!   (top level and nested tables) with values of random types (1000 cases by default).
//!
//! `PROPTEST_CASES` overrides both counts.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use microvm_spec::{load_file, LoadFailure};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value};

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases: cases(default_cases),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Loads `path`; on failure, checks that every error has a span inside its file.
/// Returns whether it loaded.
fn check(path: &Path) -> Result<bool, TestCaseError> {
    match load_file(path) {
        Ok(_) => Ok(true),
        Err(failure) => {
            spans_inside(&failure)?;
            Ok(false)
        }
    }
}

fn spans_inside(failure: &LoadFailure) -> Result<(), TestCaseError> {
    prop_assert!(failure.errors().count() > 0, "a failure without errors");
    for d in failure.errors() {
        let Some(span) = &d.span else {
            return Err(TestCaseError::fail(format!(
                "an error without a span: {d:?}"
            )));
        };
        let text = &failure.sources.file(span.file).text;
        prop_assert!(
            span.range.start <= span.range.end && span.range.end <= text.len(),
            "span {:?} outside {} bytes: {d:?}",
            span.range,
            text.len()
        );
        // Rendering and locating never panic either.
        let _ = failure.sources.location(span);
    }
    let _ = failure.render();
    Ok(())
}

// --- random text ----------------------------------------------------------------------

const TOKENS: &[&str] = &[
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    "=",
    ":",
    ",",
    ".",
    "\"",
    "'",
    "\"\"\"",
    "\n",
    "\n",
    " ",
    "#",
    "\\",
    "\\u",
    "-",
    "+",
    "0",
    "1",
    "-1",
    "1.5",
    "1e3",
    "9999999999999999999",
    "0x1f",
    "true",
    "false",
    "null",
    "inf",
    "nan",
    "1979-05-27",
    "\u{0}",
    "é",
    "\u{feff}",
    "vcpu",
    "mem",
    "hostName",
    "volumes",
    "shares",
    "interfaces",
    "image",
    "size",
    "mountPoint",
    "tag",
    "source",
    "proto",
    "virtiofs",
    "9p",
    "type",
    "tap",
    "bridge",
    "id",
    "mac",
    "\"02:00:00:00:00:01\"",
    "socket",
    "vsock",
    "cid",
    "kernel",
    "root",
    "directory",
    "imports",
    "\"a.toml\"",
    "\"vm1.toml\"",
    "network",
    "qemu",
    "machine",
    "cloud-hypervisor",
    "extraArgs",
    "\"/var\"",
    "\"x\"",
    "\"\"",
    "balloonMem",
    "hypervisor",
    "\"firecracker\"",
    "[[volumes]]",
    "[[shares]]",
    "[[interfaces]]",
    "[qemu]",
    "[vsock]",
    "\"vcpu\":",
    "\"volumes\":",
    "\"mountPoint\":",
];

fn token_soup() -> impl Strategy<Value = (String, u8)> {
    (
        prop::collection::vec(prop::sample::select(TOKENS), 0..80),
        any::<u8>(),
    )
        .prop_map(|(tokens, ext)| (tokens.concat(), ext % 3))
}

#[test]
fn random_text_never_panics() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A file some soups import.
    std::fs::write(dir.path().join("a.toml"), "vcpu = 1\n").expect("write");
    let ran = AtomicUsize::new(0);
    let loaded = AtomicUsize::new(0);
    let start = Instant::now();
    let mut runner = runner(2000);
    let result = runner.run(&token_soup(), |(text, ext)| {
        ran.fetch_add(1, Ordering::Relaxed);
        let name = ["vm1.toml", "vm1.json", "vm1"][usize::from(ext)];
        let path = dir.path().join(name);
        std::fs::write(&path, &text).expect("write");
        if check(&path)? {
            loaded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    eprintln!(
        "random_text: {} cases ({} loaded) in {:.1?}",
        ran.load(Ordering::Relaxed),
        loaded.load(Ordering::Relaxed),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_bytes_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = AtomicUsize::new(0);
    let mut runner = runner(500);
    let result = runner.run(
        &(prop::collection::vec(any::<u8>(), 0..300), any::<bool>()),
        |(bytes, json)| {
            ran.fetch_add(1, Ordering::Relaxed);
            let path = dir.path().join(if json { "vm1.json" } else { "vm1.toml" });
            std::fs::write(&path, &bytes).expect("write");
            match load_file(&path) {
                Ok(_) => {}
                // Invalid UTF-8 is reported before any file is in the source map.
                Err(failure) if failure.sources.files().count() == 0 => {
                    prop_assert!(failure.diagnostics[0].message.contains("not valid UTF-8"));
                }
                Err(failure) => spans_inside(&failure)?,
            }
            Ok(())
        },
    );
    eprintln!("random_bytes: {} cases", ran.load(Ordering::Relaxed));
    if let Err(e) = result {
        panic!("{e}");
    }
}

// --- random structured definitions ----------------------------------------------------

/// Keys of the schema, per table. Lists of tables use the same key sets per entry.
const TOP: &[&str] = &[
    "hostName",
    "kernel",
    "init",
    "command",
    "workingDirectory",
    "environment",
    "kvm",
    "controlChannel",
    "vcpu",
    "mem",
    "hugepageMem",
    "hotplugMem",
    "hotpluggedMem",
    "balloon",
    "initialBalloonMem",
    "deflateOnOOM",
    "balloonMem",
    "initrdPath",
    "kernelParams",
    "cpu",
    "bootDisk",
    "storeOnDisk",
    "storeDisk",
    "storeDiskType",
    "storeDiskErofsFlags",
    "storeDiskSquashfsFlags",
    "writableStoreOverlay",
    "systemSymlink",
    "hypervisor",
    "user",
    "vmHostPackages",
    "credentialFiles",
    "deploy",
    "preStart",
    "socket",
    "prettyProcnames",
    "binScripts",
    "runner",
    "declaredRunner",
    "extraArgsScript",
    "registerWithMachined",
    "machineId",
    "registerClosure",
    "vfkit",
    "notAKey",
];
const VOLUME: &[&str] = &[
    "image",
    "serial",
    "direct",
    "readOnly",
    "label",
    "mountPoint",
    "size",
    "autoCreate",
    "mkfsExtraArgs",
    "fsType",
    "imageType",
    "imgae",
];
const SHARE: &[&str] = &[
    "tag",
    "socket",
    "source",
    "securityModel",
    "mountPoint",
    "proto",
    "readOnly",
    "cache",
    "posixAcl",
    "extraArgs",
];
const INTERFACE: &[&str] = &["type", "id", "mac", "bridge", "macvtap", "tap"];
const MACVTAP: &[&str] = &["link", "mode"];
const FORWARD: &[&str] = &["from", "proto", "host", "guest"];
const ENDPOINT: &[&str] = &["address", "port"];
const DEVICE: &[&str] = &["bus", "path", "qemu"];
const ROOT: &[&str] = &[
    "directory",
    "tarball",
    "oci",
    "ociRef",
    "debian",
    "nix",
    "target",
];
const NETWORK: &[&str] = &["interface", "mac", "addresses", "gateways", "dns", "mtu"];
const QEMU: &[&str] = &[
    "machine",
    "machineOpts",
    "extraArgs",
    "serialConsole",
    "pcieRootPorts",
    "package",
];
const VIRTIOFSD: &[&str] = &[
    "inodeFileHandles",
    "threadPoolSize",
    "extraArgs",
    "group",
    "package",
];
const VSOCK: &[&str] = &["cid", "ssh"];
const GRAPHICS: &[&str] = &[
    "enable",
    "socket",
    "backend",
    "vulkan",
    "hostmem",
    "crosvmPackage",
];
const FIRECRACKER: &[&str] = &[
    "cpu",
    "driveIoEngine",
    "extraArgs",
    "extraConfig",
    "package",
    "version",
];
const CH: &[&str] = &["extraArgs", "platformOEMStrings", "package", "version"];

/// Nested tables of the top level: (key, its keys, whether it is a list of tables).
const NESTED: &[(&str, &[&str], bool)] = &[
    ("volumes", VOLUME, true),
    ("shares", SHARE, true),
    ("interfaces", INTERFACE, true),
    ("forwardPorts", FORWARD, true),
    ("devices", DEVICE, true),
    ("root", ROOT, true),
    ("network", NETWORK, true),
    ("qemu", QEMU, false),
    ("virtiofsd", VIRTIOFSD, false),
    ("vsock", VSOCK, false),
    ("graphics", GRAPHICS, false),
    ("firecracker", FIRECRACKER, false),
    ("cloud-hypervisor", CH, false),
    (
        "crosvm",
        &["extraArgs", "pivotRoot", "package", "version"],
        false,
    ),
    ("kvmtool", &["package", "version"], false),
    ("guest", &["enable"], false),
    ("optimize", &["enable"], false),
];

/// Keys whose value is itself a table with known keys.
fn sub_keys(key: &str) -> Option<&'static [&'static str]> {
    match key {
        "macvtap" => Some(MACVTAP),
        "host" | "guest" => Some(ENDPOINT),
        "tap" => Some(&["vhost"]),
        "ssh" => Some(&["enable"]),
        "debian" => Some(&["suite", "packages", "mirror", "variant"]),
        "kernel" => Some(&["path", "package"]),
        _ => None,
    }
}

const STRINGS: &[&str] = &[
    "",
    "x",
    "vm1",
    "a.img",
    "/var",
    "var",
    "/nix/store",
    "/srv/home",
    "home",
    "tap",
    "user",
    "bridge",
    "macvtap",
    "virtiofs",
    "9p",
    "qemu",
    "firecracker",
    "cloud-hypervisor",
    "crosvm",
    "erofs",
    "squashfs",
    "ext4",
    "ntfs",
    "pci",
    "usb",
    "0000:01:00.0",
    "host",
    "guest",
    "tcp",
    "udp",
    "02:00:00:00:00:01",
    "01:00:00:00:00:01",
    "10.0.0.2/24",
    "10.0.0.1",
    "::1",
    "`nproc`",
    "vm-0123456789abcdef",
    "a/b",
    "..",
    "/a/../b",
    "--translate-uid",
    "oem_strings",
    "auto",
    "required",
    "disabled",
    "private",
    "Async",
    "prefer",
    "é",
    "\u{0}",
    "br0",
    "eth0",
    "a67472e5-570e-5c8a-b18c-ae3c77701050",
];

fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(2),
            Just(3),
            Just(31),
            Just(1024),
            Just(-1),
            Just(i64::MAX),
            Just(i64::MIN),
            Just(u32::MAX as i64),
            any::<i64>(),
        ]
        .prop_map(Value::from),
        prop_oneof![Just(0.5f64), Just(-1e300), any::<f64>()]
            .prop_map(|x| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number)),
        prop::sample::select(STRINGS).prop_map(Value::from),
    ]
}

/// A value for `key`: mostly the right shape, sometimes any shape.
fn value_for(key: &'static str, depth: u32) -> BoxedStrategy<Value> {
    let any_value = scalar()
        .prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((prop::sample::select(STRINGS), inner), 0..3).prop_map(
                    |kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                ),
            ]
        })
        .boxed();
    match sub_keys(key) {
        Some(keys) if depth < 4 => prop_oneof![
            3 => table(keys, depth + 1),
            1 => any_value,
        ]
        .boxed(),
        _ => prop_oneof![
            3 => scalar(),
            1 => prop::collection::vec(scalar(), 0..4).prop_map(Value::Array),
            1 => any_value,
        ]
        .boxed(),
    }
}

fn table(keys: &'static [&'static str], depth: u32) -> BoxedStrategy<Value> {
    prop::collection::vec(
        prop::sample::select(keys)
            .prop_flat_map(move |k| value_for(k, depth).prop_map(move |v| (k, v))),
        0..keys.len().min(6) + 1,
    )
    .prop_map(|entries| {
        let mut map = Map::new();
        for (k, v) in entries {
            map.insert(k.to_owned(), v);
        }
        Value::Object(map)
    })
    .boxed()
}

fn definition() -> impl Strategy<Value = Value> {
    let nested = prop::collection::vec(
        prop::sample::select(NESTED).prop_flat_map(|(key, keys, list)| {
            let v = if list {
                prop::collection::vec(table(keys, 1), 0..4)
                    .prop_map(Value::Array)
                    .boxed()
            } else {
                table(keys, 1)
            };
            v.prop_map(move |v| (key, v))
        }),
        0..6,
    );
    (table(TOP, 0), nested).prop_map(|(top, nested)| {
        let Value::Object(mut map) = top else {
            unreachable!("a table")
        };
        for (k, v) in nested {
            map.insert(k.to_owned(), v);
        }
        Value::Object(map)
    })
}

/// TOML for a JSON value (TOML has no null: null entries are left out).
fn to_toml(value: &Value) -> String {
    fn conv(v: &Value) -> Option<toml_edit::Value> {
        Some(match v {
            Value::Null => return None,
            Value::Bool(b) => (*b).into(),
            Value::Number(n) => match n.as_i64() {
                Some(i) => i.into(),
                None => n.as_f64().unwrap_or(0.0).into(),
            },
            Value::String(s) => s.as_str().into(),
            Value::Array(items) => {
                let mut a = toml_edit::Array::new();
                for item in items.iter().filter_map(conv) {
                    a.push(item);
                }
                toml_edit::Value::Array(a)
            }
            Value::Object(map) => {
                let mut t = toml_edit::InlineTable::new();
                for (k, v) in map {
                    if let Some(v) = conv(v) {
                        t.insert(k, v);
                    }
                }
                toml_edit::Value::InlineTable(t)
            }
        })
    }
    let mut doc = toml_edit::DocumentMut::new();
    if let Value::Object(map) = value {
        for (k, v) in map {
            if let Some(v) = conv(v) {
                doc.insert(k, toml_edit::Item::Value(v));
            }
        }
    }
    doc.to_string()
}

#[test]
fn random_definitions_never_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ran = AtomicUsize::new(0);
    let loaded = AtomicUsize::new(0);
    let start = Instant::now();
    let mut runner = runner(1000);
    let result = runner.run(&(definition(), any::<bool>()), |(def, json)| {
        ran.fetch_add(1, Ordering::Relaxed);
        let (name, text) = if json {
            (
                "vm1.json",
                serde_json::to_string_pretty(&def).expect("json"),
            )
        } else {
            ("vm1.toml", to_toml(&def))
        };
        let path = dir.path().join(name);
        std::fs::write(&path, &text).expect("write");
        if check(&path)? {
            loaded.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    eprintln!(
        "random_definitions: {} cases ({} loaded) in {:.1?}",
        ran.load(Ordering::Relaxed),
        loaded.load(Ordering::Relaxed),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
