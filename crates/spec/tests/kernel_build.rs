//! `kernel = { build = "microvm", source = …, fragments = [ … ] }`.

mod common;

use common::{loads, one_error, Dir};
use microvm_spec::config::{KernelBuild, KernelBuildSource, KernelRef};

#[test]
fn build_defaults_to_debian_linux_source_6_1() {
    let dir = Dir::new();
    let (loaded, _) = loads(&dir.write("vm1.toml", "kernel = { build = \"microvm\" }\n"));
    assert_eq!(
        loaded.config.kernel,
        Some(KernelRef::Build(KernelBuild {
            source: KernelBuildSource::Package("linux-source-6.1".into()),
            fragments: vec![],
        }))
    );
}

#[test]
fn source_paths_and_fragments_are_relative_to_the_file() {
    let dir = Dir::new();
    let text =
        "kernel = { build = \"microvm\", source = \"./linux\", fragments = [\"extra.config\"] }\n";
    let (loaded, _) = loads(&dir.write("vm1.toml", text));
    let base = std::path::absolute(dir.path()).expect("absolute");
    let Some(KernelRef::Build(build)) = loaded.config.kernel else {
        panic!("not a build: {:?}", loaded.config.kernel)
    };
    assert_eq!(build.source, KernelBuildSource::Path(base.join("./linux")));
    assert_eq!(build.fragments, vec![base.join("extra.config")]);
    let (loaded, _) = loads(&dir.write(
        "vm2.toml",
        "kernel = { build = \"microvm\", source = \"linux-source-6.12\" }\n",
    ));
    let Some(KernelRef::Build(build)) = loaded.config.kernel else {
        panic!("not a build")
    };
    assert_eq!(
        build.source,
        KernelBuildSource::Package("linux-source-6.12".into())
    );
}

#[test]
fn bad_build_tables() {
    one_error(
        "kernel = { build = \"defconfig\" }\n",
        "unknown kernel configuration \"defconfig\": the one microvm builds is \"microvm\"",
        1,
    );
    one_error(
        "kernel = { path = \"/k\", fragments = [\"a\"] }\n",
        "`source` and `fragments` go with `build`",
        1,
    );
    one_error(
        "kernel = { build = \"microvm\", package = \"linux-image-amd64\" }\n",
        "a kernel is one of `path`, `package` or `build`, not several",
        1,
    );
}
