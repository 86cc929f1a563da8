//! MicroVMs across hosts (docs/cluster.md), with real qemu (TCG) guests:
//! `microvm snapshot` + `start --from-snapshot` on one host, `microvm migrate` between two
//! "hosts" (two network namespaces joined by a veth pair, each with its own state
//! directory; the store and the volume image are shared storage both see), and qemu's
//! image lock refusing a second writer.
//!
//! The guest boots microvm's own kernel with the service tests' busybox root: its rcS
//! appends `booted` to `/data/boots`, its shutdown script writes `clean` to
//! `/data/shutdown`, and a counter ([`COUNTER`]) appends a number and the guest's uptime
//! to `/data/counter` every 100 ms. One `booted` line after restore/migration, a counter
//! without a gap whose uptime keeps growing, and a clean stop on the far side = the guest
//! never rebooted and its volume kept working. Prerequisites as in tests/service.rs, and
//! the microvm kernel (scripts/build-test-kernel.sh); the ssh moves need openssh.

mod service_harness;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use service_harness::netns::{veth, Netns};
use service_harness::*;

/// The guest's counter (`/bin/counter`, started by rcS): every 100 ms the next number and
/// the guest's uptime, appended to `/data/counter` and synced, then `counter N synced` on
/// the console. A boot appends `boot` and goes on from the last number on the volume.
const COUNTER: &str = r#"#!/bin/sh
n=$(grep -v boot /data/counter 2>/dev/null | tail -n 1 | cut -d' ' -f1)
case "$n" in '' | *[!0-9]*) n=0 ;; esac
echo boot >> /data/counter
while :; do
	n=$((n + 1))
	read -r up _ < /proc/uptime
	echo "$n $up" >> /data/counter
	sync
	echo "counter $n synced"
	sleep 0.1
done
"#;

/// The service tests' root with [`COUNTER`] (built once).
fn counter_root() -> &'static PathBuf {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dest = work_dir().join("root-counter-v1");
        if dest.join("bin/counter").is_file() {
            return dest;
        }
        let tmp = work_dir().join(format!("root-counter.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let base = root().to_str().expect("utf-8 path");
        assert!(sh(&["cp", "-a", base, tmp.to_str().expect("utf-8 path")])
            .status
            .success());
        let exe = |rel: &str, text: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let p = tmp.join(rel);
            let _ = fs::remove_file(&p);
            fs::write(&p, text).expect("script");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        exe("bin/counter", COUNTER);
        exe(
            "etc/init.d/rcS",
            "#!/bin/sh\necho booted >> /data/boots\nsync\necho 'svc: guest up'\n/bin/counter &\n",
        );
        exe(
            "etc/init.d/shutdown",
            "#!/bin/sh\npkill -f /bin/counter\nsleep 0.2\necho clean > /data/shutdown\nsync\numount /data 2>/dev/null\necho 'svc: clean shutdown'\n",
        );
        if fs::rename(&tmp, &dest).is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        dest
    })
}

/// A VM with the microvm kernel and the counter root; `None` when the kernel is missing.
fn fast_vm(test: &str, name: &str) -> Option<Vm> {
    let kernel = microvm_kernel(test)?;
    Some(Vm::with_guest(name, &kernel, counter_root(), "", ""))
}

/// What `/data/counter` says, checked: within a boot the numbers are consecutive and the
/// guest's uptime grows; a boot goes on from the last number.
#[derive(Debug, Default)]
struct Counter {
    boots: usize,
    last: u64,
    /// The longest step of the guest's uptime between two entries, in seconds.
    max_step: f64,
}

fn counter(vm: &Vm) -> Counter {
    let text = vm.volume_file("/counter").unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let mut c = Counter::default();
    let mut up: Option<f64> = None;
    for (i, line) in lines.iter().enumerate() {
        if *line == "boot" {
            c.boots += 1;
            up = None;
            continue;
        }
        let parsed = line
            .split_once(' ')
            .and_then(|(n, u)| Some((n.parse::<u64>().ok()?, u.parse::<f64>().ok()?)));
        let Some((n, u)) = parsed else {
            // The last line can be caught half-written on a live volume.
            assert_eq!(i + 1, lines.len(), "bad counter line {line:?}\n{text}");
            break;
        };
        assert_eq!(n, c.last + 1, "a gap in the counter at {line:?}");
        if let Some(prev) = up {
            assert!(
                u > prev,
                "the guest's uptime went back at {line:?} (a reboot?)"
            );
            c.max_step = c.max_step.max(u - prev);
        }
        up = Some(u);
        c.last = n;
    }
    c
}

/// Waits until the guest's counter passes `n` (it runs and writes its volume).
fn counter_passes(vm: &Vm, n: u64) -> u64 {
    let mut last = 0;
    let ok = wait_for("the guest's counter", Duration::from_secs(60), || {
        last = counter(vm).last;
        last > n
    });
    assert!(ok, "the counter stopped at {last}\n{}", vm.logs());
    last
}

/// sshd in a test namespace (keys and configuration by tests/cluster/ssh-keys.sh).
struct Sshd {
    keys: PathBuf,
    child: Child,
}

impl Sshd {
    /// Writes the keys into `keys` for `hosts` (NAME=ADDR) and starts sshd in `netns` on
    /// `addr`.
    fn start(keys: &Path, hosts: &[&str], netns: &str, addr: &str) -> Sshd {
        let script = workspace().join("crates/cli/tests/cluster/ssh-keys.sh");
        let out = Command::new("bash")
            .arg(script)
            .arg(keys)
            .args(hosts)
            .output()
            .expect("ssh-keys.sh");
        assert!(
            out.status.success(),
            "ssh-keys.sh: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Where sshd's privilege separation chroots (its package creates it at boot).
        fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(keys.join("sshd_config"))
            .args(["-o", &format!("ListenAddress={addr}")])
            .stdin(Stdio::null())
            .spawn()
            .expect("sshd");
        let listening = wait_for("sshd", Duration::from_secs(20), || {
            let out = sh(&["ip", "netns", "exec", netns, "ss", "-Hltn", "sport = :22"]);
            !String::from_utf8_lossy(&out.stdout).trim().is_empty()
        });
        assert!(listening, "sshd does not listen in {netns}");
        Sshd {
            keys: keys.to_path_buf(),
            child,
        }
    }

    fn config(&self) -> String {
        self.keys
            .join("config")
            .to_str()
            .expect("utf-8")
            .to_string()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether openssh (client and server) is installed; else why the test is skipped.
fn require_ssh(test: &str) -> Option<()> {
    if Path::new("/usr/sbin/sshd").is_file()
        && find("ssh").is_some()
        && find("ssh-keygen").is_some()
    {
        return Some(());
    }
    let why = "openssh-server or openssh-client is not installed (scripts/setup-host.sh)";
    if std::env::var_os("CI").is_some() {
        panic!("{test}: {why}");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

/// A second "host": its own state directory (the VM's `current` points at the same
/// store path, its `data.img` at the first host's image: shared storage) and netns.
struct Peer {
    netns: Netns,
    state: tempfile::TempDir,
    name: String,
}

impl Peer {
    fn new(vm: &Vm, tag: &str) -> Peer {
        let state = tempfile::Builder::new()
            .prefix("i13-peer-")
            .tempdir_in(work_dir())
            .expect("tempdir");
        let dir = state.path().join(&vm.name);
        fs::create_dir_all(&dir).expect("vm dir");
        let runner = fs::read_link(vm.vmdir().join("current")).expect("current");
        std::os::unix::fs::symlink(runner, dir.join("current")).expect("current");
        std::os::unix::fs::symlink(vm.vmdir().join("data.img"), dir.join("data.img"))
            .expect("shared volume");
        let netns = Netns::new(format!("mvt-{}-{tag}", std::process::id()));
        Peer {
            state,
            netns,
            name: vm.name.clone(),
        }
    }

    fn microvm(&self, args: &[&str]) -> Output {
        microvm_in("[peer] ", &self.netns, self.state.path(), args)
    }

    fn log(&self) -> String {
        let d: PathBuf = self.state.path().join(&self.name);
        fs::read_to_string(d.join("supervisor.log")).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.microvm(&["stop", &self.name, "--timeout", "5"]);
        // Then the namespace goes (`Netns`), with what is left in it.
    }
}

fn state_of(out: &Output) -> String {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["status"]["state"].as_str().unwrap_or("").to_string()
}

/// Cold boot → snapshot (the VM stops) → start from the snapshot (the guest resumes, no
/// second boot) → graceful stop still works and reaches the volume.
#[test]
fn snapshot_then_restore_resumes_the_guest_without_a_reboot() {
    let test = "snapshot_then_restore_resumes_the_guest_without_a_reboot";
    if require(test, false).is_none() {
        return;
    }
    let Some(vm) = fast_vm(test, "i13-snap") else {
        return;
    };
    let t = Instant::now();
    vm.start();
    let cold = t.elapsed();
    let before = counter_passes(&vm, 5);
    let snap = vm.dir.path().join("vm.snapshot");
    let out = vm.microvm(&[
        "snapshot",
        &vm.name,
        snap.to_str().expect("utf-8 path"),
        "--json",
    ]);
    assert!(out.status.success(), "snapshot\n{}", vm.logs());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["action"], "saved");
    assert!(fs::metadata(&snap).expect("snapshot file").len() > 1024);
    assert_ne!(vm.status_json()["status"]["state"], "running");

    // Relative paths (the state directory, the snapshot) as a user types them: the
    // detached supervisor runs in the VM's directory, microvm makes them absolute first.
    let t = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &vm.netns])
        .arg(bin())
        .args(["--state-dir", "state", "start", &vm.name])
        .args(["--from-snapshot", "vm.snapshot"])
        .current_dir(vm.dir.path())
        .env("PATH", path_var())
        .env("MICROVM_SERVICE_MANAGER", "own")
        .stdin(Stdio::null())
        .output()
        .expect("microvm");
    let restore = t.elapsed();
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "restore\n{}", vm.logs());
    assert_eq!(vm.status_json()["status"]["state"], "running");
    // Ready as restored (the guest was ready when it was saved); the save is no power-off.
    assert!(vm.run_record()["ready"].is_u64(), "{}", vm.run_record());
    let log = vm.logs();
    assert!(log.contains("ended: the VM was saved to "), "{log}");
    assert!(!log.contains("powered off"), "{log}");
    counter_passes(&vm, before + 5);
    eprintln!(
        "MEASURED cold boot to ready {:.2} s, restore from snapshot {:.2} s ({:.2}x)",
        cold.as_secs_f64(),
        restore.as_secs_f64(),
        restore.as_secs_f64() / cold.as_secs_f64()
    );
    // A snapshot onto an existing file is refused (nothing is overwritten).
    let again = vm.microvm(&["snapshot", &vm.name, snap.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        !again.status.success() && err.contains("cannot create"),
        "{err}"
    );
    let out = vm.microvm(&["stop", &vm.name]);
    assert!(out.status.success(), "stop\n{}", vm.logs());
    assert_eq!(vm.volume_file("/shutdown").as_deref(), Some("clean"));
    assert_eq!(
        vm.volume_file("/boots").as_deref(),
        Some("booted"),
        "the guest booted once, the restore resumed it\n{}",
        vm.logs()
    );
    assert_eq!(counter(&vm).boots, 1, "one boot, the counter went on");
}

/// Refusals that need no guest: a missing snapshot file, a bad target, a VM that is not
/// running.
#[test]
fn snapshot_and_migrate_refuse_clearly() {
    let test = "snapshot_and_migrate_refuse_clearly";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::new(test, "i13-refuse", "");
    let missing = vm.dir.path().join("none.snapshot");
    let out = vm.microvm(&[
        "start",
        &vm.name,
        "--from-snapshot",
        missing.to_str().expect("utf-8 path"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot open the snapshot"),
        "{err}"
    );
    let out = vm.microvm(&["migrate", &vm.name, "--to", "nohost"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not a migration target"),
        "{err}"
    );
    let out = vm.microvm(&["snapshot", &vm.name, missing.to_str().expect("utf-8 path")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not running"),
        "{err}"
    );
    let out = vm.microvm(&["start", &vm.name, "--incoming", "exec:sh"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("not an incoming source"),
        "{err}"
    );
    // An incoming stream that ends before a guest came (stdin is empty here): the target
    // fails, and is not booted cold instead (its guest may still run at the source).
    let out = vm.microvm(&["start", &vm.name, "--incoming", "stdin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("did not resume"),
        "{err}\n{}",
        vm.logs()
    );
    let status = vm.status_json();
    assert_eq!(status["status"]["state"], "failed", "{status}");
    let log = vm.logs();
    assert!(!log.contains("restarting in"), "{log}");
    assert_eq!(vm.volume_file("/boots"), None, "never booted");
}

/// What cannot migrate is refused before anything starts: a virtiofs share (qemu 10's
/// vhost-user-fs-device has no migration support). Other hypervisors cannot be built
/// on this host without KVM; their refusal is a unit test in microvm-host's migrate.rs.
#[test]
fn restore_is_refused_for_a_virtiofs_share() {
    let test = "restore_is_refused_for_a_virtiofs_share";
    if require(test, false).is_none() {
        return;
    }
    let share = work_dir().join("i13-share");
    fs::create_dir_all(&share).expect("share dir");
    let cases = [
        (
            "i13-fs",
            String::new(),
            format!("\n[[shares]]\nproto = \"virtiofs\"\ntag = \"i13share\"\nsource = {share:?}\nmountPoint = \"/share\"\n"),
            "virtiofs share i13share cannot migrate",
        ),
    ];
    for (name, top, tables, expect) in cases {
        let vm = Vm::with_top(test, name, &top, &tables);
        let snap = vm.dir.path().join("some.snapshot");
        fs::write(&snap, b"x").expect("file");
        let snap = snap.to_str().expect("utf-8 path");
        let out = vm.microvm(&["start", &vm.name, "--from-snapshot", snap]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{name}: {err}"
        );
        assert!(vm.microvm(&["status", &vm.name, "--json"]).status.success());
        assert_ne!(vm.status_json()["status"]["state"], "running");
    }
    let _ = fs::remove_dir(&share);
}

/// Host A runs the VM; host B (shared store and volume) cannot start it too (qemu's
/// image lock); B waits with `--incoming`, A migrates over TCP between the namespaces;
/// then B moves it back over ssh (`--to ssh://a`: A's sshd runs A's incoming start). Two
/// tries fail first and leave it running on B: a target that cannot start, and one whose
/// runner does not match (its qemu refuses the stream). The guest never reboots, and its
/// counter goes on without a gap.
#[test]
fn migrate_between_two_hosts_and_refuse_a_second_writer() {
    let test = "migrate_between_two_hosts_and_refuse_a_second_writer";
    if require(test, false).is_none() || require_ssh(test).is_none() {
        return;
    }
    let Some(vm) = fast_vm(test, "i13-mig") else {
        return;
    };
    let peer = Peer::new(&vm, "i13b");
    // veth between the two hosts' namespaces.
    let (a, b) = ("i13va", "i13vb");
    veth(
        &vm.netns,
        a,
        "10.213.0.1/24",
        &peer.netns,
        b,
        "10.213.0.2/24",
    );
    let sshd = Sshd::start(
        &vm.dir.path().join("ssh"),
        &["hosta=10.213.0.1"],
        &vm.netns,
        "10.213.0.1",
    );
    vm.start();
    let before = counter_passes(&vm, 3);

    // Never two writers: B's qemu cannot take the image's write lock.
    let out = peer.microvm(&["start", &vm.name]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second writer started\n{}",
        peer.log()
    );
    assert!(err.contains("lock"), "the refusal names the lock: {err}");
    assert_eq!(
        state_of(&vm.microvm(&["status", &vm.name, "--json"])),
        "running"
    );

    let out = peer.microvm(&["start", &vm.name, "--incoming", "tcp:10.213.0.2:4713"]);
    assert!(out.status.success(), "incoming\n{}", peer.log());
    let t = Instant::now();
    let out = vm.microvm(&["migrate", &vm.name, "--to", "10.213.0.2:4713", "--json"]);
    assert!(
        out.status.success(),
        "migrate\n{}\n{}",
        vm.logs(),
        peer.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!(
        "MEASURED tcp migration of a 256 MiB guest: total {} ms, downtime {} ms (command {:.2} s)",
        report["migration"]["totalMs"],
        report["migration"]["downtimeMs"],
        t.elapsed().as_secs_f64()
    );
    assert_eq!(report["action"], "migrated");
    assert_ne!(
        state_of(&vm.microvm(&["status", &vm.name, "--json"])),
        "running"
    );
    assert_eq!(
        state_of(&peer.microvm(&["status", &vm.name, "--json"])),
        "running"
    );
    assert!(vm
        .logs()
        .contains("ended: the VM was migrated to tcp:10.213.0.2:4713"));
    let moved = counter_passes(&vm, before + 3);

    // Back to A over ssh. A target that cannot start the VM: it stays on B, running.
    let state_a = vm.state();
    let state_a = state_a.to_str().expect("utf-8 path");
    let config = sshd.config();
    let ssh_args = |binary: &str| {
        [
            "migrate",
            vm.name.as_str(),
            "--to",
            "ssh://hosta",
            "--ssh-config",
            config.as_str(),
            "--remote-state-dir",
            state_a,
            "--remote-binary",
            binary,
            "--json",
        ]
        .map(str::to_string)
    };
    let bad = ssh_args("/nonexistent/microvm");
    let out = peer.microvm(&bad.each_ref().map(String::as_str));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("did not take the VM over"),
        "{err}"
    );
    assert_eq!(
        state_of(&peer.microvm(&["status", &vm.name, "--json"])),
        "running"
    );
    let moved = counter_passes(&vm, moved + 3);
    // A target whose runner does not match (128 MiB instead of 256): its qemu refuses
    // the stream, and the guest goes on on B.
    let current = vm.vmdir().join("current");
    let runner = fs::read_link(&current).expect("current");
    let def = fs::read_to_string(vm.dir.path().join("vm.toml")).expect("vm.toml");
    let small = vm.dir.path().join("vm-128.toml");
    fs::write(&small, def.replace("mem = 256", "mem = 128")).expect("vm-128.toml");
    let out = sh(&[
        bin().to_str().expect("utf-8 path"),
        "build",
        small.to_str().expect("utf-8 path"),
        "--store",
        work_dir().join("store").to_str().expect("utf-8 path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let other = String::from_utf8_lossy(&out.stdout).trim().to_string();
    fs::remove_file(&current).expect("current");
    std::os::unix::fs::symlink(&other, &current).expect("current");
    let out = peer.microvm(&good_args(&ssh_args).each_ref().map(String::as_str));
    let err = String::from_utf8_lossy(&out.stderr);
    fs::remove_file(&current).expect("current");
    std::os::unix::fs::symlink(&runner, &current).expect("current");
    assert!(
        !out.status.success() && err.contains("did not take the VM over"),
        "{err}\n{}",
        vm.logs()
    );
    assert_eq!(
        state_of(&peer.microvm(&["status", &vm.name, "--json"])),
        "running"
    );
    assert_ne!(
        state_of(&vm.microvm(&["status", &vm.name, "--json"])),
        "running",
        "{}",
        vm.logs()
    );
    assert!(!vm.logs().contains("restarting in"), "{}", vm.logs());
    let moved = counter_passes(&vm, moved + 3);
    let good = good_args(&ssh_args);
    let t = Instant::now();
    let out = peer.microvm(&good.each_ref().map(String::as_str));
    assert!(
        out.status.success(),
        "ssh migrate\n{}\n{}",
        vm.logs(),
        peer.log()
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    eprintln!(
        "MEASURED ssh migration of a 256 MiB guest: total {} ms, downtime {} ms (command {:.2} s, until the guest runs on the target)",
        report["migration"]["totalMs"],
        report["migration"]["downtimeMs"],
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        state_of(&vm.microvm(&["status", &vm.name, "--json"])),
        "running"
    );
    assert!(vm.run_record()["ready"].is_u64(), "{}", vm.run_record());
    assert_ne!(
        state_of(&peer.microvm(&["status", &vm.name, "--json"])),
        "running"
    );
    let log = peer.log();
    assert!(
        log.contains("ended: the VM was migrated to ssh://hosta"),
        "{log}"
    );
    assert!(!log.contains("powered off"), "{log}");
    counter_passes(&vm, moved + 5);

    let out = vm.microvm(&["stop", &vm.name]);
    assert!(out.status.success(), "stop on A\n{}", vm.logs());
    assert_eq!(vm.volume_file("/shutdown").as_deref(), Some("clean"));
    assert_eq!(vm.volume_file("/boots").as_deref(), Some("booted"));
    let c = counter(&vm);
    assert_eq!(c.boots, 1, "one boot across three moves");
    eprintln!(
        "MEASURED the guest's counter across two migrations: {} entries, no gap, longest uptime step {:.2} s",
        c.last, c.max_step
    );
}

/// The arguments of an ssh migration with this test binary on the target.
fn good_args(ssh_args: &impl Fn(&str) -> [String; 11]) -> [String; 11] {
    ssh_args(bin().to_str().expect("utf-8 path"))
}

/// Runs the OCF agent (scripts/ocf/microvm-vm) as Pacemaker would, with `OCF_RESKEY_*`
/// parameters, inside the VM's namespace; returns its exit code and stdout.
fn agent(vm: &Vm, action: &str, params: &[(&str, &str)]) -> (i32, String) {
    let script = workspace().join("scripts/ocf/microvm-vm");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &vm.netns])
        .arg(&script)
        .arg(action)
        .env("PATH", path_var())
        .env("MICROVM_SERVICE_MANAGER", "own")
        .env("OCF_RESKEY_name", &vm.name)
        .env("OCF_RESKEY_state_dir", vm.state())
        .env("OCF_RESKEY_binary", bin())
        .env("OCF_RESKEY_snapshot_dir", vm.dir.path())
        .stdin(Stdio::null());
    for (k, v) in params {
        cmd.env(format!("OCF_RESKEY_{k}"), v);
    }
    let out = cmd.output().expect("agent");
    let code = out.status.code().unwrap_or(-1);
    eprintln!(
        "$ ocf:microvm:vm {action} {params:?} → {code}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (code, String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The resource agent's actions on a real VM: meta-data and validation, start/monitor
/// (ready), migrate_to with the snapshot transport (snapshot on the shared directory; the
/// VM stops), the no-op stop that follows a migration, migrate_from (resumed, no reboot),
/// stop. The ssh transport runs in the Pacemaker test, between nodes.
#[test]
fn ocf_agent_runs_starts_migrates_and_stops_a_vm() {
    let test = "ocf_agent_runs_starts_migrates_and_stops_a_vm";
    if require(test, false).is_none() {
        return;
    }
    let Some(vm) = fast_vm(test, "i13-ocf") else {
        return;
    };
    let snapshot = [("migration_transport", "snapshot")];
    let (code, xml) = agent(&vm, "meta-data", &[]);
    assert_eq!(code, 0);
    assert!(xml.contains("<resource-agent name=\"vm\"") && xml.contains("migrate_from"));
    assert_eq!(agent(&vm, "validate-all", &[]).0, 0);
    assert_eq!(agent(&vm, "validate-all", &[("name", "")]).0, 6);
    assert_eq!(
        agent(&vm, "validate-all", &[("migration_transport", "nfs")]).0,
        6
    );
    assert_eq!(
        agent(&vm, "validate-all", &[("binary", "/nonexistent/microvm")]).0,
        5
    );
    assert_eq!(agent(&vm, "frobnicate", &[]).0, 3);

    assert_eq!(agent(&vm, "monitor", &[]).0, 7, "not running yet");
    assert_eq!(agent(&vm, "start", &[]).0, 0, "{}", vm.logs());
    assert_eq!(agent(&vm, "monitor", &[]).0, 0);
    assert_eq!(agent(&vm, "start", &[]).0, 0, "start is idempotent");
    assert_eq!(agent(&vm, "migrate_to", &snapshot).0, 0, "{}", vm.logs());
    assert_eq!(agent(&vm, "monitor", &[]).0, 7, "stopped after migrate_to");
    assert_eq!(
        agent(&vm, "stop", &[]).0,
        0,
        "stop after a migration is a no-op"
    );
    assert_eq!(agent(&vm, "migrate_from", &snapshot).0, 0, "{}", vm.logs());
    assert_eq!(agent(&vm, "monitor", &[]).0, 0);
    assert!(
        !vm.dir.path().join("i13-ocf.snapshot").exists(),
        "the snapshot is consumed"
    );
    assert_eq!(agent(&vm, "stop", &[]).0, 0, "{}", vm.logs());
    assert_eq!(agent(&vm, "monitor", &[]).0, 7);
    assert_eq!(agent(&vm, "stop", &[]).0, 0, "stop is idempotent");
    assert_eq!(vm.volume_file("/shutdown").as_deref(), Some("clean"));
    assert_eq!(vm.volume_file("/boots").as_deref(), Some("booted"));
}

/// A 3-node Pacemaker/Corosync cluster in namespaces (tests/cluster/pacemaker.sh) with
/// the VM as an `ocf:microvm:vm` resource: it starts and is ready, a second node's start
/// is refused by the image lock, `crm resource move` live-migrates it over ssh (one boot,
/// the guest's counter goes on without a gap, its uptime grows), and after `kill -9` of
/// every process of its node it is ready on another node with every number the killed
/// guest had synced on its volume.
#[test]
fn pacemaker_cluster_moves_and_fails_over_the_vm() {
    let test = "pacemaker_cluster_moves_and_fails_over_the_vm";
    if require(test, false).is_none() {
        return;
    }
    let missing: Vec<&str> = [
        "corosync",
        "pacemakerd",
        "crm",
        "crm_resource",
        "nsenter",
        "unshare",
    ]
    .into_iter()
    .filter(|p| find(p).is_none())
    .collect();
    if !missing.is_empty() || !Path::new("/usr/lib/ocf/resource.d").is_dir() {
        let why = format!("pacemaker, corosync, crmsh or resource-agents missing ({missing:?})");
        if std::env::var_os("CI").is_some() {
            panic!("{test}: {why}");
        }
        eprintln!("SKIPPED {test}: {why}");
        return;
    }
    if require_ssh(test).is_none() {
        return;
    }
    let Some(vm) = fast_vm(test, "i13-pcmk") else {
        return;
    };
    vm.start(); // creates the volume image the nodes share
    assert!(vm.microvm(&["stop", &vm.name]).status.success());
    let runner = fs::read_link(vm.vmdir().join("current")).expect("current");
    let work = vm.dir.path().join("cluster");
    fs::create_dir_all(&work).expect("work dir");
    let out = Command::new("bash")
        .arg(workspace().join("crates/cli/tests/cluster/pacemaker.sh"))
        .env("PATH", path_var())
        .env("MICROVM", bin())
        .env("AGENT", workspace().join("scripts/ocf/microvm-vm"))
        .env("RUNNER", &runner)
        .env("IMAGE", vm.vmdir().join("data.img"))
        .env("VM", &vm.name)
        .env("WORK", &work)
        .env("TAG", format!("i13p{}", std::process::id() % 10000))
        .stdin(Stdio::null())
        .output()
        .expect("pacemaker.sh");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert!(
        out.status.success() && err.contains("[cluster] PASS"),
        "cluster test failed"
    );
}
