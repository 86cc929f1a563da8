//! End-to-end tests: the built `microvm` binary boots real guests under qemu (TCG where
//! KVM is unusable), the equivalent of microvm.nix's `startup-shutdown` and
//! `shutdown-command` checks. Each test skips with a printed reason when a prerequisite
//! is missing (qemu, the test kernels, busybox-static, virtiofsd, debugfs), and fails
//! instead when `CI` is set.
//!
//! The guests boot microvm's own kernel (`microvm kernel build`, built once by
//! scripts/test.sh) unless a test says why it needs a Debian kernel.
//!
//! Results are read on the host from the guest's ext4 volume with `debugfs`, without
//! mounting. The busybox root and the store are shared under `<target>/e2e`; at most two
//! VMs boot at once.

#[path = "e2e/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{require, Kernel, Need, Slot, Vm, OUTPUT_VOLUME};

/// Writes `uname -s`/`uname -m` to the output volume, and whether `/etc/marker` (on
/// the root's writable layer) existed before this boot, creating it.
const UNAME_AND_MARKER: &str = "command = ['/bin/sh', '-c', '\
uname -s > /output/kernel; uname -m > /output/machine; \
if [ -e /etc/marker ]; then echo existed > /output/marker; \
else echo absent > /output/marker; echo written > /etc/marker; fi; sync']";

const OVERLAY_VOLUME: &str = r#"
[[volumes]]
image = "overlay.img"
mountPoint = "/overlay"
label = "overlay"
size = 64
"#;

/// Boots twice, checking `Linux`/`x86_64` each time and whether a file written to `/`
/// in boot 1 is still there in boot 2 (only with a writable overlay volume).
fn startup_shutdown(test: &str, disk: &str, overlay: bool) {
    let Some(env) = require(test, &[Need::MicrovmKernel]) else {
        return;
    };
    let mut top = format!("storeDiskType = \"{disk}\"\n{UNAME_AND_MARKER}\n");
    let mut tables = OUTPUT_VOLUME.to_owned();
    if overlay {
        top.push_str("writableStoreOverlay = \"/overlay\"\n");
        tables.push_str(OVERLAY_VOLUME);
    }
    let vm = Vm::new(&env, test, Kernel::Microvm, &top, &tables);
    for boot in 1..=2 {
        let outcome = vm.run();
        outcome.assert_code(0);
        assert_eq!(
            vm.output("/kernel", &outcome),
            "Linux",
            "{}",
            outcome.logs()
        );
        assert_eq!(
            vm.output("/machine", &outcome),
            "x86_64",
            "{}",
            outcome.logs()
        );
        let expected = if overlay && boot == 2 {
            "existed"
        } else {
            "absent"
        };
        assert_eq!(
            vm.output("/marker", &outcome),
            expected,
            "boot {boot}: /etc/marker\n{}",
            outcome.logs()
        );
        eprintln!(
            "{test}: boot {boot} ended with 0 after {:.1} s",
            outcome.elapsed.as_secs_f64()
        );
    }
    if overlay {
        // The upper layer is on the overlay volume, readable on the host.
        let upper = vm.volume_file("overlay.img", "/upper/etc/marker");
        assert_eq!(upper.as_deref().map(str::trim), Some("written"));
    }
}

#[test]
fn startup_shutdown_erofs() {
    startup_shutdown("startup_shutdown_erofs", "erofs", false);
}

#[test]
fn startup_shutdown_squashfs() {
    startup_shutdown("startup_shutdown_squashfs", "squashfs", false);
}

#[test]
fn startup_shutdown_erofs_overlay() {
    startup_shutdown("startup_shutdown_erofs_overlay", "erofs", true);
}

#[test]
fn startup_shutdown_squashfs_overlay() {
    startup_shutdown("startup_shutdown_squashfs_overlay", "squashfs", true);
}

/// A share in both directions: the host's file is copied to the volume, the guest's
/// file is read on the host after exit.
fn share_both_ways(test: &str, proto: &str, kernel: Kernel, needs: &[Need]) {
    let Some(env) = require(test, needs) else {
        return;
    };
    let mut top = "command = ['/bin/sh', '-c', '\
grep \" /share \" /proc/mounts > /output/mount; \
cat /share/from-host > /output/from-host; \
echo \"written by the guest\" > /share/from-guest; sync']\n"
        .to_owned();
    if proto == "virtiofs" {
        // microvm.nix's default socket group is `kvm`, which hosts without udev (this
        // CI machine) lack: virtiofsd then fails ("Couldn't resolve the group name
        // specified for the socket path"). Use our own primary group instead.
        top.push_str(&format!(
            "virtiofsd.group = \"{}\"\n",
            harness::primary_group()
        ));
    }
    let tables = format!(
        "{OUTPUT_VOLUME}\n[[shares]]\nproto = \"{proto}\"\ntag = \"e2e\"\nsource = \"share\"\nmountPoint = \"/share\"\n"
    );
    let vm = Vm::new(&env, test, kernel, &top, &tables);
    std::fs::create_dir(vm.path("share")).expect("create share/");
    std::fs::write(vm.path("share/from-host"), "written by the host\n")
        .expect("write share/from-host");
    let outcome = vm.run();
    outcome.assert_code(0);
    let mount = vm.output("/mount", &outcome);
    assert!(
        mount.split_whitespace().nth(2) == Some(proto),
        "/share is not a {proto} mount: {mount:?}\n{}",
        outcome.logs()
    );
    assert_eq!(
        vm.output("/from-host", &outcome),
        "written by the host",
        "{}",
        outcome.logs()
    );
    let from_guest = std::fs::read_to_string(vm.path("share/from-guest"))
        .unwrap_or_else(|e| panic!("share/from-guest on the host: {e}\n{}", outcome.logs()));
    assert_eq!(from_guest.trim(), "written by the guest");
}

#[test]
fn share_9p() {
    share_both_ways("share_9p", "9p", Kernel::Microvm, &[Need::MicrovmKernel]);
}

/// Boots the Debian cloud kernel on purpose: virtiofs (and fuse) are modules there, so this
/// is the test of loading modules from the initrd, which the microvm kernel never does.
#[test]
fn share_virtiofs() {
    share_both_ways(
        "share_virtiofs",
        "virtiofs",
        Kernel::Cloud,
        &[Need::CloudKernel, Need::Virtiofsd],
    );
}

#[test]
fn command_exit_status_is_propagated() {
    let test = "command_exit_status_is_propagated";
    let Some(env) = require(test, &[Need::MicrovmKernel]) else {
        return;
    };
    let top = "command = ['/bin/sh', '-c', 'exit 7']";
    let vm = Vm::new(&env, test, Kernel::Microvm, top, OUTPUT_VOLUME);
    let outcome = vm.run();
    outcome.assert_code(7);
    assert!(
        outcome.stderr.contains("exited with status 7"),
        "{}",
        outcome.logs()
    );
}

/// Hand-over to busybox init, whose `::once:` action powers off by itself: the VM ends
/// without the host doing anything, after the `::shutdown:` actions ran.
#[test]
fn handover_guest_powers_off() {
    let test = "handover_guest_powers_off";
    let Some(env) = require(test, &[Need::MicrovmKernel]) else {
        return;
    };
    let top = "init = \"/sbin/init\"\nenvironment = { E2E_POWEROFF = \"1\" }";
    let vm = Vm::new(&env, test, Kernel::Microvm, top, OUTPUT_VOLUME);
    let outcome = vm.run();
    outcome.assert_code(0);
    assert_eq!(vm.output("/sysinit", &outcome), "sysinit");
    assert_eq!(vm.output("/kernel", &outcome), "Linux");
    assert_eq!(vm.output("/machine", &outcome), "x86_64");
    assert_eq!(vm.output("/poweroff", &outcome), "poweroff");
    assert_eq!(vm.output("/shutdown", &outcome), "clean shutdown");
}

/// `shutdown-command`: SIGTERM to `microvm run` shuts a hand-over guest down gracefully
/// (QMP system_powerdown → ACPI power button → microvm-init's watcher → SIGUSR2 →
/// busybox init runs its `::shutdown:` actions and powers off) within a bound.
#[test]
fn sigterm_shuts_down_gracefully() {
    let test = "sigterm_shuts_down_gracefully";
    let Some(env) = require(test, &[Need::MicrovmKernel]) else {
        return;
    };
    let vm = Vm::new(
        &env,
        test,
        Kernel::Microvm,
        "init = \"/sbin/init\"",
        OUTPUT_VOLUME,
    );
    let _slot = Slot::acquire();
    let mut running = vm.spawn();
    running.wait_for("ready line", harness::RUN_DEADLINE, |stderr, _| {
        stderr.contains(": ready ")
    });
    // READY comes from microvm-init just before it execs busybox init; a press before
    // busybox init has installed its SIGUSR2 handler is lost (PID 1 ignores signals it
    // does not handle). Wait for busybox init's `::once:` action, which runs after
    // sysinit, when the handlers are in place.
    running.wait_for("the guest's init", Duration::from_secs(60), |_, console| {
        console.contains("e2e: guest up")
    });
    let ready = running.stderr();
    running.signal("TERM");
    let sent = Instant::now();
    let outcome = running.wait(Duration::from_secs(30));
    eprintln!(
        "{test}: exited {:?} {:.1} s after SIGTERM",
        outcome.code,
        sent.elapsed().as_secs_f64()
    );
    outcome.assert_code(0);
    assert!(ready.contains(": ready "));
    assert_eq!(
        vm.output("/sysinit", &outcome),
        "sysinit",
        "{}",
        outcome.logs()
    );
    assert_eq!(
        vm.output("/shutdown", &outcome),
        "clean shutdown",
        "{}",
        outcome.logs()
    );
}

/// A 9p share with a kernel without 9p is refused before anything boots (the cloud
/// kernel: it lacks 9p, which the microvm kernel has).
#[test]
fn nine_p_without_kernel_support_is_refused() {
    let test = "nine_p_without_kernel_support_is_refused";
    let Some(env) = require(test, &[Need::CloudKernel]) else {
        return;
    };
    let tables = format!(
        "{OUTPUT_VOLUME}\n[[shares]]\nproto = \"9p\"\ntag = \"e2e\"\nsource = \"share\"\nmountPoint = \"/share\"\n"
    );
    let top = "command = ['/bin/true']";
    let vm = Vm::new(&env, test, Kernel::Cloud, top, &tables);
    std::fs::create_dir(vm.path("share")).expect("create share/");
    let _slot = Slot::acquire();
    let mut running = vm.spawn();
    let outcome = running.wait(Duration::from_secs(60));
    eprintln!(
        "{test}: refused with exit {:?} after {:.1} s",
        outcome.code,
        outcome.elapsed.as_secs_f64()
    );
    assert!(
        !matches!(outcome.code, Some(0) | None),
        "{}",
        outcome.logs()
    );
    assert!(
        outcome.stderr.contains("9p") && outcome.stderr.contains("CONFIG_9P_FS"),
        "the refusal does not name 9p and CONFIG_9P_FS\n{}",
        outcome.logs()
    );
    assert!(
        outcome.console.is_empty(),
        "something booted\n{}",
        outcome.logs()
    );
    assert!(!outcome.stderr.contains(": ready "), "{}", outcome.logs());
    assert!(
        outcome.elapsed < Duration::from_secs(30),
        "the refusal took {:.1} s\n{}",
        outcome.elapsed.as_secs_f64(),
        outcome.logs()
    );
}

/// A second `microvm build` with nothing changed reports the same runner directory.
#[test]
fn noop_rebuild_reports_the_same_runner() {
    let test = "noop_rebuild_reports_the_same_runner";
    let Some(env) = require(test, &[Need::MicrovmKernel]) else {
        return;
    };
    let vm = Vm::new(&env, test, Kernel::Microvm, UNAME_AND_MARKER, OUTPUT_VOLUME);
    let _slot = Slot::acquire();
    let (status1, out1, err1, t1) = vm.cli(&["build"]);
    assert!(status1.success(), "first build failed: {err1}");
    let (status2, out2, err2, t2) = vm.cli(&["build"]);
    assert!(status2.success(), "second build failed: {err2}");
    assert_eq!(out1, out2, "the runner directory changed");
    let runner = std::path::Path::new(out1.trim());
    assert!(
        runner.join("bin/microvm-run").is_file(),
        "{} has no bin/microvm-run",
        runner.display()
    );
    let (status3, json, err3, _) = vm.cli(&["build", "--json"]);
    assert!(status3.success(), "third build failed: {err3}");
    assert!(json.contains("\"cached\": true"), "not cached: {json}");
    eprintln!(
        "{test}: first build {:.2} s, no-op rebuild {:.2} s",
        t1.as_secs_f64(),
        t2.as_secs_f64()
    );
}

/// README's first example: `kernel = { package = "linux-image-cloud-amd64" }`, fetched
/// from the Debian archive with the host's apt (following the meta-package), boots, and
/// the guest runs that package's kernel. Skipped where apt's lists do not know it.
#[test]
fn kernel_package_from_apt_boots() {
    const TEST: &str = "kernel_package_from_apt_boots";
    const META: &str = "linux-image-cloud-amd64";
    let Some(env) = require(TEST, &[]) else {
        return;
    };
    let depends = std::process::Command::new("apt-cache")
        .args(["show", "--no-all-versions", META])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let Some(release) = depends.as_deref().and_then(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix("Depends:"))
            .and_then(|d| {
                d.split(',')
                    .find_map(|p| p.trim().strip_prefix("linux-image-"))
            })
            .and_then(|p| p.split_whitespace().next())
            .map(str::to_owned)
    }) else {
        eprintln!("skipped {TEST}: apt-cache does not know {META} (not Debian, or no apt lists)");
        return;
    };
    let top = "command = ['/bin/sh', '-c', 'uname -r > /output/release; sync']";
    let vm = Vm::new(&env, TEST, Kernel::Cloud, top, OUTPUT_VOLUME);
    let def = std::fs::read_to_string(vm.path("vm.toml")).expect("vm.toml");
    let def: String = def
        .lines()
        .map(|l| {
            if l.starts_with("kernel = ") {
                format!("kernel = {{ package = \"{META}\" }}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(vm.path("vm.toml"), def).expect("vm.toml");
    let outcome = vm.run();
    outcome.assert_code(0);
    assert_eq!(
        vm.output("/release", &outcome),
        release,
        "{}",
        outcome.logs()
    );
}

/// `preStart` and `extraArgsScript` run by `microvm run` itself: the marker the former
/// writes is there, and the `-smp 2` the latter prints reaches qemu (last `-smp` wins),
/// so the guest sees two CPUs where the definition asks for one.
#[test]
fn pre_start_and_extra_args_script_reach_a_real_boot() {
    const TEST: &str = "pre_start_and_extra_args_script_reach_a_real_boot";
    let Some(env) = require(TEST, &[Need::CloudKernel]) else {
        return;
    };
    let top = "hypervisor = \"qemu\"\n\
               preStart = \"echo ran > pre-start-marker\"\n\
               extraArgsScript = \"echo -smp 2\"\n\
               command = ['/bin/sh', '-c', 'nproc > /output/nproc; sync']";
    let vm = Vm::new(&env, TEST, Kernel::Cloud, top, OUTPUT_VOLUME);
    let outcome = vm.run();
    outcome.assert_code(0);
    assert_eq!(
        std::fs::read_to_string(vm.path("pre-start-marker")).expect("marker"),
        "ran\n"
    );
    assert_eq!(vm.output("/nproc", &outcome), "2", "{}", outcome.logs());
}
