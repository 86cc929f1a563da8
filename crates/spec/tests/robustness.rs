//! Bad input never panics: malformed TOML and JSON, binary garbage, deep nesting, wrong
//! types, out-of-range numbers, bad names, non-UTF-8 contents and file names. Each case
//! either loads or fails with diagnostics that point inside the file.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use common::{fails, flatten, loads, Dir, Found};
use microvm_spec::diag::Severity;
use microvm_spec::{load_file, load_with, LoadFailure, LoadOptions};

/// Every error of a failure has a span inside one of its files (the top file's own read
/// errors aside, which have no file to point into).
fn spans_inside(failure: &LoadFailure) {
    for d in failure.errors() {
        if let Some(span) = &d.span {
            let text = &failure.sources.file(span.file).text;
            assert!(
                span.range.start <= span.range.end && span.range.end <= text.len(),
                "span {:?} outside a file of {} bytes: {d:?}",
                span.range,
                text.len()
            );
        }
    }
}

/// Loads `text` as `name`; returns the failure's diagnostics (empty when it loaded).
fn try_load(dir: &Dir, name: &str, text: &[u8]) -> Vec<Found> {
    let path = dir.write_bytes(name, text);
    match load_file(&path) {
        Ok(loaded) => flatten(&loaded.warnings, &loaded.sources),
        Err(failure) => {
            spans_inside(&failure);
            assert!(failure.errors().count() > 0, "a failure without errors");
            flatten(&failure.diagnostics, &failure.sources)
        }
    }
}

fn first_error(found: &[Found]) -> &Found {
    found
        .iter()
        .find(|d| d.severity == Severity::Error)
        .unwrap_or_else(|| panic!("no error among {found:#?}"))
}

#[test]
fn malformed_toml() {
    let dir = Dir::new();
    for text in [
        "[[volumes]\nimage = \"a\"\n",
        "vcpu = ",
        "vcpu = 1\nvcpu = 2\n",
        "mem = \"unterminated\n",
        "[qemu\n",
        "= 1\n",
        "a.b = 1\na = 2\n",
        "[a]\n[a]\n",
        "x = [1, 2\n",
        "x = {a = 1\n",
        "x = 1979-05-27T07:32:00Z\n",
        "vcpu = 99999999999999999999\n",
        "vcpu = 0x\n",
        "\u{feff}vcpu = 1\n",
        "\"\"\"",
        "[[]]\n",
        "[[volumes]]\n[volumes]\n",
    ] {
        let found = try_load(&dir, "vm1.toml", text.as_bytes());
        if let Some(e) = found.iter().find(|d| d.severity == Severity::Error) {
            assert!(e.line.is_some(), "{text:?}: {e:?}");
        }
    }
    let found = try_load(&dir, "vm1.toml", b"vcpu = 1\nmem = \n");
    let e = first_error(&found);
    assert!(e.message.starts_with("invalid TOML: "), "{e:?}");
    assert_eq!(e.line, Some(2));
}

#[test]
fn malformed_json() {
    let dir = Dir::new();
    for text in [
        "{",
        "{\"vcpu\": ",
        "{\"vcpu\": 1,}",
        "{\"vcpu\": 1 \"mem\": 2}",
        "{'vcpu': 1}",
        "{vcpu: 1}",
        "{\"vcpu\": 0x10}",
        "{\"vcpu\": NaN}",
        "{\"vcpu\": 1} trailing",
        "// comment\n{}",
        "[",
        "\"",
        "{\"a\": \"\\u12\"}",
        "{\"a\": \"\\ud800\"}",
        "{\"vcpu\": -}",
        "{\"vcpu\": 1e}",
        "",
        "   ",
    ] {
        let found = try_load(&dir, "vm1.json", text.as_bytes());
        let e = first_error(&found);
        assert!(e.line.is_some(), "{text:?}: {e:?}");
    }
    let found = try_load(&dir, "vm1.json", b"{\n  \"vcpu\": 1,\n  \"vcpu\": 2\n}\n");
    let e = first_error(&found);
    assert_eq!(e.message, "invalid JSON: duplicate key \"vcpu\"");
    assert_eq!(e.line, Some(3));
}

#[test]
fn not_a_table_at_the_top() {
    let dir = Dir::new();
    for (text, kind) in [
        ("[1, 2]", "a list"),
        ("\"x\"", "a string"),
        ("42", "an integer"),
        ("null", "null"),
        ("true", "a boolean"),
    ] {
        let found = try_load(&dir, "vm1.json", text.as_bytes());
        assert_eq!(
            first_error(&found).message,
            format!("a definition must be a table, found {kind}")
        );
    }
    // An empty TOML file is an empty table: a VM with every default.
    let (loaded, _) = loads(&dir.write("empty.toml", ""));
    assert_eq!(loaded.config.name.as_str(), "empty");
}

#[test]
fn format_is_chosen_by_extension_then_content() {
    let dir = Dir::new();
    // No extension, JSON content.
    let (loaded, _) = loads(&dir.write("vmjson", "{\"vcpu\": 3}"));
    assert_eq!(loaded.config.vcpu, 3);
    // No extension, TOML content.
    let (loaded, _) = loads(&dir.write("vmtoml", "vcpu = 4\n"));
    assert_eq!(loaded.config.vcpu, 4);
    // `.toml` is TOML even if it looks like JSON.
    let found = try_load(&dir, "vm1.toml", b"{\"vcpu\": 3}");
    assert!(first_error(&found).message.starts_with("invalid TOML"));
}

#[test]
fn binary_garbage() {
    let dir = Dir::new();
    let mut seed: u32 = 0x1234_5678;
    let mut bytes = Vec::new();
    for round in 0..64 {
        bytes.clear();
        for _ in 0..(round * 37 % 512) {
            // xorshift32
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            bytes.push((seed & 0xff) as u8);
        }
        for name in ["vm1.toml", "vm1.json", "vm1"] {
            try_load(&dir, name, &bytes);
        }
    }
    // NUL and control characters are valid UTF-8 but not TOML.
    let found = try_load(&dir, "vm1.toml", b"\0\x01\x02vcpu = 1");
    assert!(first_error(&found).message.starts_with("invalid TOML"));
}

#[test]
fn non_utf8_contents() {
    let dir = Dir::new();
    let found = try_load(&dir, "vm1.toml", b"vcpu = 1\nhostName = \"\xff\xfe\"\n");
    assert_eq!(found.len(), 1);
    assert!(
        found[0]
            .message
            .ends_with("vm1.toml is not valid UTF-8 (byte 21)"),
        "{found:#?}"
    );
    // In an import, the error points at the import entry.
    dir.write_bytes("bad.toml", b"\xc3\x28");
    let path = dir.write("vm2.toml", "vcpu = 1\nimports = [\"bad.toml\"]\n");
    let (_, found) = fails(&path);
    assert!(
        found[0].message.contains("is not valid UTF-8"),
        "{found:#?}"
    );
    assert_eq!(found[0].line, Some(2));
    assert_eq!(found[0].file.as_deref(), Some(&*path));
}

#[test]
fn non_utf8_file_name() {
    let dir = Dir::new();
    let name = OsStr::from_bytes(b"vm\xff.toml");
    let path = dir.path().join(name);
    std::fs::write(&path, "vcpu = 1\n").expect("write");
    // The default name, from the file stem, cannot be used: a clear error says so.
    let failure = load_file(&path).expect_err("a non-UTF-8 stem is no VM name");
    spans_inside(&failure);
    let found = flatten(&failure.diagnostics, &failure.sources);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(
        found[0].message,
        format!(
            "cannot name the VM after the file {:?} (its name is not valid UTF-8); set `hostName`",
            path.to_string_lossy()
        )
    );
    assert_eq!(found[0].line, Some(1));
    assert!(failure.render().contains("vm\u{fffd}.toml"));
    // `hostName` or a name from the caller makes it load.
    let options = LoadOptions {
        name: Some("vm1".parse().expect("name")),
        ..LoadOptions::default()
    };
    assert_eq!(
        load_with(&path, &options)
            .expect("loads")
            .config
            .name
            .as_str(),
        "vm1"
    );
    std::fs::write(&path, "hostName = \"vm2\"\n").expect("write");
    assert_eq!(loads(&path).0.config.name.as_str(), "vm2");
    // A non-UTF-8 directory works too, and imports resolve inside it.
    let sub = dir.path().join(OsStr::from_bytes(b"d\xfe"));
    std::fs::create_dir(&sub).expect("mkdir");
    std::fs::write(sub.join("base.toml"), "mem = 256\n").expect("write");
    std::fs::write(
        sub.join("vm3.toml"),
        "imports = [\"base.toml\"]\nkernel = \"k\"\n",
    )
    .expect("write");
    let (loaded, _) = loads(&sub.join("vm3.toml"));
    assert_eq!(loaded.config.mem, 256);
}

#[test]
fn unreadable_paths() {
    let dir = Dir::new();
    let missing = dir.path().join("missing.toml");
    let failure = load_file(&missing).expect_err("missing");
    let msg = &failure.diagnostics[0].message;
    assert!(
        msg.starts_with("cannot read ") && msg.contains("missing.toml"),
        "{msg}"
    );
    assert!(failure.diagnostics[0].span.is_none());
    let failure = load_file(dir.path()).expect_err("a directory");
    assert!(failure.diagnostics[0].message.starts_with("cannot read "));
    let failure = load_file(Path::new("")).expect_err("empty path");
    assert!(failure.diagnostics[0].message.starts_with("cannot read "));
}

fn nested(open: &str, inner: &str, close: &str, depth: usize) -> String {
    format!("{}{inner}{}", open.repeat(depth), close.repeat(depth))
}

#[test]
fn deep_nesting_does_not_overflow_the_stack() {
    // Test threads have small (2 MiB) stacks: a recursion without a limit would crash.
    let dir = Dir::new();
    for depth in [10, 79, 80, 81, 200, 511, 512, 513, 1000, 10_000, 100_000] {
        for (name, text) in [
            ("a.toml", format!("x = {}\n", nested("[", "1", "]", depth))),
            (
                "b.toml",
                format!("runner = {}\n", nested("[", "", "]", depth)),
            ),
            (
                "c.toml",
                format!("deploy = {}\n", nested("{a=", "1", "}", depth)),
            ),
            ("d.toml", format!("{} = 1\n", vec!["k"; depth].join("."))),
            ("e.toml", format!("[{}]\n", vec!["k"; depth].join("."))),
            (
                "f.json",
                format!("{{\"x\": {}}}", nested("[", "1", "]", depth)),
            ),
            (
                "g.json",
                format!("{{\"runner\": {}}}", nested("[", "", "]", depth)),
            ),
            ("h.json", nested("{\"deploy\":", "{}", "}", depth)),
            (
                "i.json",
                format!(
                    "{{\"firecracker\": {{\"extraConfig\": {}}}}}",
                    nested("{\"a\":", "1", "}", depth)
                ),
            ),
            (
                "j.json",
                format!("{{\"kernelParams\": {}}}", nested("[", "\"a\"", "]", depth)),
            ),
        ] {
            let found = try_load(&dir, name, text.as_bytes());
            if depth >= 10_000 {
                let e = first_error(&found);
                assert!(
                    e.message.contains("recursion") || e.message.contains("nesting"),
                    "{name} at depth {depth}: {e:?}"
                );
            }
        }
    }
}

#[test]
fn deep_nesting_in_an_import_chain() {
    // A long chain of imports (not a cycle) is read without trouble.
    let dir = Dir::new();
    for i in 0..200 {
        dir.write(
            &format!("f{i}.toml"),
            &format!(
                "imports = [\"f{}.toml\"]\nkernelParams = [\"p{i}\"]\n",
                i + 1
            ),
        );
    }
    dir.write("f200.toml", "vcpu = 1\n");
    let (loaded, _) = loads(&dir.path().join("f0.toml"));
    assert_eq!(loaded.config.kernel_params.len(), 200);
    assert_eq!(loaded.config.kernel_params[0], "p199");
}

#[test]
fn numbers_out_of_range() {
    let dir = Dir::new();
    for (text, message) in [
        ("vcpu = -1\n", "expected a non-negative integer, found -1"),
        (
            "mem = -9223372036854775808\n",
            "expected a non-negative integer, found -9223372036854775808",
        ),
        (
            "vsock.cid = -3\n",
            "expected a non-negative integer, found -3",
        ),
        (
            "vcpu = 4294967296\n",
            "4294967296 is more than 255, the most a supported hypervisor boots (x86 APIC ids)",
        ),
        ("vcpu = 1.0\n", "expected an integer, found a float"),
        ("vcpu = inf\n", "expected an integer, found a float"),
        ("vcpu = nan\n", "expected an integer, found a float"),
        (
            "hotplugMem = -1\n",
            "expected a non-negative integer, found -1",
        ),
        (
            "[[qemu.pcieRootPorts]]\nid = \"p\"\nchassis = -1\n",
            "expected a non-negative integer, found -1",
        ),
    ] {
        let found = try_load(&dir, "vm1.toml", text.as_bytes());
        assert_eq!(first_error(&found).message, message, "{text:?}");
    }
    for text in [
        "{\"vcpu\": 1e308}",
        "{\"vcpu\": -1e308}",
        "{\"vcpu\": 123456789012345678901234567890}",
        "{\"vcpu\": 1.5e3}",
        "{\"vcpu\": -0}",
        "{\"vcpu\": 0.0000001}",
        "{\"mem\": 9007199254740993}",
    ] {
        try_load(&dir, "vm1.json", text.as_bytes());
    }
    // An integral exponent form is an integer.
    let (loaded, _) = loads(&dir.write("vm2.json", "{\"vcpu\": 2e0, \"mem\": 1E3}"));
    assert_eq!((loaded.config.vcpu, loaded.config.mem), (2, 1000));
}

#[test]
fn wrong_types_everywhere() {
    // Every top-level key of the schema, given each kind of wrong value.
    let dir = Dir::new();
    for key in TOP_KEYS {
        for value in [
            "1", "-1", "true", "\"x\"", "[]", "[1]", "{}", "{a = 1}", "1.5",
        ] {
            let text = format!("\"{key}\" = {value}\n");
            try_load(&dir, "vm1.toml", text.as_bytes());
        }
    }
}

#[test]
fn bad_names() {
    let dir = Dir::new();
    for name in ["a/b", "..", ".", "a b", "-x", ".hidden", "ü", "a:b", ""] {
        let text = format!("hostName = {name:?}\n");
        let found = try_load(&dir, "vm1.toml", text.as_bytes());
        let e = first_error(&found);
        assert_eq!(e.key.as_deref(), Some("hostName"), "{name:?}");
        assert_eq!(e.line, Some(1));
    }
    let long = "n".repeat(300);
    let found = try_load(
        &dir,
        "vm1.toml",
        format!("hostName = \"{long}\"\n").as_bytes(),
    );
    assert!(first_error(&found).message.contains("the limit is 64"));
    // File stems that are no VM names.
    for stem in ["a b", "-x", &"y".repeat(65)] {
        let found = try_load(&dir, &format!("{stem}.toml"), b"vcpu = 1\n");
        assert!(
            first_error(&found).message.ends_with("; set `hostName`"),
            "{stem:?}: {found:#?}"
        );
    }
    let found = try_load(&dir, "..toml", b"vcpu = 1\n");
    assert!(first_error(&found).message.ends_with("; set `hostName`"));
}

#[test]
fn bad_interfaces_and_macs_and_cids() {
    let dir = Dir::new();
    for id in [
        "",
        "ééééééééé",
        "a b",
        "a/b",
        "a:b",
        &"i".repeat(16),
        &"i".repeat(1000),
    ] {
        let text =
            format!("[[interfaces]]\ntype = \"tap\"\nid = {id:?}\nmac = \"02:00:00:00:00:01\"\n");
        let found = try_load(&dir, "vm1.toml", text.as_bytes());
        assert_eq!(first_error(&found).line, Some(3), "{id:?}");
    }
    for mac in [
        "",
        "02",
        "02:00:00:00:00:01:02",
        "ff:ff:ff:ff:ff:ff",
        "03:00:00:00:00:01",
        "02:00:00:00:00:0g",
        "02-00-00-00-00",
        "0200.0000.0001",
        "02:00:00:00:00:001",
    ] {
        let text = format!("[[interfaces]]\ntype = \"tap\"\nid = \"vm-a\"\nmac = {mac:?}\n");
        let found = try_load(&dir, "vm1.toml", text.as_bytes());
        assert_eq!(first_error(&found).line, Some(4), "{mac:?}");
    }
    for cid in [
        "0",
        "1",
        "2",
        "-1",
        "4294967295",
        "18446744073709551615",
        "\"3\"",
    ] {
        let text = format!("vsock.cid = {cid}\n");
        try_load(&dir, "vm1.toml", text.as_bytes());
        let found = try_load(&dir, "vm1.toml", text.as_bytes());
        assert_eq!(first_error(&found).line, Some(1), "{cid}");
    }
}

#[test]
fn duplicates_in_bulk() {
    let dir = Dir::new();
    let mut text = String::new();
    for i in 0..50 {
        text.push_str(&format!(
            "[[volumes]]\nimage = \"v{}.img\"\nsize = 1\n[[shares]]\ntag = \"t{}\"\nsource = \"/s\"\nmountPoint = \"/m{i}\"\nproto = \"virtiofs\"\n[[interfaces]]\ntype = \"tap\"\nid = \"vm-{}\"\nmac = \"02:00:00:00:00:{:02x}\"\n",
            i % 3,
            i % 4,
            i % 5,
            i % 7 + 1
        ));
    }
    let found = try_load(&dir, "vm1.toml", text.as_bytes());
    let errors: Vec<&str> = found
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.message.as_str())
        .collect();
    // 3 images, 4 tags (and their 4 default sockets), 5 ids: each reported once.
    assert_eq!(errors.len(), 3 + 4 + 4 + 5, "{errors:#?}");
}

/// Every top-level key of the schema.
pub const TOP_KEYS: &[&str] = &[
    "imports",
    "hostName",
    "kernel",
    "root",
    "init",
    "command",
    "workingDirectory",
    "environment",
    "network",
    "ssh",
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
    "volumes",
    "shares",
    "interfaces",
    "forwardPorts",
    "devices",
    "vsock",
    "graphics",
    "hypervisor",
    "qemu",
    "cloud-hypervisor",
    "crosvm",
    "firecracker",
    "kvmtool",
    "stratovirt",
    "alioth",
    "vfkit",
    "user",
    "virtiofsd",
    "vmHostPackages",
    "credentialFiles",
    "deploy",
    "guest",
    "optimize",
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
];

#[test]
fn top_keys_match_the_schema() {
    // The list above is the one the "did you mean" message offers.
    let message = microvm_spec::de::unknown_key_message("zzzzzzzzzzzz", TOP_KEYS);
    let dir = Dir::new();
    let found = try_load(&dir, "vm1.toml", b"zzzzzzzzzzzz = 1\n");
    assert_eq!(first_error(&found).message, message);
}

/// A 2 MB unknown key is neither compared with the schema's keys nor echoed: the
/// message quotes its first 64 bytes and the rendering stays short.
#[test]
fn huge_keys_and_files_are_bounded() {
    let dir = Dir::new();
    let key = "k".repeat(2_000_000);
    let path = dir.write("vm1.toml", &format!("{key} = 1\n"));
    let failure = load_file(&path).expect_err("an unknown key");
    let message = &failure.errors().next().expect("an error").message;
    assert_eq!(
        message,
        &format!("unknown key `{}…` (2000000 bytes long)", &key[..64])
    );
    let rendered = failure.render();
    assert!(rendered.len() < 2000, "{} bytes rendered", rendered.len());
    assert!(
        rendered.contains("(the line is too long to show)"),
        "{rendered}"
    );
    let json = failure
        .sources
        .to_json(failure.errors().next().expect("an error"));
    assert!(json.path.expect("a path").len() < 1100);

    let path = dir.write(
        "big.toml",
        &format!("# {}\nvcpu = 1\n", "x".repeat(5 << 20)),
    );
    let failure = load_file(&path).expect_err("too large");
    assert_eq!(
        failure.errors().next().expect("an error").message,
        format!(
            "cannot read {}: larger than 4 MiB, the most a definition may be",
            path.display()
        )
    );
}
