//! What a planner collects while it renders a VM's devices, one device kind at a time:
//! the argv, the taps and macvtap fds the host prepares, and warnings. Each planner
//! renders every device kind in one function of its own (`store_disk`, `volumes`,
//! `shares`, `interfaces`, `vsock`, `balloon`, `passthrough`) that writes into an [`Out`].

use microvm_spec::config::Interface;

use crate::{MacvtapFd, TapSetup};

#[derive(Debug, Default)]
pub(crate) struct Out {
    pub(crate) args: Vec<String>,
    pub(crate) taps: Vec<TapSetup>,
    pub(crate) macvtap_fds: Vec<MacvtapFd>,
    pub(crate) warnings: Vec<String>,
}

impl Out {
    /// An argv that starts with `args` (a subcommand such as `run`).
    pub(crate) fn new<'a>(args: impl IntoIterator<Item = &'a str>) -> Self {
        Out {
            args: args.into_iter().map(str::to_owned).collect(),
            ..Out::default()
        }
    }

    pub(crate) fn flag(&mut self, flag: &str) {
        self.args.push(flag.to_owned());
    }

    pub(crate) fn opt(&mut self, flag: &str, value: impl Into<String>) {
        self.args.push(flag.to_owned());
        self.args.push(value.into());
    }

    /// Adds `warning` unless it is there already.
    pub(crate) fn warn_once(&mut self, warning: &str) {
        if !self.warnings.iter().any(|w| w == warning) {
            self.warnings.push(warning.to_owned());
        }
    }

    /// A tap the host creates before start (with `IFF_VNET_HDR`, on the interface's
    /// bridge when it names one).
    pub(crate) fn tap(&mut self, iface: &Interface, multi_queue: bool) {
        self.taps.push(TapSetup {
            name: iface.id.to_string(),
            vnet_hdr: true,
            multi_queue,
            bridge: iface.bridge.clone(),
        });
    }

    /// The fds of macvtap `interface`'s `queues` queues, which the hypervisor inherits:
    /// numbered on from 3 across all macvtaps (inventory §2.0).
    pub(crate) fn macvtap_fds(&mut self, interface: &str, queues: u32) -> Vec<u32> {
        (0..queues)
            .map(|queue| {
                let fd = 3 + self.macvtap_fds.len() as u32;
                self.macvtap_fds.push(MacvtapFd {
                    interface: interface.to_owned(),
                    queue,
                    fd,
                });
                fd
            })
            .collect()
    }
}
