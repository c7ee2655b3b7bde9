//! `tierkv completions bash|zsh|fish`: the shell completion script, made by
//! clap_complete from the same definition the parser uses, so it cannot
//! drift from the commands.

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, ValueEnum};

use super::error::CliError;
use super::Cli;

/// The shells `tierkv completions` writes a script for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// bash: `source <(tierkv completions bash)`.
    Bash,
    /// zsh: write it as `_tierkv` in a directory of `$fpath`.
    Zsh,
    /// fish: write it to `~/.config/fish/completions/tierkv.fish`.
    Fish,
}

/// Prints the completion script of `shell` on stdout.
pub fn print(shell: Shell) -> ExitCode {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut command = Cli::command();
    // Into memory first: clap_complete panics when its writer fails (a
    // closed pipe, as with `| head`); a failed write here is an exit code.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "tierkv", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => CliError::Output(error).report(),
    }
}
