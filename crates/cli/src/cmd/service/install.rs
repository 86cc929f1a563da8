//! `microvm host install`: the systemd units, the `microvm` user and the state directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use microvm_host::privilege;
use microvm_host::service::detach;
use microvm_host::state::StateDir;
use microvm_host::units::{self, UnitOptions};

use crate::cli::HostInstallArgs;
use crate::exit::OK;

/// The supervisor's default graceful-shutdown timeout (`supervise --shutdown-timeout`).
const SHUTDOWN_TIMEOUT: u64 = 30;

pub fn host_install(state_root: &Path, args: &HostInstallArgs) -> anyhow::Result<i32> {
    let state_root = microvm_host::state::absolute(state_root)?;
    let microvm = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("locating the microvm binary")?;
    let state = StateDir::new(&state_root);
    let autostart = state.autostart()?.iter().map(|n| n.to_string()).collect();
    let opts = UnitOptions {
        microvm,
        state_dir: state_root.clone(),
        user: args.user.clone(),
        startup_timeout: args.startup_timeout,
        shutdown_timeout: SHUTDOWN_TIMEOUT,
        restart: args.restart.clone(),
        autostart,
    };
    for p in units::write(&args.unit_dir, &units::render(&opts))
        .with_context(|| format!("writing units to {}", args.unit_dir.display()))?
    {
        println!("wrote {}", p.display());
    }
    if args.units_only {
        return Ok(OK);
    }
    if !privilege::is_root() {
        bail!("creating the user and the state directory needs root (or pass --units-only)");
    }
    if privilege::lookup_group(&args.group).is_none() {
        run("groupadd", &["--system", &args.group])?;
        println!("created group {}", args.group);
    }
    if privilege::lookup_user(&args.user)?.is_none() {
        let home = state_root.to_string_lossy().into_owned();
        run(
            "useradd",
            &[
                "--system",
                "--gid",
                &args.group,
                "--home-dir",
                &home,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                &args.user,
            ],
        )?;
        println!("created user {} (group {})", args.user, args.group);
    }
    let gid = privilege::lookup_group(&args.group).context("group missing after groupadd")?;
    std::fs::create_dir_all(&state_root)
        .with_context(|| format!("creating {}", state_root.display()))?;
    // root-owned, writable by root only: the supervisor trusts the VM directories in it
    // (docs/host.md, "Trust model"); group kvm may read.
    privilege::chown(&state_root, 0, gid)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state_root, std::fs::Permissions::from_mode(0o755))?;
    }
    println!(
        "state directory {} (root:{} 0755)",
        state_root.display(),
        args.group
    );
    let unit_dir = microvm_host::state::absolute(&args.unit_dir)?;
    std::fs::write(
        state_root.join(UNITS_RECORD),
        format!("{}\n", unit_dir.display()),
    )
    .with_context(|| format!("writing {}", state_root.join(UNITS_RECORD).display()))?;
    // An extra for Pacemaker hosts: a read-only /usr (an image-based host, a container
    // sharing the host's /usr) leaves it out, and says so, rather than failing the install.
    match super::ocf::install(Path::new(super::ocf::OCF_ROOT)) {
        Ok(Some(agent)) => println!(
            "installed the Pacemaker resource agent ocf:microvm:vm ({})",
            agent.display()
        ),
        Ok(None) => {}
        Err(e) => eprintln!(
            "microvm: warning: the Pacemaker resource agent ocf:microvm:vm is not installed: {}",
            crate::exit::chain_message(&e)
        ),
    }
    if detach::systemd_running(Path::new("/")) {
        run("systemctl", &["daemon-reload"])?;
        println!("systemd reloaded; enable autostart with `systemctl enable microvms.target`");
    } else {
        println!("systemd is not running here: `microvm start NAME` supervises VMs itself");
    }
    if args.network {
        crate::cmd::network::create_default(&state_root)?;
    }
    Ok(OK)
}

/// `<state>/units-dir`: where `host install` wrote the units, for `host apply`.
const UNITS_RECORD: &str = "units-dir";

/// Where `host install` wrote the units of this state directory, if it did.
pub fn installed_unit_dir(state_root: &Path) -> Option<PathBuf> {
    let dir = std::fs::read_to_string(state_root.join(UNITS_RECORD)).ok()?;
    Some(PathBuf::from(dir.trim_end_matches('\n')))
}

/// Rewrites the installed `microvms.target` (where `host install` recorded it) with the
/// current `<state>/autostart` as its wants, and reloads systemd when it runs. Returns
/// the path rewritten, or `None` when no target was installed for this state directory.
pub fn sync_target(state: &StateDir) -> anyhow::Result<Option<PathBuf>> {
    let Ok(dir) = std::fs::read_to_string(state.root().join(UNITS_RECORD)) else {
        return Ok(None);
    };
    let dir = PathBuf::from(dir.trim_end_matches('\n'));
    let path = dir.join(TARGET);
    match std::fs::read_to_string(&path) {
        Ok(text) if text.starts_with(GENERATED) => {}
        _ => return Ok(None), // removed, or no longer ours: leave it alone
    }
    let names: Vec<String> = state.autostart()?.iter().map(|n| n.to_string()).collect();
    units::write(&dir, &[(TARGET.into(), units::render_target(&names))])
        .with_context(|| format!("writing {}", path.display()))?;
    if detach::systemd_running(Path::new("/")) {
        run("systemctl", &["daemon-reload"])?;
    }
    Ok(Some(path))
}

const TARGET: &str = "microvms.target";
/// The first line of every unit `host install` writes.
const GENERATED: &str = "# Generated by `microvm host install`";

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
