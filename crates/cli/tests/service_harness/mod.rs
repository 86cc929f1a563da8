//! What the service tests share: prerequisites, the busybox root, the `microvm` user, a
//! managed VM in its own state directory and network namespace, and process checks.
#![allow(dead_code)] // each test binary uses a part

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod netns;

#[path = "../common/slot.rs"]
mod slot;
pub use slot::Slot;

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_microvm"))
}

pub fn work_dir() -> PathBuf {
    let d = bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("service-tests"))
        .unwrap_or_else(|| workspace().join("target/service-tests"));
    fs::create_dir_all(&d).expect("service-tests dir");
    fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).expect("chmod");
    d
}

pub fn kernels_dir() -> PathBuf {
    match std::env::var_os("MICROVM_TEST_KERNELS") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target/test-kernels"),
    }
}

pub fn kernel() -> PathBuf {
    kernels_dir().join("cloud.deb")
}

/// microvm's own kernel (everything built in: the fast boot), which
/// scripts/build-test-kernel.sh links beside the test kernels; `None` (printed, or a
/// panic under CI) when it is missing.
pub fn microvm_kernel(test: &str) -> Option<PathBuf> {
    let dir = kernels_dir().join("microvm");
    if dir.join("vmlinux").is_file() {
        return Some(dir);
    }
    let why = format!(
        "the microvm kernel {} is missing (scripts/build-test-kernel.sh)",
        dir.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

pub fn path_var() -> std::ffi::OsString {
    let mut dirs = vec![workspace().join("target/tools/bin")];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    std::env::join_paths(dirs).expect("PATH")
}

pub fn find(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_var())
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// `Some(())` when the test can run; otherwise prints why (or panics under CI).
pub fn require(test: &str, virtiofsd: bool) -> Option<()> {
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

pub fn rustix_is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

pub fn sh(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .env("PATH", path_var())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
}

/// The shared busybox root (built once).
pub fn root() -> &'static PathBuf {
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

/// Creates the `microvm` user and group (what `host install` does) once.
pub fn host_install() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let units = tempfile::tempdir().expect("tempdir");
        let state = work_dir().join("state-install");
        let existed = sh(&["id", "-u", "microvm"]).status.success();
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
        if !existed {
            // `host install` makes the state directory the user's home; this one is a
            // scratch directory in the clone. Point it where a real install puts it, so
            // the user the suite leaves (documented in docs/host.md) refers to nothing
            // inside the clone.
            assert!(sh(&["usermod", "--home", "/var/lib/microvms", "microvm"])
                .status
                .success());
            eprintln!(
                "created the system user microvm (group kvm), home /var/lib/microvms (not created)"
            );
        }
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

/// Builds the definition `def` (in the shared store) and installs it as
/// `STATE/NAME/current` (by hand: the state layout of `microvm create`).
pub fn install_built(def: &Path, state: &Path, name: &str) {
    let out = Command::new(bin())
        .arg("build")
        .arg(def)
        .arg("--store")
        .arg(work_dir().join("store"))
        .env("PATH", path_var())
        .output()
        .expect("build");
    assert!(
        out.status.success(),
        "build {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runner = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let vmdir = state.join(name);
    fs::create_dir_all(&vmdir).expect("vm dir");
    std::os::unix::fs::symlink(runner, vmdir.join("current")).expect("current");
}

/// `ip netns exec NS microvm --state-dir STATE ARGS…`, with microvm's own service
/// manager; the command and its output are printed (after `label`).
pub fn microvm_in(label: &str, netns: &str, state: &Path, args: &[&str]) -> Output {
    let out = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(bin())
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("PATH", path_var())
        // These tests are about microvm's own service manager; on a host where systemd
        // is PID 1 `start` would go to systemctl (tests/systemd.rs covers that path, in
        // a container).
        .env("MICROVM_SERVICE_MANAGER", "own")
        .stdin(Stdio::null())
        .output()
        .expect("microvm");
    echo(&format!("$ {label}microvm {}", args.join(" ")), &out);
    out
}

/// Prints `command`, its exit status and its output.
pub fn echo(command: &str, out: &Output) {
    eprintln!(
        "{command} → {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A managed VM in its own state directory and network namespace.
pub struct Vm {
    pub name: String,
    pub netns: String,
    pub dir: tempfile::TempDir,
    _slot: Slot,
}

impl Vm {
    /// Writes the definition, builds it, and installs it as `<state>/<name>/current` (by
    /// hand: the state layout of `microvm create`).
    pub fn new(test: &str, name: &str, tables: &str) -> Vm {
        Vm::with_top(test, name, "", tables)
    }

    /// [`Vm::new`] with `top` (top-level keys, e.g. `command`) in the definition.
    pub fn with_top(_test: &str, name: &str, top: &str, tables: &str) -> Vm {
        Vm::with_guest(name, &kernel(), root(), top, tables)
    }

    /// [`Vm::with_top`] with another kernel and root directory.
    pub fn with_guest(name: &str, kernel: &Path, root: &Path, top: &str, tables: &str) -> Vm {
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
                "hostName = \"{name}\"\nvcpu = 1\nmem = 256\nkernel = {kernel:?}\n{top}\n[[root]]\ndirectory = {root:?}\n\n[[volumes]]\nimage = \"data.img\"\nmountPoint = \"/data\"\nlabel = \"data\"\nsize = 32\n{tables}\n",
                kernel = kernel,
                root = root,
            ),
        )
        .expect("vm.toml");
        install_built(&def, &dir.path().join("state"), name);
        Vm {
            name: name.into(),
            netns,
            dir,
            _slot: slot,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn vmdir(&self) -> PathBuf {
        self.state().join(&self.name)
    }

    /// `ip netns exec NS microvm --state-dir S ARGS…`, with microvm's own service manager.
    pub fn microvm(&self, args: &[&str]) -> Output {
        microvm_in("", &self.netns, &self.state(), args)
    }

    pub fn status_json(&self) -> serde_json::Value {
        let out = self.microvm(&["status", &self.name, "--json"]);
        assert!(out.status.success());
        serde_json::from_slice(&out.stdout).expect("status json")
    }

    pub fn run_record(&self) -> serde_json::Value {
        fs::read(self.vmdir().join("run.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    pub fn links(&self) -> String {
        String::from_utf8_lossy(&sh(&["ip", "-n", &self.netns, "-o", "link"]).stdout).into()
    }

    pub fn logs(&self) -> String {
        let read = |f: &str| fs::read_to_string(self.vmdir().join(f)).unwrap_or_default();
        format!(
            "--- supervisor.log\n{}\n--- console.log (tail)\n{}",
            read("supervisor.log"),
            tail(&read("console.log"), 30)
        )
    }

    /// `cat PATH` from the data volume, read on the host with debugfs.
    pub fn volume_file(&self, path: &str) -> Option<String> {
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

    pub fn start(&self) {
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

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> bool {
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

pub fn alive(pid: u64) -> bool {
    // A zombie still has /proc/<pid> but an empty cmdline.
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

pub fn uid_of(pid: u64) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn microvm_uid() -> u32 {
    let out = sh(&["id", "-u", "microvm"]);
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid of microvm")
}

/// No process whose cmdline mentions `needle` is left.
pub fn no_process_mentions(needle: &str) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return true;
    };
    !entries.flatten().any(|e| {
        e.file_name().to_string_lossy().parse::<u32>().is_ok()
            && fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
    })
}

pub fn tap_tables(tap: &str, mac: &str, addr: &str) -> String {
    format!(
        "\n[[interfaces]]\ntype = \"tap\"\nid = \"{tap}\"\nmac = \"{mac}\"\n\n[[network]]\ninterface = \"{tap}\"\naddresses = [\"{addr}/24\"]\n"
    )
}
