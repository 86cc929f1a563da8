//! `imports`: merge order and rules, conflicts with both locations, cycles, missing files
//! and paths relative to the importing file.

mod common;

use common::{expect, fails, loads, Dir};
use microvm_spec::config::KernelRef;
use microvm_spec::diag::Severity;

#[test]
fn lists_concatenate_imports_first_and_tables_merge() {
    let dir = Dir::new();
    dir.write(
        "base.toml",
        "kernelParams = [\"a\"]\nvcpu = 2\n[qemu]\nmachine = \"q35\"\nextraArgs = [\"-x\"]\n[[volumes]]\nimage = \"base.img\"\nsize = 1\n",
    );
    dir.write(
        "more.toml",
        "kernelParams = [\"b\"]\n[[volumes]]\nimage = \"more.img\"\nsize = 1\n",
    );
    let path = dir.write(
        "vm1.toml",
        "imports = [\"base.toml\", \"more.toml\"]\nkernelParams = [\"c\"]\nvcpu = 2\n[qemu]\nserialConsole = false\nextraArgs = [\"-y\"]\n[[volumes]]\nimage = \"own.img\"\nsize = 1\n",
    );
    let (loaded, warnings) = loads(&path);
    assert!(warnings.is_empty(), "{warnings:#?}");
    let c = &loaded.config;
    assert_eq!(c.kernel_params, ["a", "b", "c"]);
    let images: Vec<&str> = c.volumes.iter().map(|v| v.image.as_str()).collect();
    assert_eq!(images, ["base.img", "more.img", "own.img"]);
    assert_eq!(c.qemu.machine, "q35");
    assert!(!c.qemu.serial_console);
    assert_eq!(c.qemu.extra_args, ["-x", "-y"]);
    // Equal scalars in two files are fine.
    assert_eq!(c.vcpu, 2);
    // Three files were read.
    assert_eq!(loaded.sources.files().count(), 3);
}

#[test]
fn scalar_conflict_names_both_places() {
    let dir = Dir::new();
    let base = dir.write("base.toml", "vcpu = 1\nmem = 256\n");
    let path = dir.write(
        "vm1.toml",
        "imports = [\"base.toml\"]\n\nmem = 512\n[qemu]\nmachine = \"q35\"\n",
    );
    let (failure, found) = fails(&path);
    assert_eq!(found.len(), 1, "{found:#?}");
    let d = expect(
        &found,
        Severity::Error,
        "conflicting definitions of `mem`",
        &path,
        3,
    );
    assert_eq!(
        d.related,
        [(base.clone(), 2, "first defined here".to_owned())]
    );
    let rendered = failure.render();
    assert!(rendered.contains("vm1.toml:3:7"), "{rendered}");
    assert!(rendered.contains("first defined here"), "{rendered}");
    assert!(
        rendered.contains("lists concatenate and tables merge"),
        "{rendered}"
    );
}

#[test]
fn conflicts_between_two_imports_and_in_nested_tables() {
    let dir = Dir::new();
    let a = dir.write("a.toml", "[qemu]\nmachine = \"q35\"\n");
    let b = dir.write("b.toml", "# b\n[qemu]\nmachine = \"microvm\"\n");
    let path = dir.write("vm1.toml", "imports = [\"a.toml\", \"b.toml\"]\n");
    let (_, found) = fails(&path);
    let d = expect(
        &found,
        Severity::Error,
        "conflicting definitions of `qemu.machine`",
        &b,
        3,
    );
    assert_eq!(d.related, [(a, 2, "first defined here".to_owned())]);
}

#[test]
fn a_list_against_a_scalar_is_a_conflict() {
    let dir = Dir::new();
    dir.write("base.toml", "kernelParams = \"quiet\"\n");
    let path = dir.write(
        "vm1.toml",
        "imports = [\"base.toml\"]\nkernelParams = [\"x\"]\n",
    );
    let (_, found) = fails(&path);
    expect(
        &found,
        Severity::Error,
        "conflicting definitions of `kernelParams`",
        &path,
        2,
    );
}

#[test]
fn json_imports_toml_and_back() {
    let dir = Dir::new();
    dir.write(
        "net.json",
        "{\"interfaces\": [{\"type\": \"tap\", \"id\": \"vm-a\", \"mac\": \"02:00:00:00:00:01\"}]}",
    );
    let path = dir.write("vm1.toml", "imports = [\"net.json\"]\nvcpu = 2\n");
    let (loaded, _) = loads(&path);
    assert_eq!(loaded.config.interfaces[0].id.as_str(), "vm-a");
}

#[test]
fn import_cycle() {
    let dir = Dir::new();
    let a = dir.write("a.toml", "imports = [\"b.toml\"]\nvcpu = 1\n");
    let b = dir.write("b.toml", "vcpu = 1\nimports = [\"a.toml\"]\n");
    let (_, found) = fails(&a);
    assert_eq!(found.len(), 1, "{found:#?}");
    let d = &found[0];
    assert!(d.message.starts_with("import cycle: "), "{d:?}");
    let chain: Vec<&str> = d.message["import cycle: ".len()..].split(" -> ").collect();
    assert_eq!(chain.len(), 3, "{d:?}");
    assert!(
        chain[0].ends_with("a.toml")
            && chain[1].ends_with("b.toml")
            && chain[2].ends_with("a.toml"),
        "{d:?}"
    );
    // Pointed at the import entry that closes the cycle.
    assert_eq!(d.file.as_deref(), Some(&*b));
    assert_eq!(d.line, Some(2));
    assert_eq!(d.key.as_deref(), Some("imports[0]"));
}

#[test]
fn a_file_importing_itself() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "imports = [\"./vm1.toml\"]\n");
    let (_, found) = fails(&path);
    assert!(found[0].message.starts_with("import cycle: "), "{found:#?}");
    assert_eq!(found[0].line, Some(1));
}

#[test]
fn a_diamond_is_not_a_cycle() {
    let dir = Dir::new();
    dir.write("common.toml", "kernelParams = [\"c\"]\n");
    dir.write("a.toml", "imports = [\"common.toml\"]\n");
    dir.write("b.toml", "imports = [\"common.toml\"]\n");
    let path = dir.write("vm1.toml", "imports = [\"a.toml\", \"b.toml\"]\n");
    let (loaded, _) = loads(&path);
    assert_eq!(loaded.config.kernel_params, ["c", "c"]);
}

#[test]
fn missing_import_is_reported_at_the_entry() {
    let dir = Dir::new();
    let path = dir.write(
        "vm1.toml",
        "vcpu = 1\nimports = [\n  \"base.toml\",\n  \"nope.toml\",\n]\n",
    );
    dir.write("base.toml", "mem = 256\n");
    let (_, found) = fails(&path);
    assert_eq!(found.len(), 1, "{found:#?}");
    let d = &found[0];
    assert!(
        d.message.starts_with("cannot read ") && d.message.contains("nope.toml"),
        "{d:?}"
    );
    assert_eq!(d.file.as_deref(), Some(&*path));
    assert_eq!(d.line, Some(4));
    assert_eq!(d.key.as_deref(), Some("imports[1]"));
}

#[test]
fn bad_imports_values() {
    let dir = Dir::new();
    let path = dir.write("vm1.toml", "imports = \"base.toml\"\n");
    let (_, found) = fails(&path);
    expect(
        &found,
        Severity::Error,
        "expected a list of file paths, found a string",
        &path,
        1,
    );
    let path = dir.write("vm2.toml", "imports = [1]\n");
    let (_, found) = fails(&path);
    expect(
        &found,
        Severity::Error,
        "expected a file path, found an integer",
        &path,
        1,
    );
}

#[test]
fn errors_inside_an_import_point_into_that_file() {
    let dir = Dir::new();
    let base = dir.write(
        "lib/base.toml",
        "# base\n[[volumes]]\nimage = \"a.img\"\nmountPoint = \"var\"\nsize = 1\n",
    );
    let syntax = dir.write("lib/broken.toml", "vcpu = = 1\n");
    let path = dir.write("vm1.toml", "imports = [\"lib/base.toml\"]\n");
    let (_, found) = fails(&path);
    expect(
        &found,
        Severity::Error,
        "\"var\" must be an absolute path in the guest (starting with /, without ..)",
        &base,
        4,
    );
    let path = dir.write("vm2.toml", "imports = [\"lib/broken.toml\"]\n");
    let (_, found) = fails(&path);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(found[0].message.starts_with("invalid TOML"), "{found:#?}");
    assert_eq!(found[0].file.as_deref(), Some(&*syntax));
    assert_eq!(found[0].line, Some(1));
}

#[test]
fn import_paths_and_file_inputs_are_relative_to_the_importing_file() {
    let dir = Dir::new();
    dir.write(
        "sub/base.toml",
        "imports = [\"inner/leaf.toml\"]\nkernel = \"bzImage\"\n",
    );
    dir.write(
        "sub/inner/leaf.toml",
        "initrdPath = \"initrd\"\n[credentialFiles]\nKEY = \"../secret\"\n",
    );
    let path = dir.write(
        "vm1.toml",
        "imports = [\"sub/base.toml\"]\nstoreDisk = \"store.img\"\n",
    );
    let (loaded, _) = loads(&path);
    let c = &loaded.config;
    assert_eq!(
        c.kernel,
        Some(KernelRef::Path(dir.path().join("sub/bzImage")))
    );
    assert_eq!(c.initrd_path, Some(dir.path().join("sub/inner/initrd")));
    assert_eq!(
        c.credential_files.get("KEY"),
        Some(&dir.path().join("sub/inner/../secret"))
    );
    assert_eq!(c.store_disk, Some(dir.path().join("store.img")));
}

#[test]
fn the_name_comes_from_the_top_file() {
    let dir = Dir::new();
    dir.write("base.toml", "vcpu = 1\n");
    let path = dir.write("web.toml", "imports = [\"base.toml\"]\n");
    assert_eq!(loads(&path).0.config.name.as_str(), "web");
}
