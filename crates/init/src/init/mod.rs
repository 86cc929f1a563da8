//! The boot sequence, one step per module, in the order they run.

pub mod console;
pub mod control;
pub mod devices;
pub mod dhcp;
pub mod exec;
pub mod fail;
pub mod modules;
pub mod mounts;
pub mod net;
pub mod power;
pub mod root;
pub mod ssh;
pub mod switch;
pub mod system;
pub mod systemd;

use std::convert::Infallible;

use microvm_init::plan::{GuestPlan, PLAN_PATH, PLAN_VERSION};

use fail::{Context, Failure};

/// Where the new root is assembled inside the initramfs.
pub const NEW_ROOT: &str = "/newroot";

/// Runs the whole boot; returns only on failure.
pub fn run(started: f64) -> Result<Infallible, Failure> {
    mounts::early().ctx(|| "early mounts".into())?;
    console::attach_stdio();
    console::say(&format!(
        "microvm-init {}: started at {started:.3} s",
        env!("CARGO_PKG_VERSION")
    ));

    let plan = read_plan()?;
    fail::remember_control(plan.control.clone());
    modules::load_all(&plan.modules)?;
    console::mark("modules");
    if let Some(channel) = &plan.control {
        control::open(channel, devices::WAIT)
            .ctx(|| format!("open the control channel {channel:?}"))?;
    }
    console::mark("control");
    root::assemble(&plan)?;
    console::mark("root");
    system::configure(&plan)?;
    ssh::install_keys(&plan)?;
    net::configure(&plan.network)?;
    console::mark("network");
    exec::start(&plan, started)
}

fn read_plan() -> Result<GuestPlan, Failure> {
    let text = std::fs::read_to_string(PLAN_PATH).ctx(|| format!("read {PLAN_PATH}"))?;
    let plan = GuestPlan::from_json(&text).ctx(|| format!("parse {PLAN_PATH}"))?;
    if plan.version != PLAN_VERSION {
        return Err(Failure::new(
            format!("plan {PLAN_PATH}"),
            format!(
                "version {} is not supported (this init reads version {PLAN_VERSION})",
                plan.version
            ),
        ));
    }
    Ok(plan)
}
