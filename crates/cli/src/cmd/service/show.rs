//! `status`, `logs` and `console` of a managed VM.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::bail;
use microvm_host::service::record::{self, RunRecord};
use microvm_host::state::{now, Status, VmDir, VmState};
use serde::Serialize;

use crate::exit::OK;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report<'a> {
    name: &'a str,
    /// status.json, corrected by a liveness check of its supervisor.
    status: Option<&'a Status>,
    /// Seconds since this run started, while it is live.
    uptime: Option<u64>,
    booted: Option<PathBuf>,
    current: Option<PathBuf>,
    run: Option<&'a RunRecord>,
    /// Static addresses and leases on microvm networks, `ADDRESS (NETWORK)`, as in `list`.
    addresses: Vec<String>,
}

/// The VM's addresses (its booted runner's, else its current one's).
fn addresses(state_root: &Path, vm: &VmDir) -> Vec<String> {
    use microvm_host::network::{Networks, Tools};
    let Some(runner) = vm.booted().or_else(|| vm.current()) else {
        return Vec::new();
    };
    let leases = Networks::new(state_root, Tools::system())
        .all_leases()
        .unwrap_or_default();
    crate::cmd::ssh::addresses(&runner, &leases)
}

pub fn status(state_root: &Path, vm: &VmDir, json: bool) -> anyhow::Result<i32> {
    if microvm_host::privilege::is_root() {
        super::control::recover_dead(vm);
    }
    let status = vm.live_status()?;
    let rec = record::read(vm);
    let live = status.as_ref().is_some_and(|s| s.state.is_live());
    let uptime = rec
        .as_ref()
        .filter(|_| live)
        .map(|r| now().saturating_sub(r.started));
    let addresses = addresses(state_root, vm);
    if json {
        let report = Report {
            name: vm.name().as_str(),
            status: status.as_ref(),
            uptime,
            booted: vm.booted(),
            current: vm.current(),
            run: rec.as_ref(),
            addresses,
        };
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(OK);
    }
    let name = vm.name();
    let Some(status) = status else {
        println!("{name}: never started");
        return Ok(OK);
    };
    let state = status.state.name();
    match &status.state {
        VmState::Failed {
            reason, exit_code, ..
        } => println!(
            "{name}: {state} ({reason}{})",
            exit_code.map_or(String::new(), |c| format!(", exit code {c}"))
        ),
        VmState::Stopped { exit_code, .. } => println!(
            "{name}: {state}{}",
            exit_code.map_or(String::new(), |c| format!(" (exit code {c})"))
        ),
        _ => println!(
            "{name}: {state}{}",
            uptime.map_or(String::new(), |u| format!(", up {u} s"))
        ),
    }
    if let Some(r) = vm.booted().or(status.runner.clone()) {
        println!("  runner:     {}", r.display());
    }
    if !addresses.is_empty() {
        println!("  addresses:  {}", addresses.join(", "));
    }
    if let Some(rec) = &rec {
        if let Some(pid) = status.state.supervisor_pid() {
            println!("  supervisor: pid {pid}");
        } else if rec.next_restart.is_some() {
            println!(
                "  supervisor: pid {} (restarting at {})",
                rec.supervisor_pid,
                rec.next_restart.unwrap_or(0)
            );
        }
        if live {
            if let Some(pid) = rec.hypervisor_pid {
                println!("  hypervisor: {} pid {pid} as {}", rec.hypervisor, rec.user);
            }
            if let Some(ms) = rec.ready_after_ms {
                println!("  ready:      {:.2} s after start", ms as f64 / 1000.0);
            }
            for h in &rec.helpers {
                println!(
                    "  helper:     {} pid {}{}",
                    h.name,
                    h.pid,
                    if h.restarts > 0 {
                        format!(" (restarted {}×)", h.restarts)
                    } else {
                        String::new()
                    }
                );
            }
            if !rec.interfaces.is_empty() {
                println!("  interfaces: {}", rec.interfaces.join(" "));
            }
        }
        if let Some(e) = &rec.last_exit {
            println!("  last exit:  {} (code {})", e.reason, e.code);
        }
    }
    Ok(OK)
}

/// Prints the last `lines` (default 50) of supervisor.log and console.log, then with
/// `follow` whatever is appended to either.
pub fn logs(vm: &VmDir, follow: bool, lines: Option<usize>) -> anyhow::Result<i32> {
    let files = [vm.supervisor_log_path(), vm.console_log_path()];
    let n = lines.unwrap_or(50);
    let mut offsets = Vec::new();
    let mut out = std::io::stdout().lock();
    for f in &files {
        // The tail only: a log is never read whole into memory.
        let (text, len) = tail_of(f, n);
        offsets.push(len);
        if text.is_empty() {
            continue;
        }
        writeln!(out, "==> {} <==", f.display())?;
        let text = String::from_utf8_lossy(&text);
        let all: Vec<&str> = text.lines().collect();
        for l in &all[all.len().saturating_sub(n)..] {
            writeln!(out, "{l}")?;
        }
    }
    out.flush()?;
    if !follow {
        return Ok(OK);
    }
    let mut last: Option<usize> = None;
    loop {
        for (i, f) in files.iter().enumerate() {
            let len = std::fs::metadata(f).map_or(0, |m| m.len());
            if len < offsets[i] {
                offsets[i] = 0; // rotated or truncated
            }
            if len > offsets[i] {
                let data = read_from(f, offsets[i])?;
                offsets[i] += data.len() as u64;
                if last != Some(i) {
                    writeln!(out, "\n==> {} <==", f.display())?;
                    last = Some(i);
                }
                out.write_all(&data)?;
                out.flush()?;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last bytes of `path`, enough for `lines` lines of up to 4 KiB (at most 16 MiB),
/// starting at a line; and the offset it read up to.
fn tail_of(path: &Path, lines: usize) -> (Vec<u8>, u64) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return (Vec::new(), 0);
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let want = (lines as u64)
        .saturating_mul(4096)
        .clamp(64 << 10, 16 << 20);
    let start = len.saturating_sub(want);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(want).read_to_end(&mut buf);
    }
    let end = start + buf.len() as u64;
    if start > 0 {
        let cut = buf.iter().position(|&b| b == b'\n').map_or(0, |i| i + 1);
        buf.drain(..cut);
    }
    (buf, end)
}

fn read_from(path: &Path, offset: u64) -> std::io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(buf)
}

pub fn console(vm: &VmDir) -> anyhow::Result<i32> {
    let sock = vm.path().join("console.sock");
    if !sock.exists() {
        bail!(
            "{} has no console to attach to (not running, or run in the foreground)",
            vm.name()
        );
    }
    eprintln!(
        "microvm: connected to the console of {}; detach with Ctrl-]",
        vm.name()
    );
    let how = microvm_host::console::attach(&sock)?;
    eprintln!();
    match how {
        microvm_host::console::Detach::Detached => eprintln!("microvm: detached"),
        microvm_host::console::Detach::Closed => eprintln!("microvm: the console closed"),
    }
    Ok(OK)
}
