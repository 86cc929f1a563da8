//! The guests of tests/network_host.rs: the microvm kernel, busybox roots (a command
//! guest's and one with busybox init), `microvm run` of a VM with one tap on a network's
//! bridge and DHCP, and the lease file.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{bin, ok, path_var, workspace};

/// The microvm kernel's directory (`microvm kernel build`; scripts/build-test-kernel.sh).
pub fn microvm_kernel() -> PathBuf {
    let rel = |d: std::ffi::OsString| {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            d
        } else {
            workspace().join(d)
        }
    };
    match std::env::var_os("MICROVM_TEST_MICROVM_KERNEL") {
        Some(d) => rel(d),
        None => std::env::var_os("MICROVM_TEST_KERNELS")
            .map(rel)
            .unwrap_or_else(|| workspace().join("target/test-kernels"))
            .join("microvm"),
    }
}

/// `target/network-tests`: the busybox root and the store.
pub fn work_dir() -> PathBuf {
    let d = bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("network-tests"))
        .unwrap_or_else(|| workspace().join("target/network-tests"));
    fs::create_dir_all(&d).expect("network-tests dir");
    d
}

/// A busybox root (every applet linked) for single-command guests.
pub fn busybox_root() -> PathBuf {
    let dest = work_dir().join("root-v1");
    if dest.join("bin/busybox").is_file() {
        return dest;
    }
    let tmp = work_dir().join(format!("root.tmp-n3-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    for d in ["bin", "sbin", "etc", "proc", "sys", "dev", "run", "tmp"] {
        fs::create_dir_all(tmp.join(d)).expect("mkdir");
    }
    fs::copy("/bin/busybox", tmp.join("bin/busybox")).expect("busybox");
    let list = ok(&[tmp.join("bin/busybox").to_str().expect("utf-8"), "--list"]);
    for applet in list.split_whitespace().filter(|a| *a != "busybox") {
        let _ = std::os::unix::fs::symlink("busybox", tmp.join("bin").join(applet));
    }
    if fs::rename(&tmp, &dest).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    dest
}

/// The busybox root with an `/etc/inittab` for busybox init (`init = "/bin/init"`).
pub fn init_root() -> PathBuf {
    let dest = work_dir().join("root-n3-init-v1");
    if dest.join("etc/inittab").is_file() {
        return dest;
    }
    let tmp = work_dir().join(format!("root-n3-init.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    ok(&[
        "cp",
        "-a",
        busybox_root().to_str().expect("utf-8"),
        tmp.to_str().expect("utf-8"),
    ]);
    fs::write(
        tmp.join("etc/inittab"),
        "::sysinit:/bin/echo n3-init-up\n::respawn:/bin/sleep 900\n",
    )
    .expect("inittab");
    if fs::rename(&tmp, &dest).is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    dest
}

/// The lease file's `(expiry, ip)` for `mac`.
pub fn lease_of(state: &Path, net: &str, mac: &str) -> Option<(u64, String)> {
    let text = fs::read_to_string(state.join(".networks").join(net).join("leases")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 3 || !f[1].eq_ignore_ascii_case(mac) {
            return None;
        }
        Some((f[0].parse().ok()?, f[2].to_string()))
    })
}

/// `microvm run`, stopped (SIGTERM: the guest is shut down) and reaped on drop.
pub struct VmProcess(pub Child);

impl Drop for VmProcess {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.0.wait();
    }
}
/// Where the VMs of one test run: the host namespace, the state and work directories and
/// the bridge their taps join.
pub struct Guests<'a> {
    pub ns: &'a str,
    pub state: &'a Path,
    pub dir: &'a Path,
    pub bridge: &'a str,
}

impl Guests<'_> {
    /// `microvm run` of `NAME.toml`: the microvm kernel, 256 MiB, `exec` (a `command` or
    /// `init` line), the root `root`, a tap `tap` with `mac` on the bridge, DHCP.
    pub fn start(&self, name: &str, tap: &str, mac: &str, exec: &str, root: &Path) -> VmProcess {
        let head = format!(
            "hostName = \"{name}\"\nvcpu = 1\nmem = 256\nkernel = {kernel:?}\n{exec}\n\n\
             [[root]]\ndirectory = {root:?}\n",
            kernel = microvm_kernel(),
        );
        self.start_toml(name, tap, mac, &head, &work_dir().join("store"))
    }

    /// `microvm run --store STORE` of `NAME.toml`: `head` (everything but the interface),
    /// then a tap `tap` with `mac` on the bridge, configured by DHCP.
    pub fn start_toml(
        &self,
        name: &str,
        tap: &str,
        mac: &str,
        head: &str,
        store: &Path,
    ) -> VmProcess {
        let def = self.write_toml(name, tap, mac, head);
        let child = Command::new("ip")
            .args(["netns", "exec", self.ns])
            .arg(bin())
            .arg("--state-dir")
            .arg(self.state)
            .arg("run")
            .arg(&def)
            .arg("--store")
            .arg(store)
            .arg("--workdir")
            .arg(self.dir)
            .arg("--console-log")
            .arg(self.dir.join(format!("{name}.console")))
            .env("PATH", path_var())
            .stdin(Stdio::null())
            .spawn()
            .expect("microvm run");
        VmProcess(child)
    }

    /// `microvm build` of the same definition, outside the namespaces (a Debian root is
    /// fetched from the network).
    pub fn build_toml(&self, name: &str, tap: &str, mac: &str, head: &str, store: &Path) {
        let def = self.write_toml(name, tap, mac, head);
        let out = Command::new(bin())
            .arg("--state-dir")
            .arg(self.state)
            .arg("build")
            .arg(&def)
            .arg("--store")
            .arg(store)
            .env("PATH", path_var())
            .stdin(Stdio::null())
            .output()
            .expect("microvm build");
        assert!(
            out.status.success(),
            "microvm build {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn write_toml(&self, name: &str, tap: &str, mac: &str, head: &str) -> PathBuf {
        let def = self.dir.join(format!("{name}.toml"));
        fs::write(
            &def,
            format!(
                "{head}\n[[interfaces]]\ntype = \"tap\"\nid = \"{tap}\"\nmac = \"{mac}\"\nbridge = \"{br}\"\n\n\
                 [[network]]\ninterface = \"{tap}\"\ndhcp = true\n",
                br = self.bridge,
            ),
        )
        .expect("definition");
        def
    }

    /// What the VM `name` wrote to its console so far.
    pub fn console(&self, name: &str) -> String {
        // Lossy: a guest's console carries bytes that are not UTF-8.
        let bytes = fs::read(self.dir.join(format!("{name}.console"))).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}
