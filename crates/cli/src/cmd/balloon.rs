//! `microvm balloon NAME SIZE`: resize the balloon of a running managed VM (the size is
//! the balloon's, in MiB: memory taken from the guest), like the runner's
//! `bin/microvm-balloon`.

use std::path::Path;

use anyhow::{bail, Context as _};
use microvm_host::balloon;
use microvm_host::state::StateDir;
use microvm_spec::types::VmName;

use crate::cli::BalloonArgs;
use crate::exit::OK;

pub fn run(state_root: &Path, args: &BalloonArgs) -> anyhow::Result<i32> {
    let name: VmName = args
        .name
        .parse()
        .map_err(|e| anyhow::anyhow!("{:?} is not a VM name: {e}", args.name))?;
    let vm = StateDir::new(state_root).vm(&name);
    vm.require()
        .with_context(|| format!("no managed VM {name} in {}", state_root.display()))?;
    let Some(runner) = vm.booted() else {
        bail!("{name} is not running");
    };
    let Some(control) = balloon::load(&runner)? else {
        bail!(
            "{name} has no balloon microvm can resize (set `balloon = true`; \
             kvmtool and alioth offer no control for it)"
        );
    };
    let size = balloon::set(&control, vm.path(), args.size)
        .with_context(|| format!("resizing the balloon of {name}"))?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "name": name.as_str(), "requestedMib": args.size, "balloonMib": size })
        );
    } else {
        println!("{size}");
    }
    Ok(OK)
}
