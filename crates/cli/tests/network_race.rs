//! Concurrent changes of one network wait for each other (the networks' lock,
//! crates/host/src/network/lock.rs), with real processes in a namespace the test creates:
//!
//! - four `network create` of the same network started together, with two definitions
//!   (other bridge, subnet and NAT), all succeed and leave exactly one bridge, one NAT
//!   table, one dnsmasq and one supervisor, matching one of the definitions;
//! - neither the supervisor nor dnsmasq keeps the lock: nobody holds it once the creates
//!   returned, and the next `create` does not wait;
//! - a `create` that finds the lock held waits, says so once on stderr, and goes on when
//!   it is free;
//! - two `host apply` of files defining the network differently leave the network as one
//!   of them, managed by that one;
//! - `network remove` racing a `create` leaves the network complete or gone, never half.
//!
//! Prerequisites as tests/network_host.rs (root, iproute2 with netns, nft, dnsmasq): a
//! missing one skips the test with a printed reason, or fails it when `CI` is set.

#[allow(dead_code)]
#[path = "network_host/support.rs"]
mod support;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use support::*;

const NET: &str = "nlknet";
/// The two definitions: (bridge, subnet, extra options).
const DEFS: [(&str, &str, &[&str]); 2] = [
    ("nlkbr0", "10.191.0.1/24", &[]),
    ("nlkbr1", "10.192.0.1/24", &["--no-nat"]),
];
/// What a waiter says on stderr.
const WAITING: &str = "waiting for another change of the networks";
/// A failure guard for a change that should take seconds (not an assertion on time).
const HANG: Duration = Duration::from_secs(120);

/// A `microvm` started in the namespace, its stdout and stderr in files.
struct Started {
    what: String,
    child: Child,
    err: PathBuf,
}

/// How a [`Started`] ended.
struct Ended {
    what: String,
    status: ExitStatus,
    stderr: String,
}

/// The test's namespace and directories; `ip netns exec NS microvm --state-dir STATE …`.
struct Host {
    ns: String,
    state: PathBuf,
    /// Where the host files and the processes' output go.
    work: PathBuf,
}

impl Host {
    fn start(&self, what: &str, args: &[&str]) -> Started {
        let n = fs::read_dir(&self.work).map(|d| d.count()).unwrap_or(0);
        let (out, err) = (
            self.work.join(format!("{n}.out")),
            self.work.join(format!("{n}.err")),
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin())
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("PATH", path_var())
            .env_remove("MICROVM_SERVICE_MANAGER")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("spawn microvm");
        Started {
            what: what.to_string(),
            child,
            err,
        }
    }

    fn create(&self, what: &str, def: usize) -> Started {
        self.start(what, &create_args(def))
    }

    fn exists(&self) -> bool {
        self.state.join(".networks").join(NET).exists()
    }
}

fn create_args(def: usize) -> Vec<&'static str> {
    let (bridge, subnet, extra) = DEFS[def];
    let mut a = vec![
        "network", "create", NET, "--bridge", bridge, "--subnet", subnet,
    ];
    a.extend(extra);
    a
}

/// A host file with the network as definition `def`.
fn host_file(def: usize) -> String {
    let (bridge, subnet, extra) = DEFS[def];
    let nat = if extra.is_empty() {
        ""
    } else {
        "nat = false\n"
    };
    format!("[networks.{NET}]\nsubnet = \"{subnet}\"\nbridge = \"{bridge}\"\n{nat}")
}

/// Waits for every process; one still running after [`HANG`] fails the test.
fn finish(started: Vec<Started>) -> Vec<Ended> {
    let end = Instant::now() + HANG;
    started
        .into_iter()
        .map(|mut s| loop {
            if let Some(status) = s.child.try_wait().expect("wait") {
                return Ended {
                    what: s.what,
                    status,
                    stderr: fs::read_to_string(&s.err).unwrap_or_default(),
                };
            }
            if Instant::now() > end {
                let _ = s.child.kill();
                panic!("{} still runs after {HANG:?}: it hangs", s.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        })
        .collect()
}

fn assert_ok(e: &Ended) {
    assert!(e.status.success(), "{} failed: {}", e.what, e.stderr);
}

/// The pids whose argv mentions the state directory: (dnsmasq, supervisors).
fn census(state: &Path) -> (Vec<u32>, Vec<u32>) {
    let state = state.to_str().expect("utf-8");
    let (mut dnsmasq, mut supervisors) = (Vec::new(), Vec::new());
    for e in fs::read_dir("/proc").expect("/proc").filter_map(Result::ok) {
        let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let argv: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !argv.iter().any(|a| a.contains(state)) {
            continue;
        }
        if argv[0].ends_with("dnsmasq") {
            dnsmasq.push(pid);
        } else if argv
            .windows(3)
            .any(|w| w[0] == "network" && w[1] == "supervise" && w[2] == NET)
        {
            supervisors.push(pid);
        }
    }
    (dnsmasq, supervisors)
}

fn bridges(ns: &str) -> Vec<String> {
    ok(&["ip", "-n", ns, "-o", "link", "show", "type", "bridge"])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect()
}

/// Nobody holds the lock, and no process of the network has it open.
fn assert_lock_free(state: &Path, pids: &[u32]) {
    let lock = state.join(".networks/.lock");
    let ino = fs::metadata(&lock).expect("the lock file").ino();
    let locks = fs::read_to_string("/proc/locks").expect("/proc/locks");
    assert!(
        !locks.lines().any(|l| l
            .split_whitespace()
            .nth(5)
            .is_some_and(|d| d.ends_with(&format!(":{ino}")))),
        "the lock is still held after every change returned:\n{locks}"
    );
    for pid in pids {
        for fd in fs::read_dir(format!("/proc/{pid}/fd"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let target = fs::read_link(fd.path()).unwrap_or_default();
            assert_ne!(target, lock, "process {pid} inherited the lock");
        }
    }
}

/// The network exists whole, as definition `def` or the other one; returns which.
fn assert_complete(ns: &str, state: &Path) -> usize {
    let list: serde_json::Value =
        serde_json::from_str(&microvm(ns, state, &["network", "list", "--json"])).expect("json");
    let all = list.as_array().expect("a list");
    assert_eq!(all.len(), 1, "one network: {list}");
    let s = &all[0];
    assert_eq!(s["name"], NET, "{s}");
    assert_eq!(s["dhcp"], "running", "{s}");
    let def = DEFS
        .iter()
        .position(|(b, subnet, _)| s["bridge"] == *b && s["ipv4"] == *subnet)
        .unwrap_or_else(|| panic!("the record is none of the definitions: {s}"));
    let (bridge, subnet, extra) = DEFS[def];
    assert_eq!(s["nat"], extra.is_empty(), "{s}");
    assert_eq!(bridges(ns), [bridge], "exactly the record's bridge");
    let v4 = addresses(ns, "-4", bridge);
    assert!(v4.contains(subnet), "{v4}");
    let (dnsmasq, supervisors) = census(state);
    assert_eq!(dnsmasq, [pid_of(s, "dnsmasqPid") as u32], "one dnsmasq");
    assert_eq!(
        supervisors,
        [pid_of(s, "supervisorPid") as u32],
        "one supervisor"
    );
    let rules = ruleset(ns);
    assert_eq!(
        rules.matches("table ip microvm-nlknet").count(),
        1,
        "{rules}"
    );
    assert_eq!(rules.contains("masquerade"), extra.is_empty(), "{rules}");
    def
}

/// Nothing of the network is left.
fn assert_none(ns: &str, state: &Path) {
    assert!(
        !state.join(".networks").join(NET).exists(),
        "the network's directory is left"
    );
    assert!(
        bridges(ns).is_empty(),
        "a bridge is left: {:?}",
        bridges(ns)
    );
    assert_eq!(census(state), (vec![], vec![]), "processes left");
    let rules = ruleset(ns);
    assert!(!rules.contains("microvm-nlknet"), "table left: {rules}");
}

#[test]
fn concurrent_creates_and_removes_of_one_network_wait_for_each_other() {
    let test = "concurrent_creates_and_removes_of_one_network_wait_for_each_other";
    if skip(test, &[]) {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nss = Namespaces(Vec::new());
    let h = Host {
        ns: nss.add(format!("nlk{}-h", std::process::id() % 100000)),
        state: dir.path().join("state"),
        work: dir.path().join("work"),
    };
    fs::create_dir_all(&h.work).expect("work");
    let def = creates_at_once(&h);
    a_held_lock_makes_create_wait(&h, def);
    host_applies_at_once(&h);
    remove_races_create(&h);
    if h.exists() {
        microvm(&h.ns, &h.state, &["network", "remove", NET]);
    }
    assert_none(&h.ns, &h.state);
}

/// Four creates at once, two of each definition; then one more, which does not wait on
/// the supervisor. Returns the definition the network has.
fn creates_at_once(h: &Host) -> usize {
    let racers = (0..4)
        .map(|i| h.create(&format!("create #{i}"), i % 2))
        .collect();
    let ended = finish(racers);
    ended.iter().for_each(assert_ok);
    let waited = ended.iter().filter(|e| e.stderr.contains(WAITING)).count();
    eprintln!("{waited} of 4 concurrent creates said that they waited");
    let def = assert_complete(&h.ns, &h.state);
    let (d, s) = census(&h.state);
    assert_lock_free(&h.state, &[d, s].concat());

    let again = finish(vec![h.create("create again", 1 - def)]);
    assert_ok(&again[0]);
    assert!(!again[0].stderr.contains(WAITING), "{}", again[0].stderr);
    assert_eq!(assert_complete(&h.ns, &h.state), 1 - def);
    1 - def
}

/// A held lock: the create waits, says so once, and goes on when it is free.
fn a_held_lock_makes_create_wait(h: &Host, def: usize) {
    let held = fs::OpenOptions::new()
        .write(true)
        .open(h.state.join(".networks/.lock"))
        .expect("open the lock");
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).expect("flock");
    let mut waiter = h.create("create waiting", 1 - def);
    let err = waiter.err.clone();
    wait_for(
        "the create to say it waits",
        Duration::from_secs(30),
        || fs::read_to_string(&err).is_ok_and(|t| t.contains(WAITING)),
    );
    assert!(
        waiter.child.try_wait().expect("wait").is_none(),
        "the create went on while the lock was held"
    );
    drop(held);
    let ended = finish(vec![waiter]);
    assert_ok(&ended[0]);
    let said = ended[0].stderr.matches(WAITING).count();
    assert_eq!(said, 1, "{}", ended[0].stderr);
    assert_eq!(assert_complete(&h.ns, &h.state), 1 - def);
}

/// Two `host apply` of files that define the network differently, at once: the record
/// and `managed-by` come from the same file (the lock spans the whole network phase).
fn host_applies_at_once(h: &Host) {
    let files: Vec<PathBuf> = (0..2)
        .map(|i| {
            let f = h.work.join(format!("host{i}.toml"));
            fs::write(&f, host_file(i)).expect("host file");
            f
        })
        .collect();
    for round in 0..3 {
        let racers = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let f = f.to_str().expect("utf-8");
                h.start(&format!("host apply #{i}"), &["host", "apply", f])
            })
            .collect();
        finish(racers).iter().for_each(assert_ok);
        let def = assert_complete(&h.ns, &h.state);
        let managed =
            fs::read(h.state.join(".networks").join(NET).join("managed-by")).expect("managed-by");
        assert_eq!(
            Path::new(std::str::from_utf8(&managed).expect("utf-8")),
            files[def],
            "round {round}: the record is not of the host file that manages it"
        );
    }
}

/// `remove` racing `create`: complete or gone, whichever ran last. The remove starts up
/// to 0.3 s after the create, to land inside it too.
fn remove_races_create(h: &Host) {
    for round in 0..8 {
        let existed = h.exists();
        let create = h.create("create", round % 2);
        std::thread::sleep(Duration::from_millis(100) * (round as u32 % 4));
        let remove = h.start("remove", &["network", "remove", NET]);
        let ended = finish(vec![create, remove]);
        assert_ok(&ended[0]);
        let removed = ended[1].status.success();
        if !removed {
            let err = &ended[1].stderr;
            assert!(err.contains("does not exist"), "{err}");
        }
        let complete = h.exists();
        eprintln!(
            "round {round}: existed {existed}, remove succeeded {removed}, left complete {complete}"
        );
        if complete {
            assert_complete(&h.ns, &h.state);
        } else {
            assert!(removed, "the network is gone though remove failed");
            assert_none(&h.ns, &h.state);
        }
        if !existed {
            // From none: the create made it, so a remove that succeeded ran after it.
            assert_eq!(complete, !removed, "round {round}");
        }
    }
}
