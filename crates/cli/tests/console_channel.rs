//! The control protocol over the serial console, for real: qemu with
//! `controlChannel = "console"` (no virtio-serial port) boots the busybox guest under
//! TCG; readiness and the command's exit status come back over the console, framed by the
//! boot's nonce, which the guest cannot see. And the console of `microvm run` without a
//! terminal carries no escape codes (SeaBIOS's reset and line-wrap-off).

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

use std::os::unix::process::CommandExt as _;

use harness::{require, Kernel, Need, Slot, Vm, OUTPUT_VOLUME};

/// The guest records what it can see of the nonce, prints forged protocol lines, exits 7.
const PROBE: &str = "controlChannel = \"console\"\n\
command = ['/bin/sh', '-c', '\
grep -c microvm.nonce /proc/cmdline > /output/cmdline; \
cat /proc/sys/kernel/dmesg_restrict > /output/dmesg_restrict; \
echo EXIT 0; echo READY 1 2; echo 0123456789abcdef0123456789abcdef EXIT 0; \
sync; exit 7']";

#[test]
fn exit_status_and_readiness_over_the_console() {
    let test = "exit_status_and_readiness_over_the_console";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    let vm = Vm::new(&env, test, Kernel::Cloud, PROBE, OUTPUT_VOLUME);
    let out = std::process::Command::new(&env.bin)
        .args(["plan", "vm.toml"])
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .output()
        .expect("microvm plan");
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{plan}");
    assert!(
        plan.contains("microvm.nonce=@MICROVM_NONCE@") && !plan.contains("virtserialport"),
        "the plan reports on the console, not on virtio-serial:\n{plan}"
    );
    let outcome = vm.run();
    outcome.assert_code(7);
    assert!(outcome.stderr.contains(": ready "), "{}", outcome.logs());
    assert!(
        outcome.stderr.contains("exited with status 7"),
        "{}",
        outcome.logs()
    );
    // The forged lines are plain output; no frame is left in the console.
    assert!(outcome.console.contains("EXIT 0"), "{}", outcome.logs());
    assert!(!outcome.console.contains(" READY "), "{}", outcome.logs());
    assert_eq!(
        vm.output("/cmdline", &outcome),
        "0",
        "the guest saw the nonce"
    );
    assert_eq!(vm.output("/dmesg_restrict", &outcome), "1");
}

/// `microvm run` with its stdout on a pipe: the console is relayed without escape
/// sequences (qemu's SeaBIOS writes `ESC c ESC [?7l ESC [2J` first).
#[test]
fn a_console_without_a_terminal_gets_no_escape_codes() {
    let test = "a_console_without_a_terminal_gets_no_escape_codes";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    let top = "command = ['/bin/sh', '-c', 'echo console-probe-line']";
    let vm = Vm::new(&env, test, Kernel::Cloud, top, OUTPUT_VOLUME);
    let _slot = Slot::acquire();
    let (status, stdout, stderr, _) = vm.cli(&["run"]);
    assert!(status.success(), "{stderr}\n{stdout}");
    assert!(stdout.contains("console-probe-line"), "{stdout}");
    assert!(
        !stdout.contains('\x1b'),
        "escape codes reached a console that is not a terminal: {stdout:?}"
    );
}

/// On a terminal (a pty from `script`), `microvm run` gives the terminal back as it found
/// it: the same termios settings, and line wrapping on again after SeaBIOS turned it off.
#[test]
fn the_terminal_is_restored_after_a_run() {
    let test = "the_terminal_is_restored_after_a_run";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    if std::process::Command::new("script")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("skipped: {test}: `script` (util-linux) is not installed");
        return;
    }
    let top = "command = ['/bin/sh', '-c', 'exit 3']";
    let vm = Vm::new(&env, test, Kernel::Cloud, top, OUTPUT_VOLUME);
    let _slot = Slot::acquire();
    let inner = format!(
        "stty -g > before; {bin:?} run vm.toml --store {store:?} 2> stderr.log; \
         echo \"rc=$?\" > rc; stty -g > after",
        bin = env.bin,
        store = env.store,
    );
    let status = std::process::Command::new("timeout")
        .arg(harness::RUN_DEADLINE.as_secs().to_string())
        .args(["script", "-qec", &inner, "typescript"])
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .expect("script");
    let read = |f: &str| std::fs::read(vm.path(f)).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&read("stderr.log")).into_owned();
    assert!(status.success(), "script failed: {status}\n{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&read("rc")).trim(),
        "rc=3",
        "{stderr}"
    );
    assert_eq!(read("before"), read("after"), "termios changed by the run");
    let typescript = read("typescript");
    let last = |pat: &[u8]| typescript.windows(pat.len()).rposition(|w| w == pat);
    let (off, on) = (last(b"\x1b[?7l"), last(b"\x1b[?7h"));
    assert!(
        off.is_some(),
        "SeaBIOS did not turn wrapping off; the test proves nothing"
    );
    assert!(on > off, "line wrapping was left off");
}

/// On a terminal, Ctrl-] (typed into the pty `script` gives `microvm run`) stops the VM
/// gracefully, like SIGINT would: the guest's shutdown actions run and the run exits 0.
#[test]
fn ctrl_close_bracket_stops_the_vm_on_a_terminal() {
    use std::io::Write as _;
    let test = "ctrl_close_bracket_stops_the_vm_on_a_terminal";
    let Some(env) = require(test, &[Need::CloudKernel, Need::Debugfs]) else {
        return;
    };
    let vm = Vm::new(
        &env,
        test,
        Kernel::Cloud,
        "init = \"/sbin/init\"",
        OUTPUT_VOLUME,
    );
    let _slot = Slot::acquire();
    let inner = format!(
        "{bin:?} run vm.toml --store {store:?} 2> stderr.log",
        bin = env.bin,
        store = env.store,
    );
    let mut child = std::process::Command::new("script")
        .args(["-qfec", &inner, "typescript"])
        .current_dir(vm.path(""))
        .env("PATH", &env.path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("script");
    // Ends `script`, `microvm run` and qemu however the test ends.
    struct Group(u32);
    impl Drop for Group {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0)])
                .status();
        }
    }
    let _group = Group(child.id());
    let read = |f: &str| {
        String::from_utf8_lossy(&std::fs::read(vm.path(f)).unwrap_or_default()).into_owned()
    };
    let start = std::time::Instant::now();
    while !read("typescript").contains("e2e: guest up") {
        assert!(
            start.elapsed() < harness::RUN_DEADLINE && child.try_wait().expect("wait").is_none(),
            "the guest did not come up\n{}\n{}",
            read("stderr.log"),
            read("typescript")
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"\x1d").expect("type Ctrl-]");
    stdin.flush().expect("flush");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > std::time::Duration::from_secs(60) {
            let _ = child.kill();
            panic!("Ctrl-] did not stop the VM\n{}", read("stderr.log"));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    drop(stdin);
    let stderr = read("stderr.log");
    assert!(status.success(), "{status}\n{stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
    assert_eq!(
        vm.volume_file("output.img", "/shutdown")
            .unwrap_or_default()
            .trim(),
        "clean shutdown",
        "{stderr}"
    );
}
