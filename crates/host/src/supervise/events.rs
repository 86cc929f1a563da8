//! The supervisor's event loop: hypervisor exit, stop requests (signals, the stop
//! handle), the shutdown deadline, guest events, and the KVM-failure watch.

use std::process::ExitStatus;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use microvm_runner::Invocation;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::child::Supervised;
use super::helpers::Helpers;
use super::shutdown::{self, Action};
use super::{Progress, RunError, RunOptions};
use crate::channel::{ChannelEvent, GuestEvent};

const TICK: Duration = Duration::from_millis(25);

pub(super) enum Event {
    Channel(ChannelEvent),
    KvmFailure(String),
    /// The incoming hypervisor runs the guest ([`super::RunOptions::resume_watch`]).
    Resumed,
    ShutdownDone(Result<Action, String>),
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) guest_exit: Option<i32>,
    pub(super) guest_failure: Option<String>,
    pub(super) ready_after: Option<Duration>,
    pub(super) init_time: Option<(f64, f64)>,
    pub(super) shutdown_requested: bool,
    pub(super) forced: bool,
    pub(super) helper_failure: Option<String>,
}

impl State {
    pub(super) fn channel(
        &mut self,
        ev: ChannelEvent,
        spawned: Instant,
        on: &mut impl FnMut(&Progress),
    ) {
        match ev {
            ChannelEvent::Connected => {}
            ChannelEvent::Guest(GuestEvent::Ready { init_start, ready }) => {
                let after = spawned.elapsed();
                self.ready_after = Some(after);
                self.init_time = Some((init_start, ready));
                on(&Progress::Ready {
                    after,
                    init_start,
                    ready,
                });
            }
            ChannelEvent::Guest(GuestEvent::Exit(n)) => {
                self.guest_exit = Some(n);
                on(&Progress::GuestExit(n));
            }
            ChannelEvent::Guest(GuestEvent::Fail(m)) => {
                on(&Progress::GuestFailed(m.clone()));
                self.guest_failure = Some(m);
            }
            ChannelEvent::Malformed(l) => on(&Progress::ChannelNoise(l)),
            ChannelEvent::Failed(m) => on(&Progress::ChannelNoise(m)),
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn event_loop(
    inv: &Invocation,
    opts: &RunOptions,
    hv: &mut Supervised,
    helpers: &mut Helpers,
    stops: &mut Stops,
    tx: &Sender<Event>,
    rx: &Receiver<Event>,
    spawned: Instant,
    state: &mut State,
    on: &mut impl FnMut(&Progress),
) -> Result<ExitStatus, RunError> {
    let mut handled = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(status) = hv.try_wait() {
            return Ok(status);
        }
        if state.helper_failure.is_none() && !state.shutdown_requested {
            state.helper_failure = helpers.watch(opts, stops, on);
        }
        // A helper that cannot be kept running stops the VM like a stop request would.
        let requested = stops.total() + usize::from(state.helper_failure.is_some());
        if requested > handled {
            if handled == 0 {
                state.shutdown_requested = true;
                deadline = Some(Instant::now() + opts.shutdown_timeout);
                on(&Progress::ShutdownRequested {
                    method: shutdown::describe(&inv.shutdown),
                });
                let (method, dir, program, tx) = (
                    inv.shutdown.clone(),
                    opts.workdir.clone(),
                    inv.program.clone(),
                    tx.clone(),
                );
                std::thread::spawn(move || {
                    let r = shutdown::request(&method, &dir, &program);
                    let _ = tx.send(Event::ShutdownDone(r));
                });
            }
            if requested >= 2 && !state.forced {
                force(hv, state, on);
            }
            handled = requested;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) && !state.forced {
            force(hv, state, on);
        }
        if let (Some(timeout), Some(_), None, false) = (
            opts.ready_timeout,
            &inv.control_channel,
            state.ready_after,
            state.shutdown_requested,
        ) {
            if spawned.elapsed() >= timeout && state.guest_failure.is_none() {
                hv.kill();
                return Err(RunError::NotReady {
                    program: inv.program.clone(),
                    timeout,
                    stderr_tail: hv.stderr_tail(),
                });
            }
        }
        match rx.recv_timeout(TICK) {
            Ok(Event::Channel(c)) => state.channel(c, spawned, on),
            Ok(Event::Resumed) => {
                let after = spawned.elapsed();
                state.ready_after = Some(after);
                on(&Progress::Resumed { after });
            }
            Ok(Event::KvmFailure(line)) => {
                hv.kill();
                return Err(RunError::KvmFailed {
                    program: inv.program.clone(),
                    line,
                });
            }
            Ok(Event::ShutdownDone(Ok(Action::Requested))) => {}
            Ok(Event::ShutdownDone(Ok(Action::Signal(sig)))) => hv.signal(sig),
            Ok(Event::ShutdownDone(Err(error))) => {
                on(&Progress::ShutdownFallback { error });
                hv.signal(SIGTERM);
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {}
        }
    }
}

fn force(hv: &mut Supervised, state: &mut State, on: &mut impl FnMut(&Progress)) {
    state.forced = true;
    on(&Progress::Killed);
    hv.signal(libc::SIGKILL);
}

/// Stop requests: SIGINT/SIGTERM (when handled) plus the [`super::StopHandle`].
pub(super) struct Stops {
    signals: Option<Signals>,
    received: usize,
    handle: super::StopHandle,
    base: usize,
}

impl Stops {
    pub(super) fn new(opts: &RunOptions) -> Result<Self, RunError> {
        let signals = if opts.handle_signals {
            Some(
                Signals::new([SIGINT, SIGTERM]).map_err(|source| RunError::Spawn {
                    program: "signal handler".into(),
                    source,
                })?,
            )
        } else {
            None
        };
        Ok(Stops {
            signals,
            received: 0,
            handle: opts.stop.clone(),
            base: opts.stop.count(),
        })
    }

    pub(super) fn total(&mut self) -> usize {
        if let Some(s) = &mut self.signals {
            self.received += s.pending().count();
        }
        self.received + self.handle.count().saturating_sub(self.base)
    }
}
