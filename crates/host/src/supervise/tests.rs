//! Supervision tests with `sh` scripts as fake hypervisors and helpers, and one real qemu.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use microvm_runner::{
    Capabilities, ControlChannel, GeneratedFile, Helper, HelperKind, Invocation, PreStart, Shutdown,
};
use microvm_spec::types::Hypervisor;

use super::child::{StderrSink, Supervised};
use super::*;

pub(super) fn sh(script: &str) -> Invocation {
    Invocation {
        hypervisor: Hypervisor::Qemu,
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        process_name: None,
        env: vec![],
        files: vec![],
        helpers: vec![],
        pre_start: vec![],
        control_socket: None,
        shutdown: Shutdown::Signal {
            signal: "SIGTERM".into(),
        },
        control_channel: None,
        taps: vec![],
        macvtap_fds: vec![],
        kernel_cmdline: String::new(),
        capabilities: Capabilities {
            can_shutdown: false,
            supports_notify_socket: false,
            tap_multi_queue: false,
            readiness: false,
        },
        warnings: vec![],
    }
}

fn opts(dir: &Path) -> RunOptions {
    let mut o = RunOptions::new(dir);
    o.handle_signals = false;
    o.console = Console::Log(dir.join("console.log"));
    o
}

fn helper(name: &str, script: &str, socket: Option<&str>) -> Helper {
    Helper {
        name: name.into(),
        kind: HelperKind::Virtiofsd { tag: name.into() },
        program: "sh".into(),
        args: vec!["-c".into(), script.into()],
        socket: socket.map(Into::into),
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Requests a stop from another thread after `after`.
fn stop_after(handle: &StopHandle, after: Duration, times: usize) {
    let h = handle.clone();
    std::thread::spawn(move || {
        for _ in 0..times {
            std::thread::sleep(after);
            h.request();
        }
    });
}

#[test]
fn clean_exit_and_files_prestart_env_argv0() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("old.sock"), "").expect("w");
    let mut inv =
        sh("tr '\\0' ' ' < /proc/$$/cmdline > argv; echo \"$FOO\" > env; cat cfg/x.json > copy");
    inv.process_name = Some("microvm@test".into());
    inv.env = vec![("FOO".into(), "bar baz".into())];
    inv.pre_start = vec![PreStart::RemoveFile("old.sock".into())];
    inv.files = vec![GeneratedFile {
        path: "cfg/x.json".into(),
        contents: "{}".into(),
        mode: 0o600,
    }];
    let out = run_foreground(&inv, &opts(dir.path())).expect("run");
    assert!(out.hypervisor_status.success());
    assert_eq!(out.exit_code(), 0);
    assert!(!out.shutdown_requested && !out.forced);
    let read = |f: &str| std::fs::read_to_string(dir.path().join(f)).expect(f);
    assert!(
        read("argv").starts_with("microvm@test -c "),
        "{}",
        read("argv")
    );
    assert_eq!(read("env"), "bar baz\n");
    assert_eq!(read("copy"), "{}");
    assert!(!dir.path().join("old.sock").exists());
}

#[test]
fn failed_start_is_an_error_with_the_stderr_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(dir.path());
    o.console = Console::Inherit;
    let err = run_foreground(&sh("echo 'qemu: could not load kernel' >&2; exit 3"), &o)
        .expect_err("fails");
    let msg = err.to_string();
    assert!(matches!(err, RunError::HypervisorFailed { .. }));
    assert!(msg.contains("sh exited with exit status: 3"), "{msg}");
    assert!(msg.contains("could not load kernel"), "{msg}");
}

#[test]
fn missing_program_names_the_package() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inv = sh("");
    inv.program = "qemu-system-x86_64".into();
    let mut o = opts(dir.path());
    o.path_var = Some(dir.path().as_os_str().to_owned());
    let err = run_foreground(&inv, &o).expect_err("not found");
    assert_eq!(
        err.to_string(),
        "qemu-system-x86_64 not found on PATH; install qemu-system-x86"
    );
}

#[test]
fn guest_exit_status_and_ready_over_hybrid_vsock() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inv = sh("sleep 0.6");
    inv.control_channel = Some(ControlChannel::HybridVsock {
        socket: "v.sock".into(),
        port: 7,
    });
    let sock = dir.path().join("v.sock_7");
    std::thread::spawn(move || {
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(mut s) = UnixStream::connect(&sock) {
                let _ = s.write_all(b"READY 0.25 0.5\nEXIT 7\n");
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let mut seen = Vec::new();
    let out = run_foreground_with(&inv, &opts(dir.path()), |p| seen.push(p.clone())).expect("run");
    assert_eq!(out.guest_exit, Some(7));
    assert_eq!(out.exit_code(), 7);
    assert_eq!(out.guest_init_time, Some((0.25, 0.5)));
    assert!(out
        .ready_after
        .is_some_and(|d| d < Duration::from_millis(600)));
    assert!(
        seen.iter().any(|p| matches!(p, Progress::Ready { .. })),
        "{seen:?}"
    );
    assert!(
        !dir.path().join("v.sock_7").exists(),
        "listener socket removed"
    );
}

#[test]
fn stop_sends_the_configured_signal_and_exits_in_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = sh("trap 'exit 0' TERM; while :; do sleep 0.05; done");
    let o = opts(dir.path());
    stop_after(&o.stop, Duration::from_millis(300), 1);
    let t = Instant::now();
    let out = run_foreground(&inv, &o).expect("run");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(out.shutdown_requested && !out.forced);
    assert_eq!(out.exit_code(), 0);
}

#[test]
fn real_sigterm_is_handled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = sh("trap 'exit 0' TERM; while :; do sleep 0.05; done");
    let mut o = opts(dir.path());
    o.handle_signals = true;
    let t = Instant::now();
    let out = run_foreground_with(&inv, &o, |p| {
        if matches!(p, Progress::HypervisorStarted { .. }) {
            std::thread::spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                // SAFETY: signals our own process, whose SIGTERM handler is registered.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            });
        }
    })
    .expect("run");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(out.shutdown_requested && !out.forced, "{out:?}");
}

#[test]
fn deadline_then_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = sh("trap '' TERM; while :; do sleep 0.05; done");
    let mut o = opts(dir.path());
    o.shutdown_timeout = Duration::from_millis(400);
    stop_after(&o.stop, Duration::from_millis(200), 1);
    let t = Instant::now();
    let out = run_foreground(&inv, &o).expect("run");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(out.forced);
    assert_eq!(out.exit_code(), EXIT_FORCED);
}

#[test]
fn second_stop_forces_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = sh("trap '' TERM; while :; do sleep 0.05; done");
    let o = opts(dir.path()); // 30 s deadline: only the second stop can end it quickly
    stop_after(&o.stop, Duration::from_millis(200), 2);
    let t = Instant::now();
    let out = run_foreground(&inv, &o).expect("run");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(out.forced);
}

#[test]
fn helpers_start_before_and_stop_after_the_hypervisor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inv = sh("test -e fs.sock && echo seen > hv-saw-socket");
    inv.helpers = vec![helper(
        "virtiofsd-fs",
        "sleep 0.2; : > fs.sock; exec sleep 30",
        Some("fs.sock"),
    )];
    let mut pids = Vec::new();
    let out = run_foreground_with(&inv, &opts(dir.path()), |p| {
        if let Progress::HelperStarted { pid, .. } = p {
            pids.push(*pid)
        }
    })
    .expect("run");
    assert_eq!(out.exit_code(), 0);
    assert!(dir.path().join("hv-saw-socket").exists());
    assert_eq!(pids.len(), 1);
    assert!(!alive(pids[0]), "helper stopped");
}

#[test]
fn helper_without_socket_fails_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inv = sh("echo ran > hv-ran");
    inv.helpers = vec![helper(
        "virtiofsd-a",
        "echo 'starting up' >&2; exec sleep 30",
        Some("a.sock"),
    )];
    let mut o = opts(dir.path());
    o.helper_timeout = Duration::from_millis(300);
    let err = run_foreground(&inv, &o).expect_err("times out");
    let msg = err.to_string();
    assert!(matches!(err, RunError::HelperTimeout { .. }), "{msg}");
    assert!(
        msg.contains("virtiofsd-a") && msg.contains("a.sock") && msg.contains("starting up"),
        "{msg}"
    );
    assert!(
        !dir.path().join("hv-ran").exists(),
        "hypervisor never started"
    );

    inv.helpers = vec![helper(
        "virtiofsd-b",
        "echo 'bad --shared-dir' >&2; exit 2",
        Some("b.sock"),
    )];
    let err = run_foreground(&inv, &o).expect_err("exits");
    let msg = err.to_string();
    assert!(
        msg.contains("exited with exit status: 2") && msg.contains("bad --shared-dir"),
        "{msg}"
    );
}

/// PR_SET_PDEATHSIG: a helper whose spawning thread (our process, in production) dies
/// gets SIGTERM.
#[test]
fn helper_dies_with_its_parent() {
    let pid = std::thread::spawn(|| {
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        let child = Supervised::spawn(cmd, "sleep", true, StderrSink::Plain, None).expect("spawn");
        let pid = child.pid;
        std::mem::forget(child); // no cleanup: as if we were killed
        pid
    })
    .join()
    .expect("thread");
    let end = Instant::now() + Duration::from_secs(3);
    let mut status = 0;
    loop {
        // SAFETY: reaping our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            break;
        }
        assert!(Instant::now() < end, "helper outlived its parent");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
}

#[test]
fn kvm_failure_on_stderr_stops_a_paused_qemu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inv = sh(
        "echo 'KVM internal error. Suberror: 1' >&2; echo 'emulation failure' >&2; exec sleep 30",
    );
    let t = Instant::now();
    let err = run_foreground(&inv, &opts(dir.path())).expect_err("kvm failure");
    assert!(matches!(err, RunError::KvmFailed { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn no_ready_within_timeout_stops_the_vm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inv = sh("exec sleep 30");
    inv.control_channel = Some(ControlChannel::VirtioSerial {
        socket: "ctl.sock".into(),
        port: "microvm".into(),
    });
    let mut o = opts(dir.path());
    o.ready_timeout = Some(Duration::from_millis(400));
    let t = Instant::now();
    let err = run_foreground(&inv, &o).expect_err("not ready");
    assert!(matches!(err, RunError::NotReady { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn console_log_collects_stdout_and_stderr() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out =
        run_foreground(&sh("echo to-stdout; echo to-stderr >&2"), &opts(dir.path())).expect("run");
    assert_eq!(out.exit_code(), 0);
    let log = std::fs::read_to_string(dir.path().join("console.log")).expect("log");
    assert!(
        log.contains("to-stdout") && log.contains("to-stderr"),
        "{log}"
    );
}

fn qemu_available() -> bool {
    let ok = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("skipped: qemu-system-x86_64 not found on PATH");
    }
    ok
}

fn firmware_qemu(command: &str) -> Invocation {
    let mut inv = sh("");
    inv.program = "qemu-system-x86_64".into();
    inv.args = [
        "-accel",
        "tcg",
        "-M",
        "microvm,pic=off,pit=off",
        "-m",
        "64",
        "-nodefaults",
    ]
    .into_iter()
    .chain(["-no-user-config", "-display", "none", "-serial", "stdio"])
    .chain(["-qmp", "unix:qmp.sock,server=on,wait=off"])
    .map(String::from)
    .collect();
    inv.control_socket = Some("qmp.sock".into());
    inv.shutdown = Shutdown::Qmp {
        socket: "qmp.sock".into(),
        command: command.into(),
    };
    inv
}

/// A real qemu sitting in firmware: a QMP `quit` shutdown ends it cleanly, and the
/// socket it served is removed.
#[test]
fn real_qemu_qmp_quit() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(dir.path());
    stop_after(&o.stop, Duration::from_millis(700), 1);
    let t = Instant::now();
    let out = run_foreground(&firmware_qemu("quit"), &o).expect("run qemu");
    eprintln!("qemu quit via QMP after {:?}: {out:?}", t.elapsed());
    assert!(out.shutdown_requested && !out.forced);
    assert!(out.hypervisor_status.success());
    assert!(!dir.path().join("qmp.sock").exists());
}

/// `system_powerdown` without a guest to handle it: the deadline kills qemu.
#[test]
fn real_qemu_powerdown_without_guest_hits_the_deadline() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut o = opts(dir.path());
    o.shutdown_timeout = Duration::from_millis(1000);
    stop_after(&o.stop, Duration::from_millis(700), 1);
    let mut seen = Vec::new();
    let out = run_foreground_with(&firmware_qemu("system_powerdown"), &o, |p| {
        seen.push(p.clone())
    })
    .expect("run qemu");
    assert!(out.forced, "{seen:?}");
    assert!(
        !seen
            .iter()
            .any(|p| matches!(p, Progress::ShutdownFallback { .. })),
        "{seen:?}"
    );
    assert_eq!(out.exit_code(), EXIT_FORCED);
}

/// Where KVM is broken (`kvm::probe` says unusable), booting a real kernel with
/// `-accel kvm` makes qemu print "KVM internal error" and pause; the supervisor must
/// stop it with [`RunError::KvmFailed`] instead of hanging. Needs a kernel: the cloud
/// kernel package in `MICROVM_TEST_KERNELS` (as scripts/test.sh sets it).
#[test]
fn real_qemu_with_broken_kvm_fails_fast() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(kernel) = test_kernel_image(dir.path()) else {
        return;
    };
    let probe = crate::kvm::probe();
    if probe.status.is_usable() {
        eprintln!("skipped: KVM works on this host, the failure path cannot be exercised");
        return;
    }
    let mut inv = firmware_qemu("quit");
    inv.args[1] = "kvm".into();
    // With 256 MiB the kvm_pvm host reports "KVM internal error" and pauses; with 64 MiB
    // the same kernel stalls silently (only `ready_timeout` catches that).
    inv.args[5] = "256".into();
    inv.args
        .extend(["-kernel".into(), kernel.display().to_string()]);
    inv.args
        .extend(["-append".into(), "console=ttyS0 earlyprintk=ttyS0".into()]);
    let mut o = opts(dir.path());
    o.shutdown_timeout = Duration::from_secs(2);
    stop_after(&o.stop, Duration::from_secs(20), 1); // safety net only
    let t = Instant::now();
    let result = run_foreground(&inv, &o);
    eprintln!("after {:?}: {result:?}", t.elapsed());
    match result {
        Err(RunError::KvmFailed { line, .. }) => assert!(line.contains("KVM")),
        other => panic!("expected a KVM failure, got {other:?}"),
    }
}

/// The bzImage of the cloud kernel package in `MICROVM_TEST_KERNELS`, unpacked under
/// `dir` with dpkg-deb and tar; None (and why) where there is none.
fn test_kernel_image(dir: &Path) -> Option<PathBuf> {
    use std::process::{Command, Stdio};
    let Some(kernels) = std::env::var_os("MICROVM_TEST_KERNELS") else {
        eprintln!("skipped: MICROVM_TEST_KERNELS (a directory with cloud.deb) is not set");
        return None;
    };
    let deb = Path::new(&kernels).join("cloud.deb");
    if !deb.exists() {
        eprintln!("skipped: {} does not exist", deb.display());
        return None;
    }
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(&deb)
        .stdout(Stdio::piped())
        .spawn()
        .expect("dpkg-deb");
    let tar = Command::new("tar")
        .args(["-x", "-C"])
        .arg(dir)
        .args(["--wildcards", "./boot/vmlinuz-*"])
        .stdin(dpkg.stdout.take().expect("pipe"))
        .status()
        .expect("tar");
    assert!(dpkg.wait().expect("dpkg-deb").success() && tar.success());
    let image = std::fs::read_dir(dir.join("boot"))
        .expect("boot")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().contains("vmlinuz"));
    Some(image.expect("a vmlinuz in the package"))
}

/// The console channel end to end with a stand-in hypervisor: the supervisor puts a fresh
/// nonce where the plan has the placeholder (argv and a generated file), the stand-in
/// frames READY and EXIT with it on its console; a forged EXIT without the nonce counts
/// for nothing, the frames stay out of the console log, the escape codes too.
#[test]
fn ready_and_exit_over_the_console_channel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = r#"n=${0#*microvm.nonce=}; n=${n%% *}
grep -q "nonce=$n" boot.json || exit 9
printf '\033c\033[?7lfirmware\r\n'
echo 'EXIT 0'
printf '\n%s READY 0.100 0.200\r\n' "$n"
echo 'guest says hi'
printf '\n%s EXIT 42\r\n' "$n"
"#;
    let mut inv = sh(script);
    inv.args.push(format!(
        "console=ttyS0 microvm.nonce={}",
        microvm_runner::NONCE_PLACEHOLDER
    ));
    inv.files.push(GeneratedFile {
        path: "boot.json".into(),
        contents: format!(
            "{{\"boot_args\": \"microvm.nonce={}\"}}",
            microvm_runner::NONCE_PLACEHOLDER
        ),
        mode: 0o600,
    });
    inv.control_channel = Some(ControlChannel::Console {
        param: "microvm.nonce".into(),
    });
    let mut o = opts(dir.path());
    o.ready_timeout = Some(Duration::from_secs(30));
    let out = run_foreground(&inv, &o).expect("run");
    assert_eq!(out.guest_exit, Some(42));
    assert_eq!(out.exit_code(), 42);
    assert!(out.ready_after.is_some());
    assert_eq!(out.guest_init_time, Some((0.1, 0.2)));
    let log = std::fs::read_to_string(dir.path().join("console.log")).expect("log");
    assert!(
        log.contains("firmware") && log.contains("guest says hi"),
        "{log}"
    );
    assert!(!log.contains("READY") && !log.contains('\x1b'), "{log}");
    assert!(
        log.contains("EXIT 0"),
        "the forged line is shown as output: {log}"
    );
    assert!(!log.contains(microvm_runner::NONCE_PLACEHOLDER));
}

/// Two runs of one plan get different nonces.
#[test]
fn every_boot_gets_its_own_nonce() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inv = sh(r#"n=${0#*microvm.nonce=}; echo "$n" >> nonces"#);
    inv.args.push(format!(
        "microvm.nonce={}",
        microvm_runner::NONCE_PLACEHOLDER
    ));
    inv.control_channel = Some(ControlChannel::Console {
        param: "microvm.nonce".into(),
    });
    let mut o = opts(dir.path());
    o.ready_timeout = None;
    run_foreground(&inv, &o).expect("run 1");
    run_foreground(&inv, &o).expect("run 2");
    let text = std::fs::read_to_string(dir.path().join("nonces")).expect("nonces");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_ne!(lines[0], lines[1]);
    assert_eq!(lines[0].len(), 32, "{text}");
}
