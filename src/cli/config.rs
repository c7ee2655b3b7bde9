//! `tierkv config`: print a complete commented configuration, check a file,
//! print the reference table of docs/configuration.md. All three come from
//! `crate::config::reference`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use crate::config::check::{check, Problem};
use crate::config::{reference, Config};

/// `tierkv config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print a complete configuration file: every key with its default and
    /// what it does, keys unset by default commented out.
    Example,
    /// Check a configuration file: name each unknown or wrong key with its
    /// line (exit 2), or say it is valid (exit 0).
    Check {
        /// The TOML file.
        file: PathBuf,
    },
    /// Print the reference table of docs/configuration.md (Markdown).
    Reference,
}

/// Runs a `config` command.
pub fn run(command: ConfigCommand) -> ExitCode {
    match command {
        ConfigCommand::Example => {
            print!("{}", reference::example());
            ExitCode::SUCCESS
        }
        ConfigCommand::Reference => {
            print!("{}", reference::markdown());
            ExitCode::SUCCESS
        }
        ConfigCommand::Check { file } => check_file(&file),
    }
}

fn check_file(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) => {
            eprintln!("error: cannot read {}: {error}", file.display());
            return ExitCode::from(2);
        }
    };
    let mut problems = check(&text);
    if problems.is_empty() {
        // What only the whole configuration shows: ranges, namespaces,
        // migrations, origins, TLS files. Environment variables are left
        // out: this checks the file.
        let checked = Config::load(Some(file), &Default::default())
            .and_then(|config| crate::server::validate(&config));
        if let Err(error) = checked {
            let message = error.to_string();
            let message = message
                .strip_prefix("invalid configuration: ")
                .unwrap_or(&message)
                .to_string();
            problems.push(Problem {
                line: line_named_in(&text, &message),
                key: None,
                message,
            });
        }
    }
    if problems.is_empty() {
        println!("{}: valid", file.display());
        return ExitCode::SUCCESS;
    }
    for problem in &problems {
        match problem.line {
            Some(line) => eprint!("{}:{line}: ", file.display()),
            None => eprint!("{}: ", file.display()),
        }
        match &problem.key {
            Some(key) => eprintln!("{key}: {}", problem.message),
            None => eprintln!("{}", problem.message),
        }
    }
    eprintln!(
        "{}: {} problem(s); `tierkv config example` prints every key with its default",
        file.display(),
        problems.len()
    );
    ExitCode::from(2)
}

/// The line of the key a validation message starts with (`block_cache_mb
/// must be…`, `namespaces: …`, `migrations[1] (…)`, `cache.origins[0]…`):
/// the first line assigning its last name, or its table's header.
fn line_named_in(text: &str, message: &str) -> Option<usize> {
    let key: String = message
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.'))
        .collect();
    let name = key.rsplit('.').next().filter(|name| !name.is_empty())?;
    text.lines()
        .position(|line| {
            let line = line.trim_start();
            line.split_once('=')
                .is_some_and(|(assigned, _)| assigned.trim() == name)
                || line.trim_start_matches('[').trim_end_matches(']') == key
        })
        .map(|index| index + 1)
}
