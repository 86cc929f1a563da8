//! Where the hypervisor's serial console (its stdin/stdout) goes. It gets the slave side
//! of a pty and a [`ConsoleRelay`] serves the master, whenever the console is the user's
//! terminal or a log file, and for a managed console when the guest reports on the
//! console channel. The relay reads the nonce-framed control lines, keeps firmware
//! escape codes out of a console nobody interacts with, and on a terminal holds it in
//! raw mode until the run ends ([`TerminalGuard`]). A managed console without the console
//! channel hands the outer pty to the hypervisor directly.

use std::fs::File;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::mpsc::Sender;
use std::time::Duration;

use super::child::StderrSink;
use super::events::Event;
use super::{Console, RunError, RunOptions};
use crate::console::{open_pty, TerminalGuard};
use crate::console_channel::{ConsoleRelay, RelayEnds};

/// How long the relay may take to pass on the last output after the hypervisor exits.
const DRAIN: Duration = Duration::from_secs(2);

/// The console as set up for one run; [`ConsoleRoute::finish`] ends it.
#[derive(Default)]
pub(super) struct ConsoleRoute {
    relay: Option<ConsoleRelay>,
    terminal: Option<TerminalGuard>,
}

impl ConsoleRoute {
    /// Drains the relay, then gives the terminal back.
    pub(super) fn finish(&mut self) {
        if let Some(mut r) = self.relay.take() {
            r.finish(DRAIN);
        }
        self.terminal = None;
    }
}

impl Drop for ConsoleRoute {
    fn drop(&mut self) {
        self.finish();
    }
}

fn spawn_err(what: &str) -> impl Fn(std::io::Error) -> RunError + '_ {
    move |source| RunError::Spawn {
        program: what.into(),
        source,
    }
}

/// Sets `cmd`'s stdin/stdout; returns its stderr sink, whether it gets its own process
/// group, and the route. `nonce`: the console channel's, when the guest reports there.
pub(super) fn route(
    cmd: &mut Command,
    opts: &RunOptions,
    nonce: Option<&str>,
    tx: &Sender<Event>,
) -> Result<(StderrSink, bool, ConsoleRoute), RunError> {
    let outer = match &opts.console {
        Console::Pty(slave) if nonce.is_none() => {
            let e = spawn_err("the console terminal");
            cmd.stdin(Stdio::from(slave.0.try_clone().map_err(&e)?))
                .stdout(Stdio::from(slave.0.try_clone().map_err(&e)?));
            return Ok((StderrSink::Plain, true, ConsoleRoute::default()));
        }
        other => other,
    };
    let e = spawn_err("the console relay");
    let pty = open_pty().map_err(&e)?;
    // stdin is the pty as well: stratovirt and alioth refuse a console that is not a
    // terminal (alioth: `tcgetattr() failed`).
    cmd.stdin(Stdio::from(pty.slave.try_clone().map_err(&e)?));
    let mut route = ConsoleRoute::default();
    let (ends, sink) = match outer {
        Console::Inherit => {
            let stdout = std::io::stdout().as_fd().try_clone_to_owned().map_err(&e)?;
            route.terminal = TerminalGuard::raw_stdin();
            let input = Some(std::io::stdin().as_fd().try_clone_to_owned().map_err(&e)?);
            let interactive = route.terminal.is_some() && rustix::termios::isatty(&stdout);
            let stop = opts.stop.clone();
            let ends = RelayEnds {
                output: Box::new(File::from(stdout)),
                input,
                strip_escapes: !interactive,
                // In raw mode Ctrl-C goes to the guest; Ctrl-] stops the VM.
                on_detach: route
                    .terminal
                    .is_some()
                    .then(|| Box::new(move || stop.request()) as Box<dyn Fn() + Send>),
            };
            (ends, StderrSink::Plain)
        }
        Console::Log(log) => {
            let err = |source| RunError::WriteFile {
                path: log.clone(),
                source,
            };
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .map_err(err)?;
            let ends = RelayEnds {
                output: Box::new(file.try_clone().map_err(err)?),
                input: None,
                strip_escapes: true,
                on_detach: None,
            };
            (ends, StderrSink::File(file))
        }
        Console::Pty(slave) => {
            let ends = RelayEnds {
                output: Box::new(File::from(slave.0.try_clone().map_err(&e)?)),
                input: Some(slave.0.try_clone().map_err(&e)?),
                strip_escapes: false,
                on_detach: None,
            };
            (ends, StderrSink::Plain)
        }
    };
    cmd.stdout(Stdio::from(pty.slave));
    let tx = tx.clone();
    let relay = ConsoleRelay::start(pty.master, ends, nonce, move |ev| {
        let _ = tx.send(Event::Channel(ev));
    })
    .map_err(&e)?;
    route.relay = Some(relay);
    Ok((sink, true, route))
}
