//! Who supervises the networks' dnsmasq (`microvm-network@NAME.service` under systemd
//! once `host install` wrote the units, a detached `microvm network supervise NAME`
//! otherwise), and that supervisor itself.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use microvm_host::network::{NetworkName, Networks, Supervision, Tools, LOG_LIMIT};
use microvm_host::service::{detach, logpipe, notify};
use microvm_host::units;

use crate::cli::NetworkSuperviseArgs;

/// The directories systemd loads system units from (`systemd.unit(5)`).
const SYSTEMD_UNIT_PATH: [&str; 5] = [
    "/etc/systemd/system",
    "/run/systemd/system",
    "/usr/local/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/lib/systemd/system",
];

/// The networks of `state` (to look at: nothing is written).
pub fn networks(state: &Path) -> anyhow::Result<Networks> {
    supervised(state, false)
}

/// The networks of `state` with the supervision this host uses, to change them:
/// systemd's units when systemd runs and `host install` wrote the units of this state
/// directory where systemd loads them (`microvm-network@.service` is written there first
/// if it is missing or outdated, and systemd reloaded), otherwise detached supervisors.
pub fn networks_to_change(state: &Path) -> anyhow::Result<Networks> {
    supervised(state, true)
}

fn supervised(state: &Path, write_unit: bool) -> anyhow::Result<Networks> {
    let nets = Networks::new(state, Tools::system());
    let Some(dir) = systemd_unit_dir(state) else {
        return Ok(nets);
    };
    if write_unit {
        write_network_unit(state, &dir)?;
    }
    Ok(nets.supervised_by(Supervision::Systemd {
        systemctl: "systemctl".into(),
    }))
}

fn systemd_unit_dir(state: &Path) -> Option<PathBuf> {
    if !detach::systemd_running(Path::new("/")) {
        return None;
    }
    let dir = crate::cmd::service::installed_unit_dir(state)?;
    SYSTEMD_UNIT_PATH
        .iter()
        .any(|d| Path::new(d) == dir)
        .then_some(dir)
}

/// Writes `microvm-network@.service` into `dir` when it differs (a host installed before
/// networks were supervised, a moved binary) and reloads systemd.
fn write_network_unit(state: &Path, dir: &Path) -> anyhow::Result<()> {
    let microvm = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("locating the microvm binary")?;
    let state = microvm_host::state::absolute(state)?;
    let text = units::network_service(&microvm, &state);
    let path = dir.join(units::NETWORK_UNIT);
    if std::fs::read_to_string(&path).ok().as_deref() == Some(text.as_str()) {
        return Ok(());
    }
    units::write(dir, &[(units::NETWORK_UNIT.into(), text)])
        .with_context(|| format!("writing {}", path.display()))?;
    let reload = std::process::Command::new("systemctl")
        .arg("daemon-reload")
        .status()
        .context("running systemctl daemon-reload")?;
    anyhow::ensure!(
        reload.success(),
        "`systemctl daemon-reload` failed ({reload})"
    );
    Ok(())
}

/// `microvm network supervise NAME`.
pub fn supervise(state: &Path, args: &NetworkSuperviseArgs) -> anyhow::Result<i32> {
    let name: NetworkName = args.name.parse()?;
    let state = microvm_host::state::absolute(state)?;
    let nets = Networks::new(&state, Tools::system());
    // Detached: our output (and dnsmasq's, which inherits it) is dnsmasq.log; rotate it.
    let output = logpipe::rotate_own_output(&nets.dir(&name).join("dnsmasq.log"), LOG_LIMIT)
        .ok()
        .flatten();
    let stop = microvm_host::network::stop_on_signals().context("installing signal handlers")?;
    let mut log = |line: &str| eprintln!("microvm: {line}");
    let mut notified = false;
    let mut ready = |pid: u32| {
        eprintln!("microvm: network {name}: dnsmasq (pid {pid}) serves DHCP and DNS");
        let ready = if notified { "" } else { "READY=1\n" };
        notified = true;
        let _ = notify::notify(&format!("{ready}STATUS=dnsmasq pid {pid}"));
    };
    match nets.supervise(&name, &stop, &mut log, &mut ready) {
        Ok(()) => Ok(0),
        Err(e) => {
            // The error must reach the log before the pipe closes.
            let code = crate::exit::report(&anyhow::Error::new(e));
            drop(output);
            Err(crate::exit::Reported(code).into())
        }
    }
}
