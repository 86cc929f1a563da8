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

mod service_harness;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use service_harness::*;

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
    for name in [
        "microvm@.service",
        "microvms.target",
        "microvm-network@.service",
    ] {
        let got = fs::read_to_string(dir.path().join("units").join(name)).expect("unit");
        let got = got
            .replace(&exe.display().to_string(), "/usr/local/bin/microvm")
            .replace(&state.display().to_string(), "/var/lib/microvms");
        let want = fs::read_to_string(golden.join(name)).expect("golden");
        assert_eq!(got, want, "{name}");
    }
}

/// The sockets of the VM directory and their modes (`name mode uid`).
fn sockets_of(dir: &Path) -> Vec<(String, u32, u32)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut out: Vec<_> = fs::read_dir(dir)
        .map(|d| d.flatten().collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| {
            let m = fs::symlink_metadata(e.path()).ok()?;
            m.file_type().is_socket().then(|| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    m.mode() & 0o777,
                    m.uid(),
                )
            })
        })
        .collect();
    out.sort();
    out
}

/// Fault matrix (issue 10): `kill -9` of the supervisor. Its hypervisor dies with it
/// (PDEATHSIG); the next `status` recognises the dead supervisor and cleans up after it:
/// no process, tap, socket, `booted` or `supervisor.pid` is left, the state is `failed`;
/// `stop` then has nothing to do and `start` works again. While it ran, its console and
/// control sockets were for root only (attack 5).
#[test]
fn service_supervisor_killed_is_recovered_by_the_next_command() {
    let test = "service_supervisor_killed_is_recovered_by_the_next_command";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::new(
        test,
        "svc-k",
        &tap_tables("vm-svck", "02:00:00:00:5c:01", "10.77.4.2"),
    );
    vm.start();
    let sockets = sockets_of(&vm.vmdir());
    assert!(
        sockets.iter().any(|(n, _, _)| n == "console.sock"),
        "{sockets:?}"
    );
    for (name, mode, _) in &sockets {
        assert_eq!(mode & 0o077, 0, "{name} is open to others: {sockets:?}");
    }
    let st = vm.status_json();
    let sup = st["status"]["supervisorPid"]
        .as_u64()
        .or_else(|| vm.run_record()["supervisorPid"].as_u64())
        .expect("supervisor pid");
    let hv = vm.run_record()["hypervisorPid"].as_u64().expect("pid");
    assert!(vm.links().contains("vm-svck"));
    assert!(sh(&["kill", "-9", &sup.to_string()]).status.success());
    assert!(
        wait_for(
            "the hypervisor to die with it",
            Duration::from_secs(20),
            || { !alive(hv) }
        ),
        "hypervisor {hv} outlived its supervisor"
    );

    let out = vm.microvm(&["status", "svc-k"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("its supervisor (pid") && stderr.contains("cleaned up"),
        "{stderr}"
    );
    assert!(
        stderr.contains("interfaces vm-svck"),
        "the tap was recorded and removed: {stderr}"
    );
    let st = vm.status_json();
    assert_eq!(st["status"]["state"], "failed", "{st}");
    assert!(!vm.links().contains("vm-svck"), "tap left: {}", vm.links());
    for left in ["booted", "supervisor.pid"] {
        assert!(
            fs::symlink_metadata(vm.vmdir().join(left)).is_err(),
            "{left} left behind"
        );
    }
    assert_eq!(sockets_of(&vm.vmdir()), [], "sockets left behind");
    assert!(no_process_mentions("microvm@svc-k"));
    let tmp: Vec<_> = fs::read_dir(vm.vmdir())
        .expect("ls")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(tmp.is_empty(), "temporary files left: {tmp:?}");

    // Nothing left to stop; the VM starts again.
    let out = vm.microvm(&["stop", "svc-k"]);
    assert!(out.status.success());
    assert!(!String::from_utf8_lossy(&out.stderr).contains("cleaned up"));
    vm.start();
    assert_eq!(vm.status_json()["status"]["state"], "running");
    assert!(vm.microvm(&["stop", "svc-k"]).status.success());
    assert!(no_process_mentions("microvm@svc-k"));
}

/// Fault matrix (issue 10): the data volume after 5 graceful stop/start cycles and after a
/// hard kill. The guest appends a line to `/data/boots` (and syncs) at every boot and
/// writes `/data/shutdown` when it shuts down cleanly.
#[test]
fn service_volume_data_survives_cycles_and_a_hard_kill() {
    let test = "service_volume_data_survives_cycles_and_a_hard_kill";
    if require(test, false).is_none() {
        return;
    }
    let vm = Vm::new(test, "svc-v", "");
    let boots = |vm: &Vm| {
        vm.volume_file("/boots")
            .map_or(0, |t| t.lines().filter(|l| *l == "booted").count())
    };
    for cycle in 1..=5 {
        vm.start();
        assert!(
            wait_for("the guest's boot line", Duration::from_secs(60), || {
                fs::read_to_string(vm.vmdir().join("console.log"))
                    .is_ok_and(|t| t.matches("svc: guest up").count() >= cycle)
            }),
            "{}",
            vm.logs()
        );
        assert!(vm.microvm(&["stop", "svc-v"]).status.success());
        assert_eq!(boots(&vm), cycle, "cycle {cycle}");
        assert_eq!(vm.volume_file("/shutdown").as_deref(), Some("clean"));
    }
    // A hard kill: the supervisor and with it the hypervisor, mid-run.
    vm.start();
    assert!(wait_for(
        "the sixth boot",
        Duration::from_secs(60),
        || boots(&vm) == 6
    ));
    let sup = vm.run_record()["supervisorPid"].as_u64().expect("pid");
    assert!(sh(&["kill", "-9", &sup.to_string()]).status.success());
    let hv = vm.run_record()["hypervisorPid"].as_u64().expect("pid");
    assert!(wait_for(
        "the hypervisor to die",
        Duration::from_secs(20),
        || !alive(hv)
    ));
    vm.start(); // recovers the dead supervisor's leftovers first
    assert!(vm.microvm(&["stop", "svc-v"]).status.success());
    assert_eq!(boots(&vm), 7, "every boot's synced line survived");
    assert!(no_process_mentions("microvm@svc-v"));
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
