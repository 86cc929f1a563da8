//! `microvm generate`: man pages and shell completions from the clap definitions.

use anyhow::Context as _;
use clap::CommandFactory;

use crate::cli::{Cli, Generate, GenerateArgs, Shell};
use crate::exit::OK;

pub fn run(args: &GenerateArgs) -> anyhow::Result<i32> {
    match &args.what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(with_exit_codes(Cli::command()), dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))?;
        }
        Generate::Completions { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
                Shell::Elvish => clap_complete::Shell::Elvish,
                Shell::Powershell => clap_complete::Shell::PowerShell,
            };
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "microvm",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(OK)
}

/// Every page ends with the exit-code table (the top-level and `run` help have it too).
fn with_exit_codes(cmd: clap::Command) -> clap::Command {
    cmd.mut_subcommands(|sub| {
        let sub = with_exit_codes(sub);
        if sub.get_after_long_help().is_some() {
            sub
        } else {
            sub.after_long_help(crate::exit::EXIT_CODES_HELP)
        }
    })
}
