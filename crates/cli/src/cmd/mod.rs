//! One module per verb.

mod balloon;
mod build;
mod built;
mod check;
mod common;
mod generate;
pub mod kernel;
mod manage;
mod network;
mod network_dhcp;
mod plan;
mod run;
mod service;
pub mod ssh;

pub use service::migrate::{MigrateArgs, SnapshotArgs};

use crate::cli::{Cli, Command, HostCommand};

pub fn dispatch(mut cli: Cli) -> anyhow::Result<i32> {
    // The detached supervisor runs in the VM's directory: a relative state directory must
    // name the same directory there.
    cli.state_dir = std::path::absolute(&cli.state_dir)
        .map_err(|e| anyhow::anyhow!("resolving {}: {e}", cli.state_dir.display()))?;
    match cli.command {
        Command::Check(args) => check::run(&args),
        Command::Plan(args) => plan::run(&args, &cli.state_dir),
        Command::Build(args) => build::run(&args, &cli.state_dir),
        Command::Run(args) => run::run(&args, &cli.state_dir),
        Command::Generate(args) => generate::run(&args),
        Command::Kernel(cmd) => kernel::run(&cmd, &cli.state_dir),
        Command::Create(args) => manage::create(&cli.state_dir, &args),
        Command::Update(args) => manage::update(&cli.state_dir, &args),
        Command::List(args) => manage::list(&cli.state_dir, &args),
        Command::Remove(args) => manage::remove(&cli.state_dir, &args),
        Command::Gc(args) => manage::gc(&cli.state_dir, &args),
        Command::Host(HostCommand::Apply(args)) => manage::host_apply(&cli.state_dir, &args),
        Command::Host(HostCommand::Install(args)) => service::host_install(&cli.state_dir, &args),
        Command::Start(args) => service::start(&cli.state_dir, &args),
        Command::Stop(args) => service::stop(&cli.state_dir, &args),
        Command::Snapshot(args) => service::migrate::snapshot(&cli.state_dir, &args),
        Command::Migrate(args) => service::migrate::migrate(&cli.state_dir, &args),
        Command::Restart(args) => service::restart(&cli.state_dir, &args),
        Command::Shutdown(args) => service::shutdown(&cli.state_dir, &args),
        Command::Status(args) => service::status(&cli.state_dir, &args),
        Command::Logs(args) => service::logs(&cli.state_dir, &args),
        Command::Console(args) => service::console(&cli.state_dir, &args),
        Command::Network(cmd) => network::run(&cli.state_dir, cmd),
        Command::Balloon(args) => balloon::run(&cli.state_dir, &args),
        Command::Ssh(args) => ssh::ssh(&cli.state_dir, &args),
        Command::VsockProxy(args) => ssh::vsock_proxy(&args),
        Command::Supervise(args) => service::supervise(&cli.state_dir, &args),
    }
}
