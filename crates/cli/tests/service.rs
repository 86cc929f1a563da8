//! Managed VMs as services, with real processes: `microvm start/status/console/stop`,
//! the detached supervisor, taps in a network namespace the test creates, virtiofsd
//! supervision, the hypervisor as the unprivileged `microvm` user, and `host install`.
//!
//! Each VM test runs every `microvm` command through `ip netns exec NS`, so the taps live
//! in that namespace; only addresses inside it are used and it is deleted afterwards.
//! The guest is the busybox root in hand-over mode: busybox init with an inittab that
//! keeps a shell on the console and writes a marker to its volume when it shuts down.
//!
//! Prerequisites (root, qemu, the cloud test kernel, busybox-static, iproute2 with netns
//! support, debugfs, virtiofsd for the share test): a missing one skips the test with a
//! printed reason, or fails it when `CI` is set. At most two VMs boot at once.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

const MAX_VMS: usize = 2;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_microvm"))
}

fn work_dir() -> PathBuf {
    let d = bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("service-tests"))
        .unwrap_or_else(|| workspace().join("target/service-tests"));
    fs::create_dir_all(&d).expect("service-tests dir");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

fn kernel() -> PathBuf {
    let dir = match std::env::var_os("MICROVM_TEST_KERNELS") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target/test-kernels"),
    };
    dir.join("cloud.deb")
}

fn path_var() -> std::ffi::OsString {
    let mut dirs = vec![workspace().join("target/tools/bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    std::env::join_paths(dirs).expect("PATH")
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_var())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `Some(())` when the test can run; otherwise prints why (or panics under CI).
fn require(test: &str, virtiofsd: bool) -> Option<()> {
    let mut missing = Vec::new();
    if !rustix_is_root() {
        missing.push("not root (taps, netns and the user switch need root)".to_string());
    }
    for (p, pkg) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("ip", "iproute2"),
        ("debugfs", "e2fsprogs"),
        ("useradd", "passwd"),
    ] {
        if find(p).is_none() {
            missing.push(format!("{p} is not installed ({pkg})"));
        }
    }
    if virtiofsd && find("virtiofsd").is_none() {
        missing.push("virtiofsd is missing (scripts/install-virtiofsd.sh)".into());
    }
    if !kernel().is_file() {
        missing.push(format!(
            "{} is missing (scripts/fetch-test-kernels.sh)",
            kernel().display()
        ));
    }
    if !Path::new("/bin/busybox").is_file() {
        missing.push("/bin/busybox is missing (busybox-static)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun is missing".into());
    }
    if missing.is_empty() {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let probe = format!("mvt-probe-{}-{n}", std::process::id());
        let ok = sh(&["ip", "netns", "add", &probe]).status.success();
        let _ = sh(&["ip", "netns", "del", &probe]);
        if !ok {
            missing.push("network namespaces do not work here (`ip netns add` failed)".into());
        }
    }
    if missing.is_empty() {
        return Some(());
    }
    let list = missing.join("; ");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: prerequisites missing under CI: {list}");
    }
    eprintln!("SKIPPED {test}: {list}");
    None
}

fn rustix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn sh(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
}

/// The shared busybox root (built once).
fn root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dest = work_dir().join("root-v1");
        if dest.join("bin/busybox").is_file() {
            return dest;
        }
        let tmp = work_dir().join(format!("root.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        for d in [
            "bin", "sbin", "etc/init.d", "proc", "sys", "dev", "run", "tmp", "root", "data",
            "share",
        ] {
            fs::create_dir_all(tmp.join(d)).expect("mkdir");
        }
        fs::copy("/bin/busybox", tmp.join("bin/busybox")).expect("busybox");
        let list = Command::new(tmp.join("bin/busybox"))
            .arg("--list")
            .output()
            .expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
            let link = tmp.join("bin").join(applet);
            if applet != "busybox" && !link.exists() {
                std::os::unix::fs::symlink("busybox", link).expect("applet");
            }
        }
        std::os::unix::fs::symlink("../bin/busybox", tmp.join("sbin/init")).expect("init");
        fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        fs::write(
            tmp.join("etc/inittab"),
            "::sysinit:/etc/init.d/rcS\n::respawn:-/bin/sh\n::shutdown:/etc/init.d/shutdown\n",
        )
        .expect("inittab");
        let exe = |p: PathBuf, text: &str| {
            fs::write(&p, text).expect("script");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        exe(
            tmp.join("etc/init.d/rcS"),
            "#!/bin/sh\necho booted >> /data/boots\nsync\necho 'svc: guest up'\n",
        );
        exe(
            tmp.join("etc/init.d/shutdown"),
            "#!/bin/sh\necho clean > /data/shutdown\nsync\numount /data 2>/dev/null\necho 'svc: clean shutdown'\n",
        );
        if fs::rename(&tmp, &dest).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        dest
    })
}

struct Slots {
    used: Mutex<usize>,
    freed: Condvar,
}

static SLOTS: Slots = Slots {
    used: Mutex::new(0),
    freed: Condvar::new(),
};

struct Slot;

impl Slot {
    fn acquire() -> Slot {
        let mut used = SLOTS.used.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= MAX_VMS {
            used = SLOTS.freed.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        *SLOTS.used.lock().unwrap_or_else(|e| e.into_inner()) -= 1;
        SLOTS.freed.notify_one();
    }
}

/// Creates the `microvm` user and group (what `host install` does) once.
fn host_install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let units = tempfile::tempdir().expect("tempdir");
        let state = work_dir().join("state-install");
        let out = Command::new(bin())
            .args(["--state-dir"])
            .arg(&state)
            .args(["host", "install", "--unit-dir"])
            .arg(units.path())
            .env("PATH", path_var())
            .output()
            .expect("host install");
        assert!(
            out.status.success(),
            "host install: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The hypervisor runs as `microvm` and opens /dev/net/tun for its taps; the
        // usual mode is 0666 (udev), this machine has 0600.
        let tun = Path::new("/dev/net/tun");
        let mode = fs::metadata(tun).expect("tun").permissions().mode() & 0o777;
        if mode & 0o006 != 0o006 {
            eprintln!("making /dev/net/tun 0666 (was {mode:o}), the usual mode");
            fs::set_permissions(tun, fs::Permissions::from_mode(0o666)).expect("chmod tun");
        }
    });
}

/// A managed VM in its own state directory and network namespace.
struct Vm {
    name: String,
    netns: String,
    dir: tempfile::TempDir,
    _slot: Slot,
}

impl Vm {
    /// Writes the definition, builds it, and installs it as `<state>/<name>/current` (by
    /// hand: the state layout of `microvm create`).
    fn new(test: &str, name: &str, tables: &str) -> Vm {
        Vm::with_top(test, name, "", tables)
    }

    /// [`Vm::new`] with top-level keys `top` as well.
    fn with_top(_test: &str, name: &str, top: &str, tables: &str) -> Vm {
        host_install();
        let slot = Slot::acquire();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(work_dir())
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let netns = format!("mvt-{}-{name}", std::process::id());
        assert!(sh(&["ip", "netns", "add", &netns]).status.success());
        let _ = sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        let def = dir.path().join("vm.toml");
        fs::write(
            &def,
            format!(
                "hostName = \"{name}\"\nvcpu = 1\nmem = 256\nkernel = {kernel:?}\n{top}\n\n[[root]]\ndirectory = {root:?}\n\n[[volumes]]\nimage = \"data.img\"\nmountPoint = \"/data\"\nlabel = \"data\"\nsize = 32\n{tables}\n",
                kernel = kernel(),
                root = root(),
            ),
        )
        .expect("vm.toml");
        let store = work_dir().join("store");
        let out = Command::new(bin())
            .arg("build")
            .arg(&def)
            .arg("--store")
            .arg(&store)
            .env("PATH", path_var())
            .output()
            .expect("build");
        assert!(
            out.status.success(),
            "build: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let runner = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let vmdir = dir.path().join("state").join(name);
        fs::create_dir_all(&vmdir).expect("vm dir");
        std::os::unix::fs::symlink(&runner, vmdir.join("current")).expect("current");
        Vm {
            name: name.into(),
            netns,
            dir,
            _slot: slot,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn vmdir(&self) -> PathBuf {
        self.state().join(&self.name)
    }

    /// `ip netns exec NS microvm --state-dir S ARGS…`.
    fn microvm(&self, args: &[&str]) -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns])
            .arg(bin())
            .arg("--state-dir")
            .arg(self.state())
            .args(args)
            .env("PATH", path_var())
            .env_remove("MICROVM_SERVICE_MANAGER")
            .stdin(Stdio::null())
            .output()
            .expect("microvm");
        eprintln!(
            "$ microvm {} → {}\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn status_json(&self) -> serde_json::Value {
        let out = self.microvm(&["status", &self.name, "--json"]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    fn run_record(&self) -> serde_json::Value {
        fs::read(self.vmdir().join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    fn links(&self) -> String {
        String::from_utf8_lossy(&sh(&["ip", "-n", &self.netns, "-o", "link"]).stdout).into()
    }

    fn logs(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.vmdir().join(f)).unwrap_or_default();
        format!(
            "--- supervisor.log\n{}\n--- console.log (tail)\n{}",
            read("supervisor.log"),
            tail(&read("console.log"), 30)
        )
    }

    /// `cat PATH` from the data volume, read on the host with debugfs.
    fn volume_file(&self, path: &str) -> Option<String> {
        let img = self.vmdir().join("data.img");
        let out = Command::new(find("debugfs")?)
            .args(["-R", &format!("cat {path}")])
            .arg(&img)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (!text.is_empty()).then_some(text)
    }

    fn start(&self) {
        let t = Instant::now();
        let out = self.microvm(&["start", &self.name]);
        assert!(out.status.success(), "start failed\n{}", self.logs());
        eprintln!(
            "{}: started in {:.1} s",
            self.name,
            t.elapsed().as_secs_f64()
        );
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.microvm(&["stop", &self.name, "--timeout", "5"]);
        let _ = sh(&["ip", "netns", "del", &self.netns]);
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("timed out waiting for {what}");
    false
}

fn alive(pid: u64) -> bool {
    // A zombie still has /proc/<pid> but an empty cmdline.
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn uid_of(pid: u64) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn microvm_uid() -> u32 {
    let out = sh(&["id", "-u", "microvm"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid of microvm")
}

/// No process whose cmdline mentions `needle` is left.
fn no_process_mentions(needle: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return true;
    };
    !entries.flatten().any(|e| {
        e.file_name().to_string_lossy().parse::<u32>().is_ok()
            && fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

fn tap_tables(tap: &str, mac: &str, addr: &str) -> String {
    format!(
        "\n[[interfaces]]\ntype = \"tap\"\nid = \"{tap}\"\nmac = \"{mac}\"\n\n[[network]]\ninterface = \"{tap}\"\naddresses = [\"{addr}/24\"]\n"
    )
}

/// start → status/run.json say running (hypervisor as `microvm`) → the guest answers
/// ping on its tap inside the namespace → the console takes a command → stop is graceful
/// (the guest's shutdown marker is on its volume) and leaves no tap, no process behind.
#[test]
fn service_start_ping_console_and_graceful_stop() {
    let test = "service_start_ping_console_and_graceful_stop";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::new(
        test,
        "svc-a",
        &tap_tables("vm-svca", "02:00:00:00:5a:01", "10.77.1.2"),
    );
    vm.start();

    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "running", "{st}");
    let rec = vm.run_record();
    let hv = rec["hypervisorPid"].as_u64().expect("hypervisor pid");
    assert_eq!(
        uid_of(hv),
        Some(microvm_uid()),
        "the hypervisor runs as microvm"
    );
    assert_eq!(rec["user"], "microvm");
    assert!(
        vm.links().contains("vm-svca"),
        "tap in the netns: {}",
        vm.links()
    );
    let name = fs::read_to_string(format!("/proc/{hv}/cmdline")).unwrap_or_default();
    assert!(name.starts_with("microvm@svc-a"), "argv0: {name:?}");

    // Ping the guest from the namespace.
    assert!(sh(&[
        "ip",
        "-n",
        &vm.netns,
        "addr",
        "add",
        "10.77.1.1/24",
        "dev",
        "vm-svca"
    ])
    .status
    .success());
    let ping = sh(&[
        "ip",
        "netns",
        "exec",
        &vm.netns,
        "busybox",
        "ping",
        "-c",
        "3",
        "-W",
        "3",
        "10.77.1.2",
    ]);
    assert!(
        ping.status.success(),
        "ping: {}{}\n{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr),
        vm.logs()
    );

    // The console: a command typed by a client runs in the guest's shell.
    let mut client = Command::new("ip")
        .args(["netns", "exec", &vm.netns])
        .arg(bin())
        .arg("--state-dir")
        .arg(vm.state())
        .args(["console", "svc-a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("console");
    {
        use std::io::Write;
        let mut stdin = client.stdin.take().expect("stdin");
        std::thread::sleep(Duration::from_millis(500));
        stdin.write_all(b"\necho console-$((6*7))\n").expect("type");
        std::thread::sleep(Duration::from_secs(3));
        stdin.write_all(b"\x1d").expect("detach");
    }
    let out = client.wait_with_output().expect("console output");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("console-42"), "console output: {seen:?}");
    assert!(
        fs::read_to_string(vm.vmdir().join("console.log"))
            .unwrap_or_default()
            .contains("console-42"),
        "console.log has it too"
    );

    let t = Instant::now();
    let out = vm.microvm(&["stop", "svc-a", "--timeout", "30"]);
    assert!(out.status.success());
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "graceful stop took {took:?}"
    );
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "stopped", "{st}\n{}", vm.logs());
    assert_eq!(st["status"]["exitCode"], 0);
    assert_eq!(
        vm.volume_file("/shutdown").as_deref(),
        Some("clean"),
        "the guest's shutdown ran\n{}",
        vm.logs()
    );
    assert!(
        !vm.links().contains("vm-svca"),
        "tap removed: {}",
        vm.links()
    );
    assert!(!alive(hv), "hypervisor gone");
    assert!(!vm.vmdir().join("booted").exists(), "booted cleared");
    assert!(no_process_mentions("microvm@svc-a"), "no process left");
    eprintln!("{test}: graceful stop in {:.1} s", took.as_secs_f64());
}

/// kill -9 of the hypervisor: the supervisor records it (exit code 137), removes the tap
/// and clears `booted`, then its on-failure policy starts the VM again 5 s later.
#[test]
fn service_hypervisor_killed_is_cleaned_up_and_restarted() {
    let test = "service_hypervisor_killed_is_cleaned_up_and_restarted";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::new(
        test,
        "svc-b",
        &tap_tables("vm-svcb", "02:00:00:00:5b:01", "10.77.2.2"),
    );
    vm.start();
    let hv = vm.run_record()["hypervisorPid"].as_u64().expect("pid");
    assert!(vm.links().contains("vm-svcb"));
    assert!(sh(&["kill", "-9", &hv.to_string()]).status.success());

    assert!(
        wait_for(
            "the supervisor to record the kill",
            Duration::from_secs(10),
            || { vm.run_record()["lastExit"]["code"] == 137 }
        ),
        "{}",
        vm.logs()
    );
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "failed", "{st}");
    assert!(
        st["status"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("SIGKILL") && r.contains("restarting")),
        "{st}"
    );
    assert!(
        !vm.links().contains("vm-svcb"),
        "tap removed: {}",
        vm.links()
    );
    assert!(!vm.vmdir().join("booted").exists(), "booted cleared");

    // The restart policy brings it back.
    assert!(
        wait_for("the restart", Duration::from_secs(90), || {
            let r = vm.run_record();
            r["attempt"] == 2 && r["ready"].is_u64()
        }),
        "{}",
        vm.logs()
    );
    let hv2 = vm.run_record()["hypervisorPid"].as_u64().expect("pid");
    assert_ne!(hv, hv2);
    assert!(alive(hv2));
    assert_eq!(vm.status_json()["status"]["state"], "running");
    assert!(vm.links().contains("vm-svcb"), "tap back: {}", vm.links());

    assert!(vm.microvm(&["stop", "svc-b"]).status.success());
    assert!(!alive(hv2));
    assert!(no_process_mentions("microvm@svc-b"));
}

/// kill -9 of virtiofsd while the VM runs: the supervisor starts it again (same socket)
/// and reports it; the VM keeps running; stop leaves no virtiofsd behind.
#[test]
fn service_virtiofsd_killed_is_restarted() {
    let test = "service_virtiofsd_killed_is_restarted";
    if require(test, true).is_none() {
        return;
    }
    let share = work_dir().join(format!("share-{}", std::process::id()));
    fs::create_dir_all(&share).expect("share");
    let vm = Vm::new(
        test,
        "svc-c",
        &format!(
            "\n[[shares]]\nproto = \"virtiofs\"\ntag = \"svcshare\"\nsource = {share:?}\nmountPoint = \"/share\"\n"
        ),
    );
    vm.start();
    let rec = vm.run_record();
    let helper = rec["helpers"][0]["pid"].as_u64().expect("virtiofsd pid");
    let helper_name = rec["helpers"][0]["name"].as_str().unwrap_or("").to_string();
    assert!(alive(helper));
    assert!(sh(&["kill", "-9", &helper.to_string()]).status.success());
    assert!(
        wait_for("virtiofsd to be restarted", Duration::from_secs(20), || {
            vm.run_record()["helpers"][0]["restarts"] == 1
        }),
        "{}",
        vm.logs()
    );
    let new = vm.run_record()["helpers"][0]["pid"].as_u64().expect("pid");
    assert_ne!(new, helper);
    assert!(alive(new));
    let log = fs::read_to_string(vm.vmdir().join("supervisor.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("helper {helper_name} restarted")),
        "reported: {log}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        vm.status_json()["status"]["state"],
        "running",
        "{}",
        vm.logs()
    );

    assert!(vm
        .microvm(&["stop", "svc-c", "--timeout", "20"])
        .status
        .success());
    assert!(!alive(new), "virtiofsd stopped with the VM");
    assert!(no_process_mentions(&format!(
        "--shared-dir={}",
        share.display()
    )));
    let _ = fs::remove_dir_all(&share);
}

/// Refusing to run the hypervisor as root by accident: a missing user is an error that
/// says how to create it (no VM boots).
#[test]
fn supervise_fails_clearly_without_the_user() {
    let test = "supervise_fails_clearly_without_the_user";
    if !rustix_is_root() {
        eprintln!("SKIPPED {test}: not root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let vmdir = dir.path().join("x");
    fs::create_dir_all(vmdir.join("runner/share/microvm")).expect("mkdir");
    std::os::unix::fs::symlink(vmdir.join("runner"), vmdir.join("current")).expect("ln");
    let out = Command::new(bin())
        .arg("--state-dir")
        .arg(dir.path())
        .args(["supervise", "x", "--user", "no-such-user-mvt"])
        .output()
        .expect("supervise");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no-such-user-mvt") && err.contains("host install"),
        "{err}"
    );
}

/// `host install --units-only` writes exactly the golden units (binary and state paths
/// substituted).
#[test]
fn host_install_writes_the_golden_units() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    fs::create_dir_all(&state).expect("state");
    fs::write(state.join("autostart"), "web\ndb\n").expect("autostart");
    let out = Command::new(bin())
        .arg("--state-dir")
        .arg(&state)
        .args(["host", "install", "--units-only", "--unit-dir"])
        .arg(dir.path().join("units"))
        .output()
        .expect("host install");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let golden = workspace().join("crates/host/tests/golden/units");
    let exe = bin().canonicalize().expect("bin");
    for name in ["microvm@.service", "microvms.target"] {
        let got = fs::read_to_string(dir.path().join("units").join(name)).expect("unit");
        let got = got
            .replace(&exe.display().to_string(), "/usr/local/bin/microvm")
            .replace(&state.display().to_string(), "/var/lib/microvms");
        let want = fs::read_to_string(golden.join(name)).expect("golden");
        assert_eq!(got, want, "{name}");
    }
}

/// `microvm balloon NAME SIZE` on a running managed VM (qemu, QMP): the target reaches
/// qemu and the balloon size it reports comes back; a stopped VM is refused clearly.
#[test]
fn service_balloon_resizes_a_running_vm() {
    let test = "service_balloon_resizes_a_running_vm";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::with_top(test, "svc-bal", "balloon = true", "");
    vm.start();
    let out = vm.microvm(&["balloon", &vm.name, "64", "--json"]);
    assert!(out.status.success(), "balloon failed\n{}", vm.logs());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["requestedMib"], 64, "{v}");
    let size = v["balloonMib"].as_u64().expect("balloonMib");
    assert!(size <= 64, "{v}");
    let out = vm.microvm(&["balloon", &vm.name, "256"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not below the VM's 256 MiB"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = vm.microvm(&["stop", &vm.name]);
    assert!(out.status.success(), "stop\n{}", vm.logs());
    let out = vm.microvm(&["balloon", &vm.name, "64"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The console channel under the supervisor systemd runs (`microvm supervise`, a managed
/// pty console): `READY=1` reaches `NOTIFY_SOCKET` only once the guest reported ready
/// over the console (the log says so first), the console log holds no frame, and SIGTERM
/// stops the VM gracefully.
#[test]
fn service_console_channel_notifies_ready_when_the_guest_is() {
    let test = "service_console_channel_notifies_ready_when_the_guest_is";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::with_top(test, "svc-cons", "controlChannel = \"console\"", "");
    let notify_path = vm.dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let err_path = vm.dir.path().join("supervise.err");
    let mut sup = Command::new("ip")
        .args(["netns", "exec", &vm.netns])
        .arg(bin())
        .arg("--state-dir")
        .arg(vm.state())
        .args(["supervise", &vm.name])
        .env("PATH", path_var())
        .env("NOTIFY_SOCKET", &notify_path)
        .env_remove("MICROVM_SERVICE_MANAGER")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_path).expect("stderr"))
        .spawn()
        .expect("supervise");
    let said = || {
        format!(
            "{}{}",
            fs::read_to_string(&err_path).unwrap_or_default(),
            fs::read_to_string(vm.vmdir().join("supervisor.log")).unwrap_or_default()
        )
    };
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let ready_at = loop {
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no READY=1\n{}\n{}",
            said(),
            vm.logs()
        );
        if let Some(s) = sup.try_wait().expect("wait") {
            panic!("supervise ended ({s})\n{}\n{}", said(), vm.logs());
        }
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break said();
            }
        }
    };
    assert!(
        ready_at.contains("ready ") && ready_at.contains("after start"),
        "READY=1 came before the guest reported ready:\n{ready_at}"
    );
    let console = fs::read_to_string(vm.vmdir().join("console.log")).unwrap_or_default();
    assert!(
        !console.contains(" READY "),
        "a frame reached the console log:\n{console}"
    );
    let _ = Command::new("kill").arg(sup.id().to_string()).status();
    let t = Instant::now();
    while sup.try_wait().expect("wait").is_none() {
        assert!(t.elapsed() < Duration::from_secs(60), "no stop\n{}", said());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !said().contains("killed"),
        "not a graceful stop:\n{}",
        said()
    );
    eprintln!(
        "{test}: READY=1 after {:.1} s; stopped in {:.1} s",
        start.elapsed().as_secs_f64() - t.elapsed().as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
}
