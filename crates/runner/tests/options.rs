//! The definition's own start options in the runner package and the invocation:
//! `binScripts`, `preStart`, `extraArgsScript`, and `forwardPorts` on taps.

use std::path::Path;

use microvm_runner::package::{self, PackageFile};
use microvm_runner::{plan_for, Artifacts, HostFacts, Invocation, PreStart};

fn planned(text: &str) -> (microvm_spec::config::Config, Invocation) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vm1.toml");
    std::fs::write(&path, text).expect("write");
    let loaded = microvm_spec::load_file(&path).unwrap_or_else(|f| panic!("{}", f.render()));
    let config = loaded.config;
    let inv = plan_for(
        config.hypervisor,
        &config,
        &Artifacts::placeholders(),
        &HostFacts::reference(),
    )
    .expect("plans");
    (config, inv)
}

fn file<'a>(files: &'a [PackageFile], path: &str) -> &'a PackageFile {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no {path} among {:?}", paths(files)))
}

fn paths(files: &[PackageFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

#[test]
fn bin_scripts_are_runner_entries() {
    let (config, inv) = planned(
        "[[interfaces]]\ntype = \"tap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n\
         [binScripts]\nhello = \"echo hello\"\ntap-up = \"ip tuntap add name vm-a mode tap\\nip link set vm-a master br0\\n\"\n",
    );
    let files = package::files(&config, &inv);
    let hello = file(&files, "bin/hello");
    assert!(hello.executable);
    assert!(
        hello.contents.starts_with("#!/usr/bin/env bash\n"),
        "{}",
        hello.contents
    );
    assert!(
        hello.contents.ends_with("\necho hello\n"),
        "{}",
        hello.contents
    );
    // A script of a generated name is the definition's whole script.
    let up = &file(&files, "bin/tap-up").contents;
    assert!(
        up.ends_with("\nip tuntap add name vm-a mode tap\nip link set vm-a master br0\n"),
        "{up}"
    );
    assert_eq!(up.matches("ip tuntap add").count(), 1, "{up}");
    // Written out, they run.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("runner");
    package::write(&out, &files).expect("write");
    let ran = std::process::Command::new(out.join("bin/hello"))
        .output()
        .expect("run bin/hello");
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "hello\n");
}

#[test]
fn pre_start_and_extra_args_script_are_steps_of_the_start() {
    let (config, inv) = planned(
        "preStart = \"echo before > marker\"\nextraArgsScript = \"echo -name vm1-extra\"\n",
    );
    assert_eq!(
        inv.pre_start.first(),
        Some(&PreStart::Shell("echo before > marker".into()))
    );
    assert_eq!(
        inv.pre_start.last(),
        Some(&PreStart::ExtraArgs("echo -name vm1-extra".into()))
    );
    let files = package::files(&config, &inv);
    let run = &file(&files, "bin/microvm-run").contents;
    let pre = run
        .find("echo before > marker")
        .expect("preStart in microvm-run");
    let extra = run
        .find("runtime_args=$(echo -name vm1-extra)")
        .expect("extraArgsScript in microvm-run");
    let exec = run.find("\nexec ").expect("exec");
    assert!(pre < extra && extra < exec, "{run}");
    assert!(run.trim_end().ends_with(" $runtime_args"), "{run}");
    // `plan` shows both.
    let shown = microvm_runner::render::render(&inv);
    assert!(shown.contains("  echo before > marker\n"), "{shown}");
    assert!(
        shown.contains("runtime_args=$(echo -name vm1-extra)"),
        "{shown}"
    );
    assert!(Path::new("/bin/sh").exists());
}

/// `forwardPorts` on a tap: every hypervisor's runner carries the DNAT forwards the
/// supervisor installs (`share/microvm/forward-ports.json`); qemu's `user` networking
/// carries none (qemu's `hostfwd` does it).
#[test]
fn forward_ports_on_a_tap_are_in_every_hypervisors_runner() {
    let tap = "[[interfaces]]\ntype = \"tap\"\nid = \"vm-a\"\nmac = \"02:00:00:00:00:01\"\n\
               bridge = \"microvm0\"\n[[network]]\ninterface = \"vm-a\"\ndhcp = true\n\
               [[forwardPorts]]\nhost.port = 8080\nguest.port = 80\n";
    for h in [
        "qemu",
        "cloud-hypervisor",
        "firecracker",
        "crosvm",
        "kvmtool",
        "stratovirt",
        "alioth",
    ] {
        let (config, inv) = planned(&format!("hypervisor = \"{h}\"\n{tap}"));
        let files = package::files(&config, &inv);
        let json = &file(&files, "share/microvm/forward-ports.json").contents;
        let f: microvm_spec::forward::TapForwards = serde_json::from_str(json).expect("json");
        assert_eq!(
            (f.interface.as_str(), f.dhcp, f.address),
            ("vm-a", true, None),
            "{h}"
        );
        assert_eq!(
            (f.ports[0].host_port, f.ports[0].guest_port),
            (8080, 80),
            "{h}"
        );
    }
    let (config, inv) = planned(
        "[[interfaces]]\ntype = \"user\"\nid = \"qemu\"\nmac = \"02:00:00:00:00:05\"\n\
         [[forwardPorts]]\nhost.port = 8081\nguest.port = 80\n",
    );
    let files = package::files(&config, &inv);
    assert!(!paths(&files).contains(&"share/microvm/forward-ports.json"));
}
