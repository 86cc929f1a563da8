//! What the network tests share: network namespaces that clean up after themselves, veth
//! pairs between them, commands asserted to succeed, single-command VM definitions and
//! `microvm run` inside a namespace.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::{bin, path_var, root, sh, work_dir};

/// Runs `argv` and asserts that it succeeds; its stdout.
pub fn ok(argv: &[&str]) -> String {
    let out = sh(argv);
    assert!(
        out.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether a test must be skipped: `why` (what is missing) is printed, or fails the test
/// under `CI`.
pub fn skip(test: &str, why: Option<String>) -> bool {
    let Some(why) = why else {
        return false;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} cannot run in CI: {why}"
    );
    eprintln!("skipped {test}: {why}");
    true
}

/// A network namespace (with `lo` up); on drop every process in it is killed and it is
/// deleted, with its links.
pub struct Netns(pub String);

impl Netns {
    pub fn new(name: impl Into<String>) -> Netns {
        let name = name.into();
        ok(&["ip", "netns", "add", &name]);
        let ns = Netns(name);
        ok(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }
}

impl std::ops::Deref for Netns {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for pid in String::from_utf8_lossy(&sh(&["ip", "netns", "pids", &self.0]).stdout)
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = sh(&["ip", "netns", "delete", &self.0]);
    }
}

/// A veth pair, both ends up: `a_if` with `a_addr` in namespace `a`, `b_if` with `b_addr`
/// in namespace `b`.
pub fn veth(a: &str, a_if: &str, a_addr: &str, b: &str, b_if: &str, b_addr: &str) {
    ok(&[
        "ip", "-n", a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b,
    ]);
    ok(&["ip", "-n", a, "addr", "add", a_addr, "dev", a_if]);
    ok(&["ip", "-n", a, "link", "set", a_if, "up"]);
    ok(&["ip", "-n", b, "addr", "add", b_addr, "dev", b_if]);
    ok(&["ip", "-n", b, "link", "set", b_if, "up"]);
}

/// Writes `DIR/NAME.toml`: a VM on the shared busybox root whose single command is
/// `/bin/sh -c SCRIPT`, with the tables `tables` (interfaces, networks, ports).
pub fn command_definition(
    dir: &Path,
    (name, vcpu): (&str, u32),
    kernel: &Path,
    script: &str,
    tables: &str,
) -> std::path::PathBuf {
    let def = dir.join(format!("{name}.toml"));
    fs::write(
        &def,
        format!(
            "hostName = \"{name}\"\nvcpu = {vcpu}\nmem = 256\nkernel = {kernel:?}\n\
             command = {command:?}\n\n[[root]]\ndirectory = {root:?}\n\n{tables}",
            command = ["/bin/sh", "-c", script],
            root = root(),
        ),
    )
    .expect("definition");
    def
}

/// `ip netns exec NS microvm --state-dir STATE run DEF --store … --workdir DIR
/// --console-log CONSOLE`, stdin from /dev/null.
pub fn run_in(ns: &str, state: &Path, def: &Path, dir: &Path, console: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns])
        .arg(bin())
        .arg("--state-dir")
        .arg(state)
        .arg("run")
        .arg(def)
        .arg("--store")
        .arg(work_dir().join("store"))
        .arg("--workdir")
        .arg(dir)
        .arg("--console-log")
        .arg(console)
        .env("PATH", path_var())
        .stdin(Stdio::null());
    c
}

/// SIGTERM (a graceful stop) to `child`, and wait for it.
pub fn terminate(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let _ = child.wait();
}
