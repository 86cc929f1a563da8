//! Shared by the real-binary tests: the fixtures, a real kernel, a network namespace of
//! the test's own, and a QMP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use microvm_runner::Invocation;
use microvm_spec::config::{Arch, Config, DeviceBus, InterfaceType};
use microvm_spec::load::{load_with, LoadOptions};
use serde_json::Value;

pub fn repo_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// `tests/fixtures/*.{toml,json}`, sorted.
pub fn fixtures() -> Vec<PathBuf> {
    let dir = repo_root().join("tests/fixtures");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "json")
            )
        })
        .collect();
    out.sort();
    out
}

pub fn stem(path: &Path) -> String {
    path.file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned()
}

/// A fixture as the golden test loads it (`aarch64-*` for aarch64).
pub fn load_fixture(path: &Path) -> Config {
    let arch = if stem(path).starts_with("aarch64-") {
        Arch::Aarch64
    } else {
        Arch::X86_64
    };
    let options = LoadOptions {
        arch: Some(arch),
        ..LoadOptions::default()
    };
    match load_with(path, &options) {
        Ok(l) => l.config,
        Err(f) => panic!("fixture {} does not load:\n{}", path.display(), f.render()),
    }
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next().map(|u| u == "0"))
            .unwrap_or(false)
    })
}

/// A bzImage from `$MICROVM_TEST_KERNELS/cloud.deb` (or `full.deb`), unpacked once
/// under the target directory.
pub fn test_kernel() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("MICROVM_TEST_KERNELS")?);
    let deb = ["cloud.deb", "full.deb"]
        .iter()
        .map(|d| dir.join(d))
        .find(|d| d.exists())?;
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-binaries-kernel");
    let find = |out: &Path| -> Option<PathBuf> {
        std::fs::read_dir(out.join("boot"))
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .and_then(|f| f.to_str())
                    .is_some_and(|f| f.starts_with("vmlinuz-"))
            })
    };
    if let Some(k) = find(&out) {
        return Some(k);
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let ok = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&tmp)
        .status()
        .is_ok_and(|s| s.success());
    if !ok || std::fs::rename(&tmp, &out).is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    find(&out)
}

pub fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A named network namespace, deleted on drop; commands run in it with `ip netns exec`.
pub struct Netns(String);

impl Netns {
    pub fn new(name: &str) -> Netns {
        let status = Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip");
        assert!(status.success(), "ip netns add {name}");
        Netns(name.to_owned())
    }

    pub fn name(&self) -> &str {
        &self.0
    }

    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A QMP client: greeting read and capabilities negotiated on connect.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path) -> Result<Qmp, String> {
        let stream = UnixStream::connect(path).map_err(|e| format!("connect QMP: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut q = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = q.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("no QMP greeting: {greeting}"));
        }
        q.command("qmp_capabilities")?;
        Ok(q)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("read QMP: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Sends `execute`, skips events, returns `return` (or the error).
    pub fn command(&mut self, execute: &str) -> Result<Value, String> {
        let msg = serde_json::json!({ "execute": execute }).to_string() + "\n";
        self.writer
            .write_all(msg.as_bytes())
            .map_err(|e| format!("write QMP: {e}"))?;
        loop {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {execute}: {e}"));
            }
        }
    }
}

/// The only exceptions: devices or host support this machine lacks, with the reason.
pub fn adapt_to_host(config: &mut Config, work: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    if config.graphics.enable && !Path::new("/dev/dri").exists() {
        config.graphics.enable = false;
        notes.push("graphics: no display and no GPU (/dev/dri) on this host".to_owned());
    }
    if let Some(p) = &config.qemu.package {
        if !p.exists() {
            notes.push(format!(
                "qemu.package {} is not on this host: the qemu on PATH runs it",
                p.display()
            ));
            config.qemu.package = None;
        }
    }
    if let Some(p) = &config.virtiofsd.package {
        if !p.exists() {
            notes.push(format!(
                "virtiofsd.package {} is not on this host: the virtiofsd on PATH runs it",
                p.display()
            ));
            config.virtiofsd.package = None;
        }
    }
    if config.vsock.cid.is_some() && !Path::new("/dev/vhost-vsock").exists() {
        config.vsock.cid = None;
        notes.push("vhost-vsock: no /dev/vhost-vsock on this host".to_owned());
    }
    for iface in &mut config.interfaces {
        if iface.vhost && !Path::new("/dev/vhost-net").exists() {
            iface.vhost = false;
            notes.push(format!("vhost-net ({}): no /dev/vhost-net", iface.id));
        }
    }
    if config.devices.iter().any(|d| d.bus == DeviceBus::Pci)
        && !Path::new("/dev/vfio/vfio").exists()
    {
        config.devices.retain(|d| d.bus != DeviceBus::Pci);
        notes.push("vfio-pci: no /dev/vfio/vfio (no IOMMU) on this host".to_owned());
    }
    let lacks_macvtap = !Path::new("/sys/module/macvtap").exists();
    let lacks_bridge_acl = !Path::new("/etc/qemu/bridge.conf").exists();
    config.interfaces.retain(|i| match i.kind {
        InterfaceType::Macvtap if lacks_macvtap => {
            notes.push(format!("macvtap ({}): this kernel has no macvtap", i.id));
            false
        }
        InterfaceType::Macvtap => {
            notes.push(format!(
                "macvtap ({}): not started here (the test passes no fds)",
                i.id
            ));
            false
        }
        InterfaceType::Bridge if lacks_bridge_acl => {
            notes.push(format!(
                "bridge ({}): qemu-bridge-helper allows no bridge (no /etc/qemu/bridge.conf)",
                i.id
            ));
            false
        }
        _ => true,
    });
    // The fixture author's paths, made here (not exceptions).
    for (i, share) in config.shares.iter_mut().enumerate() {
        let dir = work.join(format!("share{i}"));
        std::fs::create_dir_all(&dir).expect("share dir");
        share.source = dir.display().to_string();
    }
    for (i, v) in config.volumes.iter_mut().enumerate() {
        let file = work.join(format!("vol{i}.{}", v.image_type.name()));
        make_image(&file, v.image_type.name());
        v.image = file.display().to_string();
    }
    for (i, (_, path)) in config.credential_files.iter_mut().enumerate() {
        let file = work.join(format!("cred{i}"));
        std::fs::write(&file, "secret").expect("credential");
        *path = file;
    }
    if let Some(user) = config.user.clone() {
        if !user_exists(&user) {
            notes.push(format!("user {user:?} does not exist here: runs as nobody"));
            config.user = Some("nobody".into());
        }
    }
    notes
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .is_ok_and(|p| p.lines().any(|l| l.split(':').next() == Some(name)))
}

pub fn make_image(path: &Path, format: &str) {
    let format = if format == "vhd" { "vpc" } else { format };
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", format])
        .arg(path)
        .arg("16M")
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img create {}", path.display());
}

/// Starts the plan's helpers (virtiofsd) and waits for their sockets.
pub fn start_helpers(inv: &Invocation, work: &Path) -> Vec<Child> {
    let mut children = Vec::new();
    for h in &inv.helpers {
        let log = work.join(format!("helper-{}.log", h.name));
        let mut child = Command::new(&h.program)
            .args(&h.args)
            .current_dir(work)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("helper log"))
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "helper {} ({}): {e} (scripts/install-virtiofsd.sh installs virtiofsd under target/tools/bin)",
                    h.name, h.program
                )
            });
        if let Some(socket) = &h.socket {
            let path = work.join(socket);
            let up = wait_for(Duration::from_secs(20), || path.exists());
            // virtiofsd creates its socket before it checks its options.
            std::thread::sleep(Duration::from_millis(300));
            let alive = matches!(child.try_wait(), Ok(None));
            assert!(
                up && alive,
                "helper {} {:?} did not come up: {}",
                h.name,
                h.args,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        children.push(child);
    }
    children
}
