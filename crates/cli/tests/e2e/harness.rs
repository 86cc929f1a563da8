//! The end-to-end harness: prerequisites (skip with a reason, or fail under `CI`), the
//! shared busybox root and store under the target directory, a concurrency limit on
//! VMs, running `microvm` with a deadline, and reading ext4 volumes on the host with
//! `debugfs`.

use std::fs;
use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[path = "../common/slot.rs"]
mod slot;
pub use slot::Slot;

/// How long one `microvm run` (build included) may take before it is killed and the
/// test fails. TCG boots take ~5–15 s here; this is for a wedged boot.
pub const RUN_DEADLINE: Duration = Duration::from_secs(90);

/// The ext4 volume every test VM writes its results to, mounted at `/output`.
pub const OUTPUT_VOLUME: &str = r#"
[[volumes]]
image = "output.img"
mountPoint = "/output"
label = "output"
size = 32
"#;

/// Something a test needs from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Qemu,
    /// `cloud.deb`: the Debian cloud kernel (no 9p).
    CloudKernel,
    /// microvm's own kernel (`microvm kernel build`, which scripts/test.sh runs once):
    /// `$MICROVM_TEST_MICROVM_KERNEL`, else `microvm` beside the test kernels.
    MicrovmKernel,
    /// A static busybox at /bin/busybox (busybox-static).
    Busybox,
    Virtiofsd,
    /// `debugfs` from e2fsprogs, to read volumes on the host.
    Debugfs,
}

/// Which test kernel a VM boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Cloud,
    /// Everything built in, no modules: the fast boot.
    Microvm,
}

/// What the tests share: the binary, the store, the root, the kernels, `PATH`.
pub struct Env {
    pub bin: PathBuf,
    pub store: PathBuf,
    pub root: PathBuf,
    pub kernels: PathBuf,
    pub path: std::ffi::OsString,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// The cargo target directory (the binary is `<target>/<profile>/microvm`).
fn target_dir() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_microvm"));
    bin.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace().join("target"))
}

/// Where this harness keeps what it shares between tests and runs.
fn e2e_dir() -> PathBuf {
    target_dir().join("e2e")
}

/// The directory `microvm kernel build` printed (`bzImage`, `vmlinux`, `.config`).
pub fn microvm_kernel_dir() -> PathBuf {
    match std::env::var_os("MICROVM_TEST_MICROVM_KERNEL") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => kernels_dir().join("microvm"),
    }
}

fn kernels_dir() -> PathBuf {
    match std::env::var_os("MICROVM_TEST_KERNELS") {
        Some(d) if Path::new(&d).is_absolute() => PathBuf::from(d),
        Some(d) => workspace().join(d),
        None => workspace().join("target/test-kernels"),
    }
}

/// `PATH` for the child, with the repository's `target/tools/bin` (virtiofsd) first.
fn child_path() -> std::ffi::OsString {
    let mut dirs = Vec::new();
    for tools in [
        workspace().join("target/tools/bin"),
        target_dir().join("tools/bin"),
    ] {
        if tools.is_dir() && !dirs.contains(&tools) {
            dirs.push(tools);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).expect("PATH")
}

fn find_program(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::split_paths(path).collect();
    // debugfs lives in /sbin, which a user's PATH may lack.
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// The problem with one prerequisite, if any.
fn check(need: Need, path: &std::ffi::OsStr) -> Option<String> {
    let program = |name: &str, package: &str| {
        find_program(name, path)
            .is_none()
            .then(|| format!("{name} is not installed (package {package})"))
    };
    let kernel = |file: &str| {
        let p = kernels_dir().join(file);
        (!p.is_file()).then(|| {
            format!(
                "test kernel {} is missing (run scripts/fetch-test-kernels.sh)",
                p.display()
            )
        })
    };
    match need {
        Need::Qemu => program("qemu-system-x86_64", "qemu-system-x86"),
        Need::CloudKernel => kernel("cloud.deb"),
        Need::MicrovmKernel => {
            let dir = microvm_kernel_dir();
            (!dir.join("vmlinux").is_file()).then(|| {
                format!(
                    "the microvm kernel {} is missing (scripts/test.sh builds it: `microvm kernel build`)",
                    dir.display()
                )
            })
        }
        Need::Virtiofsd => program("virtiofsd", "scripts/install-virtiofsd.sh"),
        Need::Debugfs => program("debugfs", "e2fsprogs"),
        Need::Busybox => match fs::read("/bin/busybox") {
            Err(_) => Some("/bin/busybox is missing (package busybox-static)".into()),
            Ok(bytes) if is_dynamic(&bytes) => {
                Some("/bin/busybox is dynamically linked (install busybox-static)".into())
            }
            Ok(_) => None,
        },
    }
}

/// Whether an ELF file has an interpreter (a `PT_INTERP` program header).
fn is_dynamic(elf: &[u8]) -> bool {
    let u16_at = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u64_at = |o: usize| {
        elf.get(o..o + 8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    };
    if elf.get(..5) != Some(b"\x7fELF\x02") {
        return true; // not a 64-bit ELF: unusable as a guest binary here
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return true;
    };
    (0..phnum as usize).any(|i| {
        let at = phoff as usize + i * phentsize as usize;
        elf.get(at..at + 4) == Some(&3u32.to_le_bytes()[..]) // PT_INTERP
    })
}

/// The environment for a test that needs `needs`, or `None` after printing why the test
/// is skipped. Under `CI` a missing prerequisite fails the test instead.
pub fn require(test: &str, needs: &[Need]) -> Option<Env> {
    let path = child_path();
    let mut needs = needs.to_vec();
    needs.extend([Need::Qemu, Need::Busybox, Need::Debugfs]);
    let mut problems: Vec<String> = Vec::new();
    for need in needs {
        if let Some(p) = check(need, &path) {
            if !problems.contains(&p) {
                problems.push(p);
            }
        }
    }
    if !problems.is_empty() {
        let list = problems.join("; ");
        if std::env::var_os("CI").is_some() {
            panic!("{test}: prerequisites missing under CI: {list}");
        }
        eprintln!("SKIPPED {test}: {list}");
        return None;
    }
    Some(Env {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_microvm")),
        store: e2e_dir().join("store"),
        root: shared_root().clone(),
        kernels: kernels_dir(),
        path,
    })
}

/// Bump when the root's contents change, so a stale one under target/ is not reused.
const ROOT_VERSION: u32 = 1;

const INITTAB: &str = "\
::sysinit:/etc/init.d/rcS
::once:/etc/init.d/once
::shutdown:/etc/init.d/shutdown
";

/// sysinit: record that busybox init ran, and what the kernel is.
const RC_S: &str = "#!/bin/sh
echo sysinit > /output/sysinit
uname -s > /output/kernel
uname -m > /output/machine
sync
";

/// once (after sysinit; busybox init's signal handlers are installed): say so on the
/// console, and power off by itself when asked to.
const ONCE: &str = "#!/bin/sh
echo \"e2e: guest up\"
if [ \"$E2E_POWEROFF\" = 1 ]; then
  echo poweroff > /output/poweroff
  sync
  poweroff
fi
";

/// shutdown: the marker that proves a clean shutdown ran.
const SHUTDOWN: &str = "#!/bin/sh
echo clean shutdown > /output/shutdown
sync
umount /output 2>/dev/null || mount -o remount,ro /output
echo \"e2e: clean shutdown\"
";

/// The busybox root shared by all tests, built once under the target directory.
fn shared_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let busybox = fs::read("/bin/busybox").expect("read /bin/busybox");
        let dest = e2e_dir().join(format!("root-v{ROOT_VERSION}-{}", busybox.len()));
        if dest.join("bin/busybox").is_file() {
            return dest;
        }
        let tmp = e2e_dir().join(format!("root.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        build_root(&tmp, &busybox).expect("building the busybox root");
        if fs::rename(&tmp, &dest).is_err() {
            // Another test binary published it first.
            let _ = fs::remove_dir_all(&tmp);
            assert!(
                dest.join("bin/busybox").is_file(),
                "no root at {}",
                dest.display()
            );
        }
        dest
    })
}

fn build_root(root: &Path, busybox: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    for dir in [
        "bin",
        "sbin",
        "etc/init.d",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "root",
        "output",
    ] {
        fs::create_dir_all(root.join(dir))?;
    }
    let exe = fs::Permissions::from_mode(0o755);
    fs::write(root.join("bin/busybox"), busybox)?;
    fs::set_permissions(root.join("bin/busybox"), exe.clone())?;
    let list = Command::new(root.join("bin/busybox"))
        .arg("--list")
        .output()?;
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        let link = root.join("bin").join(applet);
        if applet != "busybox" && !link.exists() {
            symlink("busybox", link)?;
        }
    }
    symlink("../bin/busybox", root.join("sbin/init"))?;
    fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    fs::write(root.join("etc/group"), "root:x:0:\n")?;
    fs::write(root.join("etc/inittab"), INITTAB)?;
    for (name, text) in [("rcS", RC_S), ("once", ONCE), ("shutdown", SHUTDOWN)] {
        let p = root.join("etc/init.d").join(name);
        fs::write(&p, text)?;
        fs::set_permissions(&p, exe.clone())?;
    }
    Ok(())
}

/// One test VM: a temporary working directory holding `vm.toml` and the volumes.
pub struct Vm<'e> {
    pub env: &'e Env,
    pub name: String,
    pub dir: tempfile::TempDir,
}

impl<'e> Vm<'e> {
    /// Writes `vm.toml`: the shared header (name, 1 vCPU, 256 MiB, the kernel), the
    /// test's top-level keys `top`, the shared root, then the test's tables `tables`.
    pub fn new(env: &'e Env, name: &str, kernel: Kernel, top: &str, tables: &str) -> Self {
        fs::create_dir_all(e2e_dir()).expect("create the e2e dir");
        let dir = tempfile::Builder::new()
            .prefix(&format!("{name}-"))
            .tempdir_in(e2e_dir())
            .expect("temporary directory");
        let deb = match kernel {
            Kernel::Cloud => env.kernels.join("cloud.deb"),
            Kernel::Microvm => microvm_kernel_dir(),
        };
        let text = format!(
            "hostName = \"{name}\"\nvcpu = 1\nmem = 256\nkernel = {deb:?}\n{top}\n\n[[root]]\ndirectory = {root:?}\n{tables}\n",
            root = env.root,
        );
        fs::write(dir.path().join("vm.toml"), text).expect("write vm.toml");
        Vm {
            env,
            name: name.into(),
            dir,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.env.bin);
        c.args(args)
            .arg("vm.toml")
            .arg("--store")
            .arg(&self.env.store)
            .current_dir(self.dir.path())
            .env("PATH", &self.env.path)
            .env_remove("MICROVM_STORE")
            .stdin(Stdio::null())
            .process_group(0);
        c
    }

    /// Starts `microvm run` with the console in `console.log` and its own stdout and
    /// stderr in `stdout.log` / `stderr.log`.
    pub fn spawn(&self) -> Running {
        let _ = fs::remove_file(self.path("console.log"));
        let out = fs::File::create(self.path("stdout.log")).expect("stdout.log");
        let err = fs::File::create(self.path("stderr.log")).expect("stderr.log");
        let child = self
            .command(&["run", "--console-log", "console.log"])
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn microvm run");
        Running {
            child,
            started: Instant::now(),
            dir: self.dir.path().to_path_buf(),
            name: self.name.clone(),
        }
    }

    /// Runs `microvm run` to the end (killing it and failing the test after
    /// [`RUN_DEADLINE`]), holding a VM slot.
    pub fn run(&self) -> Outcome {
        let _slot = Slot::acquire();
        let mut running = self.spawn();
        running.wait(RUN_DEADLINE)
    }

    /// Runs `microvm <verb> vm.toml --store …` to the end; returns (status, stdout,
    /// stderr, elapsed).
    pub fn cli(&self, args: &[&str]) -> (ExitStatus, String, String, Duration) {
        let start = Instant::now();
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn microvm");
        let (mut out, mut err) = (String::new(), String::new());
        let mut so = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        if let Some(mut se) = child.stderr.take() {
            let _ = se.read_to_string(&mut err);
        }
        out.push_str(&reader.join().expect("stdout reader"));
        let status = child.wait().expect("wait for microvm");
        (status, out, err, start.elapsed())
    }

    /// The contents of `file` on the ext4 volume `image` (relative to the VM's
    /// directory), read on the host with debugfs; `None` when it does not exist.
    pub fn volume_file(&self, image: &str, file: &str) -> Option<String> {
        let debugfs = find_program("debugfs", &self.env.path).expect("debugfs");
        let out = Command::new(debugfs)
            .arg("-R")
            .arg(format!("cat {file}"))
            .arg(self.path(image))
            .output()
            .expect("run debugfs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "debugfs {image} failed: {stderr}");
        if stderr.contains("not found") {
            return None;
        }
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// [`Vm::volume_file`] on `output.img`, trimmed; fails the test when it is missing.
    pub fn output(&self, file: &str, outcome: &Outcome) -> String {
        match self.volume_file("output.img", file) {
            Some(s) => s.trim().to_owned(),
            None => panic!(
                "{}: /output{file} is not on output.img\n{}",
                self.name,
                outcome.logs()
            ),
        }
    }
}

/// A `microvm run` in progress; killed (with its process group) when dropped.
pub struct Running {
    child: Child,
    started: Instant,
    dir: PathBuf,
    name: String,
}

/// How a `microvm run` ended.
pub struct Outcome {
    pub name: String,
    pub code: Option<i32>,
    pub elapsed: Duration,
    pub stderr: String,
    pub console: String,
}

impl Outcome {
    /// microvm's stderr and the tail of the console, for failure messages.
    pub fn logs(&self) -> String {
        let tail: Vec<&str> = self.console.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "--- {} (exit {:?} after {:.1} s): microvm stderr ---\n{}\n--- console (last 40 lines) ---\n{}",
            self.name,
            self.code,
            self.elapsed.as_secs_f64(),
            self.stderr.trim_end(),
            tail.join("\n")
        )
    }

    /// Fails the test unless `microvm run` exited with `code`.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.code,
            Some(code),
            "{}: expected exit {code}\n{}",
            self.name,
            self.logs()
        );
    }
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.dir.join("stderr.log"))
    }

    pub fn console(&self) -> String {
        read_lossy(&self.dir.join("console.log"))
    }

    fn outcome(&self, code: Option<i32>) -> Outcome {
        Outcome {
            name: self.name.clone(),
            code,
            elapsed: self.started.elapsed(),
            stderr: self.stderr(),
            console: self.console(),
        }
    }

    /// Sends `signal` (e.g. "TERM") to the `microvm run` process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed", self.pid());
    }

    /// Polls until `pred(stderr, console)` holds; fails the test (killing the VM) if
    /// the process exits first or `within` passes.
    pub fn wait_for(&mut self, what: &str, within: Duration, pred: impl Fn(&str, &str) -> bool) {
        let deadline = Instant::now() + within;
        loop {
            if pred(&self.stderr(), &self.console()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "{}: microvm run exited before {what}\n{}",
                    self.name,
                    self.outcome(status.code()).logs()
                );
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{}: no {what} within {within:?}; killed\n{}",
                    self.name,
                    self.outcome(None).logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the end, at most `within` from now; fails the test (killing the VM)
    /// when it does not end in time.
    pub fn wait(&mut self, within: Duration) -> Outcome {
        let deadline = Instant::now() + within;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt as _;
                    let code = status.code().or_else(|| status.signal().map(|s| 128 + s));
                    return self.outcome(code);
                }
                Ok(None) => {}
                Err(e) => panic!("{}: waiting for microvm run: {e}", self.name),
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!(
                    "{}: microvm run did not end within {within:?}; killed\n{}",
                    self.name,
                    self.outcome(None).logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL to the whole process group (microvm, qemu, helpers), then reap.
    fn kill(&mut self) {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .arg(format!("-{}", self.pid()))
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// The name of our primary group (`id -gn`).
pub fn primary_group() -> String {
    let out = Command::new("id").arg("-gn").output().expect("run id -gn");
    assert!(out.status.success(), "id -gn failed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
