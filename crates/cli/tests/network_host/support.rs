//! The helpers of tests/network_host.rs: the microvm binary and PATH, skips, checked
//! commands, namespaces the tests own, a namespaced microvm, leases and what is left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(super) fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_microvm"))
}

pub(super) fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

pub(super) fn path_var() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    std::env::join_paths(dirs).expect("PATH")
}

pub(super) fn which(tool: &str) -> bool {
    std::env::split_paths(&path_var()).any(|d| d.join(tool).is_file())
}

/// Whether the test must be skipped (it prints why; under CI it fails instead).
pub(super) fn skip(test: &str, extra: &[&str]) -> bool {
    let mut why = Vec::new();
    if !rustix::process::geteuid().is_root() {
        why.push("not root".to_string());
    }
    for t in ["ip", "nft", "dnsmasq", "busybox"].iter().chain(extra) {
        if !which(t) {
            why.push(format!(
                "{t} is not installed (scripts/setup-host.sh installs it)"
            ));
        }
    }
    if why.is_empty() {
        return false;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {}",
        why.join("; ")
    );
    eprintln!("SKIPPED {test}: {}", why.join("; "));
    true
}

pub(super) fn run(argv: &[&str]) -> Output {
    Command::new(argv[0])
        .args(&argv[1..])
        .env("PATH", path_var())
        .env_remove("MICROVM_SERVICE_MANAGER")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

pub(super) fn ok(argv: &[&str]) -> String {
    let out = run(argv);
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(super) fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub(super) fn alive(pid: u64) -> bool {
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

pub(super) fn kill9(pid: u64) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill -9");
}

/// The namespaces of one test; deleted (their processes killed first) on drop.
pub(super) struct Namespaces(pub(super) Vec<String>);

impl Namespaces {
    pub(super) fn add(&mut self, name: String) -> String {
        ok(&["ip", "netns", "add", &name]);
        self.0.push(name.clone());
        ok(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        name
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.0.iter().rev() {
            for pid in ns_pids(n) {
                if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
            }
            let _ = run(&["ip", "netns", "delete", n]);
        }
    }
}

pub(super) fn ns_pids(ns: &str) -> Vec<u64> {
    String::from_utf8_lossy(&run(&["ip", "netns", "pids", ns]).stdout)
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `ip netns exec NS microvm --state-dir STATE ARGS…`, which must succeed.
pub(super) fn microvm(ns: &str, state: &Path, args: &[&str]) -> String {
    let b = bin();
    let mut argv = vec!["ip", "netns", "exec", ns, b.to_str().expect("utf-8")];
    argv.extend(["--state-dir", state.to_str().expect("utf-8")]);
    argv.extend(args);
    ok(&argv)
}

/// `network list --json`'s entry for `name`.
pub(super) fn status(ns: &str, state: &Path, name: &str) -> serde_json::Value {
    let list: serde_json::Value =
        serde_json::from_str(&microvm(ns, state, &["network", "list", "--json"])).expect("json");
    list.as_array()
        .and_then(|a| a.iter().find(|n| n["name"] == name).cloned())
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

pub(super) fn pid_of(status: &serde_json::Value, key: &str) -> u64 {
    status[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} in {status}"))
}

/// A DHCP client (busybox udhcpc, sending `hostname`) on a veth whose peer `peer` joins
/// `bridge`; `prefix` is the namespace-command prefix of the client (`ip netns exec C`)
/// and `host` that of the bridge's side. Returns the leased address.
pub(super) fn lease_for(
    host: &[&str],
    client: &[&str],
    peer: &str,
    bridge: &str,
    hostname: &str,
) -> String {
    let cmd = |prefix: &[&str], args: &[&str]| {
        let argv: Vec<&str> = prefix.iter().chain(args).copied().collect();
        run(&argv)
    };
    if !cmd(host, &["ip", "link", "show", peer]).status.success() {
        let inner = format!("{peer}c");
        assert!(cmd(
            host,
            &["ip", "link", "add", peer, "type", "veth", "peer", "name", &inner]
        )
        .status
        .success());
        if client != host {
            // The client namespace is named by the last word of its prefix.
            let ns = client.last().expect("client namespace");
            assert!(cmd(host, &["ip", "link", "set", &inner, "netns", ns])
                .status
                .success());
        }
        assert!(cmd(client, &["ip", "link", "set", &inner, "up"])
            .status
            .success());
    }
    assert!(
        cmd(host, &["ip", "link", "set", peer, "master", bridge, "up"])
            .status
            .success()
    );
    let inner = format!("{peer}c");
    let hn = format!("hostname:{hostname}");
    let out = cmd(
        client,
        &[
            "busybox",
            "udhcpc",
            "-i",
            &inner,
            "-n",
            "-q",
            "-f",
            "-t",
            "10",
            "-T",
            "3",
            "-x",
            &hn,
            "-s",
            "/usr/bin/true",
        ],
    );
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "udhcpc for {hostname}: {text}");
    text.split("lease of ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no lease in: {text}"))
        .to_string()
}

/// The addresses of `dev` (`-4` or `-6`, global scope) in `ns`.
pub(super) fn addresses(ns: &str, family: &str, dev: &str) -> String {
    ok(&[
        "ip", "-n", ns, family, "-o", "addr", "show", "dev", dev, "scope", "global",
    ])
}

pub(super) fn ruleset(ns: &str) -> String {
    ok(&["ip", "netns", "exec", ns, "nft", "list", "ruleset"])
}

/// Nothing of network `name` (bridge `bridge`) is left in `ns` or the state directory.
pub(super) fn assert_gone(ns: &str, state: &Path, name: &str, bridge: &str) {
    let links = ok(&["ip", "-n", ns, "-o", "link"]);
    assert!(!links.contains(bridge), "bridge left: {links}");
    let rules = ruleset(ns);
    assert!(
        !rules.contains(&format!("microvm-{name}")),
        "table left: {rules}"
    );
    assert!(!state.join(".networks").join(name).exists(), "record left");
    let pids = ns_pids(ns);
    assert!(pids.is_empty(), "processes left in {ns}: {pids:?}");
}
