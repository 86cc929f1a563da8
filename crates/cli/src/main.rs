//! `microvm`: declarative MicroVMs on any Linux host. A thin shell over the libraries:
//! parse arguments, run one verb, print the error chain once, exit with a documented code.
#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod exit;
mod log;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    log::init();
    let code = match cmd::dispatch(cli) {
        Ok(code) => code,
        Err(err) => exit::report(&err),
    };
    std::process::exit(code);
}
