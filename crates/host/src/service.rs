//! Running managed VMs as services: the supervisor of one VM ([`managed`]), microvm's own
//! service manager for hosts without systemd ([`detach`]), readiness for systemd
//! ([`notify`]), PCI passthrough setup ([`pci`]) and the run record ([`record`]).
//! See docs/host.md ("Supervisor", "Service managers").

pub mod adopted;
pub mod detach;
pub mod logpipe;
pub mod machined;
pub mod managed;
pub mod notify;
pub mod outcome;
pub mod pci;
pub mod record;
pub mod recover;
pub mod refusal;
mod run_options;

pub use managed::{
    forward_signals, load_runner, supervise, ConsoleMode, ManagedOptions, RestartMode,
    RestartPolicy, Runner, ServiceError,
};
