//! Managed VMs in the state directory: `create`, `update`, `list`, `remove`, `gc` and
//! `host apply`. The layout and its rules are in docs/host.md ("State directory",
//! "Managing VMs", "Declarative hosts"); the state API is `microvm_host::state`.

mod apply;
mod create;
mod diff;
mod fingerprint;
mod gc;
mod list;
mod remove;
mod update;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use microvm_host::state::{StateDir, VmDir, DEFAULT_LOCK_TIMEOUT};
use microvm_image::store::Store;
use microvm_runner::HostFacts;
use microvm_spec::types::VmName;
use microvm_spec::{LoadOptions, Loaded};

use super::{build, common};
use crate::exit::{Reported, INVALID};

pub use apply::host_apply;
pub use create::create;
pub use gc::gc;
pub use list::list;
pub use remove::remove;
pub use update::update;

/// How long a command waits for another command's lock.
const LOCK_TIMEOUT: Duration = DEFAULT_LOCK_TIMEOUT;

/// The state directory and the store managed VMs are built into: `$MICROVM_STORE`, else
/// `<state>/.store` (so `gc` knows every root of it).
struct Ctx {
    state: StateDir,
    store_root: PathBuf,
}

impl Ctx {
    fn new(state_root: &Path) -> anyhow::Result<Ctx> {
        let root = microvm_host::state::absolute(state_root)?;
        let state = StateDir::new(root);
        let store_root = match std::env::var_os("MICROVM_STORE") {
            Some(p) => microvm_host::state::absolute(Path::new(&p))?,
            None => state.store_root(),
        };
        Ok(Ctx { state, store_root })
    }

    fn open_store(&self) -> anyhow::Result<Store> {
        build::open_store(Some(&self.store_root), self.state.root())
    }
}

fn parse_name(name: &str) -> anyhow::Result<VmName> {
    name.parse::<VmName>().map_err(|e| anyhow!("{e}"))
}

/// Loads the definition of VM `name`: the definition's `hostName` must be `name` or absent.
/// Diagnostics are printed unless `quiet`; an invalid definition fails with exit code 3.
fn load_definition(file: &Path, name: &VmName, quiet: bool) -> anyhow::Result<Loaded> {
    let options = LoadOptions {
        name: Some(name.clone()),
        arch: None,
    };
    let loaded = match microvm_spec::load_with(file, &options) {
        Ok(loaded) => loaded,
        Err(failure) => {
            if !quiet {
                eprint!("{}", failure.render());
                eprintln!("error: {}: {failure}", file.display());
            }
            return Err(Reported(INVALID).into());
        }
    };
    if loaded.config.name != *name {
        if !quiet {
            eprintln!(
                "error: {}: hostName is {:?}, but the VM is called {name}; remove hostName or make them agree",
                file.display(),
                loaded.config.name.as_str()
            );
        }
        return Err(Reported(INVALID).into());
    }
    if !quiet && !loaded.warnings.is_empty() {
        eprint!("{}", loaded.sources.render(&loaded.warnings));
    }
    Ok(loaded)
}

/// A runner built for a managed VM, with the fingerprint of its inputs.
struct BuiltVm {
    runner: PathBuf,
    fingerprint: String,
}

fn build_vm(loaded: &Loaded, store: &Store, host: &HostFacts) -> anyhow::Result<BuiltVm> {
    let runner = build::build_runner(loaded, store, host)?;
    let fingerprint = fingerprint::compute(loaded, host, store)?;
    let _ = store.save();
    Ok(BuiltVm {
        runner: runner.dir,
        fingerprint,
    })
}

/// The short name of a runner in messages: the first 12 characters of its store hash.
fn short(runner: &Path) -> String {
    let name = runner
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    match name.split_once('-') {
        Some((hash, _)) if hash.len() >= 12 => hash[..12].to_owned(),
        _ => runner.display().to_string(),
    }
}

/// Terminal colours for human output (only when stdout is a terminal and NO_COLOR is unset).
#[derive(Debug, Clone, Copy)]
struct Paint(bool);

impl Paint {
    fn stdout() -> Paint {
        Paint(std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none())
    }
    fn wrap(self, code: &str, text: &str) -> String {
        if self.0 {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
    fn green(self, t: &str) -> String {
        self.wrap("32", t)
    }
    fn cyan(self, t: &str) -> String {
        self.wrap("36", t)
    }
    fn bold_green(self, t: &str) -> String {
        self.wrap("1;32", t)
    }
    fn bold_yellow(self, t: &str) -> String {
        self.wrap("1;33", t)
    }
    fn bold_red(self, t: &str) -> String {
        self.wrap("1;31", t)
    }
}

/// Whether the VM's supervisor is alive (status.json says so and its pid exists).
fn is_running(vm: &VmDir) -> bool {
    vm.live_status()
        .ok()
        .flatten()
        .is_some_and(|s| s.state.is_live())
}

/// Starting and stopping, from `crate::cmd::service` (through systemd when it runs, else
/// microvm's own supervisor). Called WITHOUT holding the VM's lock: those functions take
/// it themselves.
mod services {
    use std::time::Duration;

    use microvm_host::state::StateDir;
    use microvm_spec::types::VmName;

    /// How long a stop waits for the guest to power off before forcing (`stop`'s default).
    const STOP_TIMEOUT: Duration = Duration::from_secs(30);

    /// Restarts the VM (starts it when it is not running).
    pub fn restart(state: &StateDir, name: &VmName) -> anyhow::Result<()> {
        crate::cmd::service::restart_one(state, name, STOP_TIMEOUT)
    }

    /// Stops the VM gracefully (force after the timeout); nothing to do when it is stopped.
    pub fn stop(state: &StateDir, name: &VmName) -> anyhow::Result<()> {
        crate::cmd::service::stop_one(state, name, STOP_TIMEOUT)
    }
}

/// The VM directory of an existing VM, or a clear error.
fn existing(ctx: &Ctx, name: &VmName) -> anyhow::Result<VmDir> {
    let vm = ctx.state.vm(name);
    vm.require()
        .with_context(|| format!("no managed VM {name} in {}", ctx.state.root().display()))?;
    Ok(vm)
}

fn host_facts() -> anyhow::Result<HostFacts> {
    common::host_facts()
}
