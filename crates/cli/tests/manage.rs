//! Managed VMs through the real binary: `create`, `update`, `list`, `remove`, `gc` and
//! `host apply` against a temporary state directory (its store is `<state>/.store`).
//! Builds are real (kernel from `$MICROVM_TEST_KERNELS/cloud.deb`, default
//! `target/test-kernels`; a tiny root directory); nothing boots. Tests that need the kernel
//! skip with a printed reason when it is missing, and fail instead when `CI` is set.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The test kernel, or `None` (the test is skipped) when it is missing outside CI.
fn kernel(test: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MICROVM_TEST_KERNELS")
        .map_or_else(|| workspace().join("target/test-kernels"), PathBuf::from);
    let k = dir.join("cloud.deb");
    if k.exists() {
        return Some(k.canonicalize().expect("kernel path"));
    }
    let why = format!(
        "{test}: skipped: test kernel {} is missing (run scripts/fetch-test-kernels.sh)",
        k.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{why}");
    }
    eprintln!("{why}");
    None
}

struct Host {
    tmp: tempfile::TempDir,
    kernel: PathBuf,
}

impl Host {
    fn new(kernel: PathBuf) -> Host {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).expect("mkdir");
        fs::write(root.join("etc/motd"), "managed\n").expect("write");
        Host { tmp, kernel }
    }

    fn state(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    fn vm(&self, name: &str) -> PathBuf {
        self.state().join(name)
    }

    /// Writes a definition `<tmp>/<file>`; `host_name` sets hostName when given.
    fn definition(&self, file: &str, host_name: Option<&str>, mem: u32) -> PathBuf {
        let path = self.tmp.path().join(file);
        let mut text = String::new();
        if let Some(h) = host_name {
            text.push_str(&format!("hostName = \"{h}\"\n"));
        }
        text.push_str(&format!(
            "mem = {mem}\nkernel = \"{}\"\ncommand = [\"/bin/true\"]\n\n[[root]]\ndirectory = \"{}\"\n\n\
             [[volumes]]\nimage = \"data.img\"\nmountPoint = \"/data\"\nlabel = \"data\"\nsize = 16\n",
            self.kernel.display(),
            self.tmp.path().join("root").display()
        ));
        fs::write(&path, text).expect("write definition");
        path
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_microvm"));
        c.arg("--state-dir")
            .arg(self.state())
            .env_remove("MICROVM_STORE")
            .env_remove("MICROVM_STATE_DIR")
            .env("NO_COLOR", "1")
            .current_dir(self.tmp.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("run microvm")
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "microvm {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn list_json(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["list", "--json"])).expect("list json")
    }

    fn link(&self, vm: &str, name: &str) -> Option<PathBuf> {
        fs::read_link(self.vm(vm).join(name)).ok()
    }
}

fn complete_runner(dir: &Path) {
    assert!(
        dir.join("bin/microvm-run").is_file(),
        "{} is not a complete runner",
        dir.display()
    );
    for a in ["kernel", "initrd"] {
        let link = dir.join("share/microvm").join(a);
        assert!(link.exists(), "{} does not resolve", link.display());
    }
}

#[test]
fn create_list_change_update() {
    let Some(k) = kernel("create_list_change_update") else {
        return;
    };
    let h = Host::new(k);
    let def = h.definition("vm.toml", None, 256);
    let out = h.ok(&["create", "hello", "--from", def.to_str().expect("utf8")]);
    assert!(out.contains("Created MicroVM hello."), "{out}");
    assert!(out.contains("Start with: microvm start hello"), "{out}");
    let vm = h.vm("hello");
    assert_eq!(
        fs::read_to_string(vm.join("source"))
            .expect("source")
            .trim(),
        def.display().to_string()
    );
    let first = h.link("hello", "current").expect("current");
    complete_runner(&first);

    let list = h.ok(&["list"]);
    assert!(
        list.starts_with("hello: current(") && list.contains("not booted: microvm start hello"),
        "{list}"
    );
    assert_eq!(h.list_json()[0]["state"], "notBooted");

    // A changed definition makes the VM outdated, without building anything.
    h.definition("vm.toml", None, 512);
    let store_before = fs::read_dir(h.state().join(".store"))
        .expect("store")
        .count();
    let list = h.ok(&["list"]);
    assert!(
        list.contains("hello: outdated(") && list.contains("microvm update -R hello"),
        "{list}"
    );
    assert_eq!(
        fs::read_dir(h.state().join(".store"))
            .expect("store")
            .count(),
        store_before,
        "list must not build"
    );

    let out = h.ok(&["update", "hello"]);
    assert!(
        out.contains("No reboot of MicroVM hello required."),
        "{out}"
    );
    assert!(out.contains("arguments: +512M -256M"), "{out}");
    let second = h.link("hello", "current").expect("current");
    assert_ne!(first, second);
    assert_eq!(h.link("hello", "old"), Some(first));
    let json = h.list_json();
    assert_eq!(json[0]["state"], "notBooted");
    assert_eq!(json[0]["upToDate"], true);

    // Nothing changed: the same runner, the same message, `old` untouched.
    let out = h.ok(&["update", "hello"]);
    assert!(
        out.contains("No reboot of MicroVM hello required."),
        "{out}"
    );
    assert!(!out.contains("Changes of"), "{out}");
    assert_eq!(h.link("hello", "current"), Some(second));

    // A booted runner that is not current is stale.
    let old = h.link("hello", "old").expect("old");
    std::os::unix::fs::symlink(&old, h.vm("hello").join("booted")).expect("booted");
    let list = h.ok(&["list"]);
    assert!(
        list.contains("hello: stale(") && list.contains("microvm restart hello"),
        "{list}"
    );
    let out = h.ok(&["update", "hello"]);
    assert!(
        out.contains("Reboot MicroVM hello for the new profile: microvm restart hello"),
        "{out}"
    );
}

#[test]
fn create_refuses_an_existing_name_before_building() {
    let h = Host::new(PathBuf::from("/nonexistent/kernel"));
    fs::create_dir_all(h.vm("taken")).expect("mkdir");
    std::os::unix::fs::symlink("/nonexistent/runner", h.vm("taken").join("current")).expect("link");
    // The definition could not even build (no kernel): the name check comes first.
    let def = h.definition("vm.toml", None, 256);
    let out = h.run(&["create", "taken", "--from", def.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("taken already exists."), "{err}");
    assert!(!h.state().join(".store").exists(), "nothing was built");
}

#[test]
fn create_refuses_a_different_host_name() {
    let h = Host::new(PathBuf::from("/nonexistent/kernel"));
    let def = h.definition("vm.toml", Some("other"), 256);
    let out = h.run(&["create", "mine", "--from", def.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("hostName is \"other\""), "{err}");
    assert!(!h.vm("mine").exists());
}

#[test]
fn create_adopts_a_runner_that_update_refuses() {
    let h = Host::new(PathBuf::from("/nonexistent/kernel"));
    let runner = h.tmp.path().join("nix-runner");
    fs::create_dir_all(runner.join("bin")).expect("mkdir");
    let out = h.run(&[
        "create",
        "nixvm",
        "--runner",
        runner.to_str().expect("utf8"),
    ]);
    assert_eq!(out.status.code(), Some(1), "no bin/microvm-run");
    fs::write(runner.join("bin/microvm-run"), "#!/bin/sh\n").expect("write");
    h.ok(&[
        "create",
        "nixvm",
        "--runner",
        runner.to_str().expect("utf8"),
    ]);
    assert_eq!(h.link("nixvm", "current"), Some(runner.clone()));
    let out = h.run(&["update", "nixvm"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("adopted runner"), "{err}");
    let list = h.ok(&["list"]);
    assert!(list.contains("nixvm: current("), "{list}");
}

#[test]
fn concurrent_updates_leave_a_consistent_state() {
    let Some(k) = kernel("concurrent_updates_leave_a_consistent_state") else {
        return;
    };
    let h = Host::new(k);
    let def = h.definition("vm.toml", None, 256);
    h.ok(&["create", "vm", "--from", def.to_str().expect("utf8")]);
    let first = h.link("vm", "current").expect("current");
    h.definition("vm.toml", None, 384);
    let children: Vec<_> = (0..3)
        .map(|_| {
            h.cmd()
                .args(["update", "vm"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("wait");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let current = h.link("vm", "current").expect("current");
    let old = h.link("vm", "old").expect("old");
    assert_ne!(current, first);
    assert_eq!(old, first, "the second update changed nothing");
    complete_runner(&current);
    complete_runner(&old);
    let leftovers: Vec<_> = fs::read_dir(h.vm("vm"))
        .expect("read")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn host_apply_adds_changes_and_removes() {
    let Some(k) = kernel("host_apply_adds_changes_and_removes") else {
        return;
    };
    let h = Host::new(k);
    h.definition("a.toml", None, 256);
    h.definition("b.toml", None, 256);
    let host = h.tmp.path().join("host.toml");
    let both =
        "[vms.a]\ndefinition = \"a.toml\"\n\n[vms.b]\ndefinition = \"b.toml\"\nautostart = false\n";
    fs::write(&host, both).expect("write");
    let hostp = host.to_str().expect("utf8");

    let out = h.ok(&["host", "apply", hostp, "--dry-run"]);
    assert!(
        out.contains("create a") && out.contains("create b"),
        "{out}"
    );
    assert!(!h.vm("a").exists(), "dry run changed nothing");

    let out = h.ok(&["host", "apply", hostp]);
    assert!(
        out.contains("created a") && out.contains("created b"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(h.state().join("autostart")).expect("autostart"),
        "a\n"
    );
    assert_eq!(
        fs::read_to_string(h.vm("a").join("managed-by"))
            .expect("managed-by")
            .trim(),
        host.canonicalize().expect("canon").display().to_string()
    );
    // An imperatively created VM is never touched by apply.
    let c = h.definition("c.toml", None, 256);
    h.ok(&["create", "c", "--from", c.to_str().expect("utf8")]);
    // Volume data of b, written by its guest.
    fs::write(h.vm("b").join("data.img"), "precious").expect("write");

    let out = h.ok(&["host", "apply", hostp]);
    assert!(
        out.contains("unchanged a") && out.contains("unchanged b"),
        "{out}"
    );

    h.definition("a.toml", None, 512);
    let out = h.ok(&["host", "apply", hostp, "--dry-run"]);
    assert!(
        out.contains("update a") && out.contains("unchanged b"),
        "{out}"
    );
    let out = h.ok(&["host", "apply", hostp]);
    assert!(out.contains("updated a: arguments"), "{out}");
    assert!(h.link("a", "old").is_some());

    // b is dropped from the host file: removed, its volume kept; c stays.
    fs::write(&host, "[vms.a]\ndefinition = \"a.toml\"\n").expect("write");
    let out = h.ok(&["host", "apply", hostp, "--json"]);
    let actions: serde_json::Value = serde_json::from_str(&out).expect("json");
    let b = actions
        .as_array()
        .expect("array")
        .iter()
        .find(|a| a["name"] == "b")
        .expect("b");
    assert_eq!(b["action"], "removed");
    assert_eq!(
        fs::read_to_string(h.vm("b").join("data.img")).expect("kept volume"),
        "precious"
    );
    assert!(!h.vm("b").join("current").exists());
    let names: Vec<String> = h
        .list_json()
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["name"].as_str().expect("name").to_owned())
        .collect();
    assert_eq!(names, ["a", "c"]);

    // A listed name that exists imperatively from another definition is a conflict.
    fs::write(
        &host,
        "[vms.a]\ndefinition = \"a.toml\"\n[vms.c]\ndefinition = \"a.toml\"\n",
    )
    .expect("write");
    let out = h.run(&["host", "apply", hostp]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("conflict c: created imperatively"), "{text}");
    assert!(h.vm("c").join("current").exists());
}

#[test]
fn gc_keeps_current_booted_and_old() {
    let Some(k) = kernel("gc_keeps_current_booted_and_old") else {
        return;
    };
    let h = Host::new(k);
    let def = h.definition("vm.toml", None, 256);
    h.ok(&["create", "vm", "--from", def.to_str().expect("utf8")]);
    let r1 = h.link("vm", "current").expect("current");
    for mem in [320, 384] {
        h.definition("vm.toml", None, mem);
        h.ok(&["update", "vm"]);
    }
    let (r3, r2) = (
        h.link("vm", "current").expect("current"),
        h.link("vm", "old").expect("old"),
    );
    // A second VM: its runner and artifacts are roots too.
    let def2 = h.definition("w.toml", None, 256);
    h.ok(&["create", "w", "--from", def2.to_str().expect("utf8")]);
    let junk = h.state().join(".store/0123456789abcdef-junk");
    fs::create_dir_all(&junk).expect("mkdir");
    let stale_tmp = h.state().join(".tmp-x-1");
    fs::create_dir_all(&stale_tmp).expect("mkdir");
    let touched = Command::new("touch")
        .args(["-d", "2 hours ago"])
        .arg(&stale_tmp)
        .status()
        .expect("touch");
    assert!(touched.success());

    let dry = h.ok(&["gc", "--dry-run"]);
    assert!(
        dry.contains("would remove") && dry.contains("junk"),
        "{dry}"
    );
    assert!(junk.exists() && r1.exists());

    // r1 is still booted (the VM runs the first generation): it must survive.
    std::os::unix::fs::symlink(&r1, h.vm("vm").join("booted")).expect("booted");
    let out = h.ok(&["gc", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let removed: Vec<String> = report["removed"]
        .as_array()
        .expect("removed")
        .iter()
        .map(|p| p.as_str().expect("str").to_owned())
        .collect();
    assert!(removed.iter().any(|p| p.ends_with("-junk")), "{removed:?}");
    assert!(
        removed.iter().any(|p| p.ends_with(".tmp-x-1")),
        "{removed:?}"
    );
    assert!(!junk.exists() && !stale_tmp.exists());
    for r in [&r1, &r2, &r3] {
        complete_runner(r);
    }
    complete_runner(&h.link("w", "current").expect("w current"));

    // Once not booted, r1 is collected; the artifacts r2 and r3 share with it stay.
    fs::remove_file(h.vm("vm").join("booted")).expect("rm");
    let out = h.ok(&["gc"]);
    assert!(out.contains(&r1.display().to_string()), "{out}");
    assert!(!r1.exists());
    for r in [&r2, &r3] {
        complete_runner(r);
    }
    // Nothing left to collect.
    let out = h.ok(&["gc", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(report["removed"].as_array().map(Vec::len), Some(0), "{out}");
    // The root disk's manifest and defaults stay with the disk `current` uses.
    let store = h.state().join(".store");
    let sidecars = fs::read_dir(&store)
        .expect("store")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".manifest") || n.ends_with(".defaults.json"))
        .count();
    assert!(sidecars >= 2, "manifest and defaults kept");
    let list = h.ok(&[
        "build",
        def.to_str().expect("utf8"),
        "--store",
        store.to_str().expect("utf8"),
        "--list-root",
    ]);
    assert!(list.contains("/etc/motd"), "{list}");
}

/// A root disk whose `.manifest`/`.defaults.json` are gone (collected by an older gc) is
/// built again, not used without them.
#[test]
fn a_root_disk_without_its_sidecars_is_rebuilt() {
    let Some(k) = kernel("a_root_disk_without_its_sidecars_is_rebuilt") else {
        return;
    };
    let h = Host::new(k);
    let def = h.definition("vm.toml", Some("vm"), 256);
    let store = h.tmp.path().join("store");
    let build = || {
        h.ok(&[
            "build",
            def.to_str().expect("utf8"),
            "--store",
            store.to_str().expect("utf8"),
            "--list-root",
        ])
    };
    let first = build();
    for e in fs::read_dir(&store).expect("store").flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.ends_with(".manifest") || n.ends_with(".defaults.json") {
            fs::remove_file(e.path()).expect("rm");
        }
    }
    assert_eq!(build(), first, "the same listing after the rebuild");
    let sidecars = fs::read_dir(&store)
        .expect("store")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".defaults.json"))
        .count();
    assert_eq!(sidecars, 1, "written again");
}

/// gc waits for what holds the store's lock shared (builds, `run FILE`), as `flock -s`
/// here, instead of collecting under them.
#[test]
fn gc_waits_for_builders_on_the_store_lock() {
    let Some(k) = kernel("gc_waits_for_builders_on_the_store_lock") else {
        return;
    };
    let h = Host::new(k);
    let def = h.definition("vm.toml", None, 256);
    h.ok(&["create", "vm", "--from", def.to_str().expect("utf8")]);
    let lock = h.state().join(".store/.lock");
    assert!(lock.is_file(), "the store has its lock file");
    let mut holder = Command::new("flock")
        .arg("--shared")
        .arg(&lock)
        .args(["sleep", "3"])
        .spawn()
        .expect("flock (util-linux)");
    // Until the holder has it, an exclusive try succeeds; then it fails.
    let held = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        !Command::new("flock")
            .args(["--exclusive", "--nonblock"])
            .arg(&lock)
            .arg("true")
            .status()
            .expect("flock")
            .success()
    });
    assert!(held, "flock holds the store lock");
    let out = h.run(&["gc"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("waiting for builds"), "{err}");
    assert!(
        holder.try_wait().expect("wait").is_some(),
        "gc ran only after the holder ended"
    );
    let _ = holder.wait();
}

#[test]
fn remove_keeps_volumes_when_asked() {
    let Some(k) = kernel("remove_keeps_volumes_when_asked") else {
        return;
    };
    let h = Host::new(k);
    let def = h.definition("vm.toml", None, 256);
    let defp = def.to_str().expect("utf8");
    h.ok(&["create", "vm", "--from", defp]);
    fs::write(h.vm("vm").join("data.img"), "precious").expect("write");
    fs::write(h.vm("vm").join("console.log"), "noise").expect("write");
    let out = h.ok(&["remove", "vm", "--keep-volumes"]);
    assert!(
        out.contains("Removed MicroVM vm.") && out.contains("Kept volumes"),
        "{out}"
    );
    let left: Vec<String> = fs::read_dir(h.vm("vm"))
        .expect("kept dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["data.img"]);
    assert_eq!(h.list_json().as_array().map(Vec::len), Some(0));
    // Creating it again reuses the kept volume.
    h.ok(&["create", "vm", "--from", defp]);
    assert_eq!(
        fs::read_to_string(h.vm("vm").join("data.img")).expect("volume"),
        "precious"
    );
    h.ok(&["remove", "vm"]);
    assert!(!h.vm("vm").exists());
    let out = h.run(&["remove", "vm"]);
    assert_eq!(out.status.code(), Some(1));
}

/// A definition unchanged but the hypervisor upgraded: `list` says outdated (the detected
/// version is part of the fingerprint). The "qemu" is a script on `PATH` that answers
/// `--version` like qemu; nothing boots.
#[test]
fn an_upgraded_hypervisor_makes_the_vm_outdated() {
    let Some(k) = kernel("an_upgraded_hypervisor_makes_the_vm_outdated") else {
        return;
    };
    let h = Host::new(k);
    let bin = h.tmp.path().join("bin");
    fs::create_dir_all(&bin).expect("mkdir");
    let qemu = bin.join("qemu-system-x86_64");
    let fake = |version: &str| {
        let script = format!(
            "#!/bin/sh\necho 'QEMU emulator version {version} (fake)'\necho 'Copyright (c) 2003-2025'\n"
        );
        fs::write(&qemu, script).expect("write fake qemu");
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&qemu, fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |args: &[&str]| {
        let out = h
            .cmd()
            .args(args)
            .env("PATH", &path)
            .env("XDG_CACHE_HOME", h.tmp.path().join("cache"))
            .output()
            .expect("run microvm");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "microvm {args:?} failed ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    fake("9.2.0");
    let def = h.definition("vm.toml", None, 256);
    run(&["create", "hello", "--from", def.to_str().expect("utf8")]);
    let list = run(&["list"]);
    assert!(list.starts_with("hello: current("), "{list}");

    fake("10.0.2");
    let list = run(&["list"]);
    assert!(list.contains("hello: outdated("), "{list}");
    // Building again for the new version settles it.
    run(&["update", "hello"]);
    let list = run(&["list"]);
    assert!(list.starts_with("hello: current("), "{list}");
}
