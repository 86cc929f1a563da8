//! Host lifecycle: probing KVM ([`kvm`]), talking to hypervisors ([`qmp`], [`api`]),
//! reading the guest init's control channel ([`channel`]) and supervising a VM in the
//! foreground ([`supervise`]). Synchronous: std threads and processes, no async runtime.

pub mod api;
pub mod balloon;
pub mod channel;
pub mod console;
pub mod console_channel;
pub mod kvm;
pub mod migrate;
pub mod net;
pub mod network;
pub mod privilege;
pub mod qmp;
pub mod service;
pub mod state;
pub mod supervise;
pub mod tool;
pub mod trust;
pub mod units;
pub mod unixpath;

pub use supervise::{
    run_foreground, run_foreground_with, Console, Progress, RunError, RunOptions, RunOutcome,
    StopHandle,
};

/// An error and its sources on one line, `outer: inner: …` (the supervisor's log lines
/// and the reasons it records).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
