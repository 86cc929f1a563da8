//! Host lifecycle: probing KVM, talking to hypervisors (QMP, HTTP API), reading the guest
//! init's control channel, and supervising a VM in the foreground.

pub mod api;
pub mod channel;
pub mod kvm;
pub mod qmp;
pub mod supervise;

pub use supervise::{run_foreground, Console, RunError, RunOptions, RunOutcome, StopHandle};
