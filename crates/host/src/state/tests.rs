use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use super::*;
use std::os::unix::fs::symlink;

fn name(s: &str) -> VmName {
    s.parse().expect("valid name")
}

fn runner(root: &Path, n: &str) -> PathBuf {
    let dir = root.join(".store").join(n);
    fs::create_dir_all(dir.join("bin")).expect("mkdir");
    dir
}

fn setup() -> (tempfile::TempDir, StateDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(tmp.path());
    (tmp, state)
}

#[test]
fn list_skips_dot_dirs_and_dirs_without_current() {
    let (tmp, state) = setup();
    for n in ["b", "a", ".tmp-c", "no-current"] {
        fs::create_dir_all(tmp.path().join(n)).expect("mkdir");
    }
    let r = runner(tmp.path(), "r1");
    state.vm(&name("a")).set_current(&r).expect("set");
    state.vm(&name("b")).set_current(&r).expect("set");
    symlink(&r, tmp.path().join(".tmp-c/current")).expect("link");
    assert_eq!(state.list().expect("list"), vec![name("a"), name("b")]);
    assert!(StateDir::new(tmp.path().join("missing"))
        .list()
        .expect("list")
        .is_empty());
}

#[test]
fn set_current_moves_previous_to_old() {
    let (tmp, state) = setup();
    let vm = state.vm(&name("vm"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    let (r1, r2) = (runner(tmp.path(), "r1"), runner(tmp.path(), "r2"));
    assert_eq!(vm.set_current(&r1).expect("set"), None);
    assert_eq!(vm.current(), Some(r1.clone()));
    assert_eq!(vm.old(), None);
    // Same runner again: nothing changes, `old` is not clobbered.
    vm.set_current(&r1).expect("set");
    assert_eq!(vm.old(), None);
    assert_eq!(vm.set_current(&r2).expect("set"), Some(r1.clone()));
    assert_eq!(vm.current(), Some(r2.clone()));
    assert_eq!(vm.old(), Some(r1.clone()));
    // Links are absolute and no temporary links are left behind.
    assert!(fs::read_link(vm.path().join("current"))
        .expect("link")
        .is_absolute());
    let leftovers: Vec<_> = fs::read_dir(vm.path())
        .expect("read")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_crash_between_steps_leaves_one_generation() {
    let (tmp, state) = setup();
    let vm = state.vm(&name("vm"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    let (r1, r2, r3) = (
        runner(tmp.path(), "r1"),
        runner(tmp.path(), "r2"),
        runner(tmp.path(), "r3"),
    );
    vm.set_current(&r1).expect("set");
    vm.set_current(&r2).expect("set");
    // Crash after `old` was replaced, before `current`: the old generation is intact.
    let crash = |at: &'static str| {
        move |step: &'static str| {
            if step == at {
                Err(StateError::Io {
                    op: "simulate a crash",
                    path: PathBuf::new(),
                    source: io::ErrorKind::Interrupted.into(),
                })
            } else {
                Ok(())
            }
        }
    };
    assert!(vm.set_current_with(&r3, &mut crash("old")).is_err());
    assert_eq!(vm.current(), Some(r2.clone()));
    assert_eq!(vm.old(), Some(r2.clone()));
    // Retrying completes the change.
    vm.set_current(&r3).expect("retry");
    assert_eq!(vm.current(), Some(r3.clone()));
    assert_eq!(vm.old(), Some(r2.clone()));
    // Crash after `current`: the new generation is complete.
    assert!(vm.set_current_with(&r1, &mut crash("current")).is_err());
    assert_eq!(vm.current(), Some(r1));
    assert_eq!(vm.old(), Some(r3));
    // A stale temporary link from a crash during symlink creation is harmless.
    symlink("/nonexistent", vm.path().join(".current.tmp-1-0")).expect("link");
    assert_eq!(state.list().expect("list"), vec![name("vm")]);
}

#[test]
fn booted_source_managed_by() {
    let (tmp, state) = setup();
    let vm = state.vm(&name("vm"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    let r = runner(tmp.path(), "r1");
    assert_eq!(vm.booted(), None);
    vm.set_booted(&r).expect("booted");
    assert_eq!(vm.booted(), Some(r));
    vm.clear_booted().expect("clear");
    vm.clear_booted().expect("clear twice");
    assert_eq!(vm.booted(), None);
    assert_eq!(vm.source(), None);
    vm.set_source(Path::new("/etc/vm.toml")).expect("source");
    assert_eq!(vm.source(), Some(PathBuf::from("/etc/vm.toml")));
    vm.set_source(Path::new("relative.toml")).expect("source");
    assert!(vm.source().expect("source").is_absolute());
    vm.set_managed_by(Path::new("/etc/host.toml"))
        .expect("managed");
    assert_eq!(vm.managed_by(), Some(PathBuf::from("/etc/host.toml")));
    vm.clear_managed_by().expect("clear");
    assert_eq!(vm.managed_by(), None);
}

#[test]
fn autostart_round_trip() {
    let (_tmp, state) = setup();
    assert!(state.autostart().expect("read").is_empty());
    state
        .write_autostart(&[name("a"), name("b")])
        .expect("write");
    assert_eq!(state.autostart().expect("read"), vec![name("a"), name("b")]);
}

#[test]
fn status_round_trip_and_json_shape() {
    let (_tmp, state) = setup();
    let vm = state.vm(&name("vm"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    assert_eq!(vm.status().expect("status"), None);
    let running = Status {
        state: VmState::Running {
            supervisor_pid: std::process::id(),
            hypervisor_pid: Some(7),
            since: 1_700_000_000,
        },
        runner: Some(PathBuf::from("/s/r")),
    };
    vm.write_status(&running).expect("write");
    assert_eq!(vm.status().expect("status"), Some(running.clone()));
    let json: serde_json::Value =
        serde_json::from_slice(&fs::read(vm.status_path()).expect("read")).expect("json");
    assert_eq!(json["state"], "running");
    assert_eq!(json["hypervisorPid"], 7);
    assert_eq!(json["runner"], "/s/r");
    // Our own pid is alive, so the live status is unchanged.
    assert_eq!(vm.live_status().expect("live"), Some(running));
    assert!(VmState::Stopped {
        since: 0,
        exit_code: None
    }
    .can_start());

    let failed: Status = serde_json::from_str(
        r#"{"state":"failed","since":5,"exitCode":1,"reason":"hypervisor exited with 1"}"#,
    )
    .expect("parse");
    assert_eq!(failed.state.name(), "failed");
    fs::write(vm.status_path(), "{").expect("write");
    assert!(matches!(vm.status(), Err(StateError::BadStatus { .. })));
}

#[test]
fn a_dead_supervisor_reads_as_failed() {
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let pid = child.id();
    child.wait().expect("wait");
    assert!(!pid_alive(pid));
    assert!(pid_alive(std::process::id()));
    let st = Status::new(VmState::Running {
        supervisor_pid: pid,
        hypervisor_pid: None,
        since: 1,
    })
    .checked();
    match st.state {
        VmState::Failed { reason, .. } => assert!(reason.contains("is gone"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_vm_serialises_different_vms_do_not() {
    let (_tmp, state) = setup();
    for n in ["a", "b"] {
        fs::create_dir_all(state.vm(&name(n)).path()).expect("mkdir");
    }
    let held = state.vm(&name("a")).lock(Duration::ZERO).expect("lock a");
    // Another VM locks at once.
    let b = state.vm(&name("b")).lock(Duration::ZERO).expect("lock b");
    drop(b);
    // The same VM times out with a clear error.
    let start = Instant::now();
    let err = state
        .vm(&name("a"))
        .lock(Duration::from_millis(200))
        .expect_err("must time out");
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(
        err.to_string()
            .contains("another microvm command holds the lock of VM a"),
        "{err}"
    );
    drop(held);

    // Threads taking the lock of one VM never overlap.
    let inside = Arc::new(Mutex::new(0u32));
    let max = Arc::new(Mutex::new(0u32));
    let barrier = Arc::new(Barrier::new(4));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (state, inside, max, barrier) =
                (state.clone(), inside.clone(), max.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..5 {
                    let _l = state
                        .vm(&name("a"))
                        .lock(Duration::from_secs(10))
                        .expect("lock");
                    let n = {
                        let mut i = inside.lock().expect("mutex");
                        *i += 1;
                        *i
                    };
                    let mut m = max.lock().expect("mutex");
                    *m = (*m).max(n);
                    drop(m);
                    std::thread::sleep(Duration::from_millis(5));
                    *inside.lock().expect("mutex") -= 1;
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("join");
    }
    assert_eq!(*max.lock().expect("mutex"), 1);
}

#[test]
fn a_lock_held_by_another_process_blocks() {
    let (_tmp, state) = setup();
    let vm = state.vm(&name("a"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    let lock = vm.lock_path();
    fs::write(&lock, "").expect("touch");
    let child = std::process::Command::new("flock")
        .arg(&lock)
        .args(["sleep", "0.6"])
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("skipped: flock(1) is not installed");
        return;
    };
    std::thread::sleep(Duration::from_millis(200));
    assert!(matches!(
        vm.lock(Duration::from_millis(50)),
        Err(StateError::Locked { .. })
    ));
    let start = Instant::now();
    let _l = vm.lock(Duration::from_secs(10)).expect("lock after exit");
    assert!(start.elapsed() >= Duration::from_millis(100));
    child.wait().expect("wait");
}

#[test]
fn a_vm_removed_while_waiting_is_not_found() {
    let (_tmp, state) = setup();
    let vm = state.vm(&name("a"));
    fs::create_dir_all(vm.path()).expect("mkdir");
    let held = vm.lock(Duration::ZERO).expect("lock");
    let waiter = {
        let vm = vm.clone();
        std::thread::spawn(move || vm.lock(Duration::from_secs(10)))
    };
    std::thread::sleep(Duration::from_millis(100));
    let gone = state.root().join(".tmp-removing-a");
    fs::rename(vm.path(), &gone).expect("rename");
    drop(held);
    match waiter.join().expect("join") {
        Err(StateError::NotFound { .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        state.vm(&name("missing")).lock(Duration::ZERO),
        Err(StateError::NotFound { .. })
    ));
}

#[test]
fn host_lock_shared_and_exclusive() {
    let (_tmp, state) = setup();
    let a = state.lock_shared(Duration::ZERO).expect("shared");
    let b = state.lock_shared(Duration::ZERO).expect("shared twice");
    let err = state
        .lock(Duration::from_millis(100))
        .expect_err("exclusive while shared");
    assert!(
        err.to_string().contains("lock of the state directory"),
        "{err}"
    );
    drop((a, b));
    let x = state.lock(Duration::ZERO).expect("exclusive");
    assert!(state.lock_shared(Duration::from_millis(50)).is_err());
    drop(x);
}
