//! Every independent error of a definition at once: a type error does not hide the
//! unknown keys after it, nor the rules (§1.17 assertions) that can still be computed.

mod common;

use common::{fails, Dir, Found};
use microvm_spec::diag::Severity;

fn errors(found: &[Found]) -> Vec<(String, Option<usize>)> {
    found
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| (d.message.clone(), d.line))
        .collect()
}

fn has(found: &[Found], message: &str, line: usize) {
    assert!(
        found
            .iter()
            .any(|d| d.message == message && d.line == Some(line)),
        "no {message:?} at line {line} among:\n{:#?}",
        errors(found)
    );
}

#[test]
fn a_type_error_does_not_hide_later_unknown_keys() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "mem = -5\n[qemu]\nmachin = \"microvm\"\n[[volumes]]\nimgae = \"a.img\"\n",
    );
    let (_, found) = fails(&path);
    has(&found, "expected a non-negative integer, found -5", 1);
    has(&found, "unknown key `machin`; did you mean `machine`?", 3);
    has(&found, "unknown key `imgae`; did you mean `image`?", 5);
}

#[test]
fn a_type_error_does_not_hide_assertions() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "mem = -5\nvcpu = \"two\"\nballoonMem = 5\nhostName = \"bad name\"\nsocket = 3\n\
         [vsock.ssh]\nenable = true\n",
    );
    let (_, found) = fails(&path);
    let all = errors(&found);
    assert_eq!(all.len(), 6, "{all:#?}");
    has(&found, "expected a non-negative integer, found -5", 1);
    has(&found, "expected an integer, found a string", 2);
    has(
        &found,
        "The balloonMem option has been removed and replaced by the boolean option balloon",
        3,
    );
    has(&found, "expected a string, found an integer", 5);
    has(
        &found,
        "MicroVM bad name: vsock.ssh.enable needs vsock.cid to be set",
        7,
    );
    assert!(found.iter().all(|d| !d.message.contains("MicroVM ?")));
}

#[test]
fn nothing_is_said_about_a_value_taken_out() {
    let dir = Dir::new();
    // No "missing required key" for the `image` taken out; the size rule, independent
    // of it, is still checked.
    let path = dir.write(
        "vm1.toml",
        "[[volumes]]\nimage = 3\nmountPoint = \"/data\"\nautoCreate = true\n",
    );
    let (_, found) = fails(&path);
    assert_eq!(
        errors(&found),
        [
            ("expected a string, found an integer".to_owned(), Some(2)),
            (
                "MicroVM vm1: volume volumes[0] needs a `size` (MiB) to be created automatically"
                    .to_owned(),
                Some(1)
            )
        ]
    );
}

#[test]
fn a_volume_without_image_is_named_by_its_key() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "[[volumes]]\nmountPoint = \"/data\"\n");
    let (_, found) = fails(&path);
    assert!(
        found
            .iter()
            .all(|d| !d.message.contains("\"?\"") && !d.message.contains(" ? ")),
        "{:#?}",
        errors(&found)
    );
}

#[test]
fn a_merge_conflict_does_not_hide_the_other_errors() {
    let dir = Dir::new();
    dir.write("a.toml", "mem = 256\nkernelParams = \"quiet\"\n");
    dir.write("b.toml", "mem = 128\n");
    let path = dir.write(
        "vm1.toml",
        "imports = [\"a.toml\", \"b.toml\"]\nmem = 512\nkernelParams = [\"x\"]\nvcpu = \"two\"\n\
         [[volumes]]\nimgae = \"v.img\"\n",
    );
    let (_, found) = fails(&path);
    let all = errors(&found);
    // Two conflicts of `mem` (b, then vm1), one of `kernelParams`; no type error for the
    // string kept from a.toml, but the independent type error and unknown key are there.
    assert_eq!(
        all.iter()
            .filter(|(m, _)| m == "conflicting definitions of `mem`")
            .count(),
        2,
        "{all:#?}"
    );
    has(&found, "conflicting definitions of `kernelParams`", 3);
    has(&found, "expected an integer, found a string", 4);
    has(&found, "unknown key `imgae`; did you mean `image`?", 6);
    assert!(
        all.iter().all(|(m, _)| !m.starts_with("expected a list")),
        "{all:#?}"
    );
}

#[test]
fn an_unreadable_import_stops_the_load() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "imports = [\"nope.toml\"]\nvcpu = \"two\"\n");
    let (_, found) = fails(&path);
    let all = errors(&found);
    assert_eq!(all.len(), 1, "{all:#?}");
    assert!(all[0].0.starts_with("cannot read "), "{all:#?}");
}
