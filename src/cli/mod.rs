//! The `tierkv` command line: `serve` runs the server; `kv` talks to one,
//! modelled on `wrangler kv`; `session` manages sessions; `admin` migrates
//! records and retires namespaces; `cache` reads through and manages the
//! cache.

mod admin;
mod cache;
mod completions;
mod config;
mod connect;
mod copy;
mod error;
mod kv;
mod output;
mod session;

pub use connect::{CliChannel, ConnectArgs};
pub use error::{CliError, EXIT_CODES};

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::server::{self, ServerError};

/// Default endpoint of client commands.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// tierkv: a gRPC key-value store over RocksDB.
#[derive(Debug, Parser)]
#[command(name = "tierkv", version, about, after_help = EXIT_CODES)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Read and write keys on a running server.
    Kv(kv::KvArgs),
    /// Create, check, rotate and revoke sessions on a running server.
    Session(session::SessionArgs),
    /// Migrate records and retire namespaces on a running server.
    Admin(admin::AdminArgs),
    /// Read through the cache tiers, put, invalidate and purge cached keys.
    Cache(cache::CacheArgs),
    /// Make tokens for `[[auth.tokens]]`.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Print a complete commented configuration, or check a configuration file.
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Print the shell completion script of bash, zsh or fish.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: completions::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Print a new random token (256 random bits), and the SHA-256 to put in
    /// the configuration.
    NewToken,
    /// Print the SHA-256 of a token read from stdin (kept out of shell
    /// history). Short or low-entropy tokens are refused: the configured hash
    /// is unsalted, so only tokens of 128 random bits or more are safe in it.
    HashToken {
        /// Hash a token that looks weak anyway (its hash, once leaked, may
        /// give the token away).
        #[arg(long)]
        allow_weak: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "TIERKV_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (overrides the file and TIERKV_LISTEN).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (overrides the file and TIERKV_DATA_DIR).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the metrics and probes listener, or "off" (overrides the file and
    /// TIERKV_METRICS_LISTEN).
    #[arg(long)]
    metrics_listen: Option<String>,
}

/// Runs the command line with the process's arguments.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tierkv: {error}");
                tracing::error!(%error, "server failed");
                ExitCode::from(1)
            }
        },
        Command::Kv(args) => kv::run(args).await,
        Command::Session(args) => session::run(args).await,
        Command::Admin(args) => admin::run(args).await,
        Command::Auth(command) => auth(command),
        Command::Cache(args) => cache::run(args).await,
        Command::Config(command) => config::run(command),
        Command::Completions { shell } => completions::print(shell),
    }
}

async fn serve(args: ServeArgs) -> Result<(), ServerError> {
    restrict_file_modes();
    let env: std::collections::HashMap<String, String> = std::env::vars().collect();
    // First thing: until it is handled, SIGHUP (a reload) ends the process.
    let reload = server::reload::Reload::on_hangup(args.config.clone(), env.clone())
        .map_err(|error| ServerError::Reload(format!("cannot listen for SIGHUP: {error}")))?;
    let mut config = Config::load(args.config.as_deref(), &env)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(data_dir) = args.data_dir {
        config.data_dir = data_dir;
    }
    if let Some(metrics_listen) = args.metrics_listen {
        config.metrics_listen = metrics_listen;
    }
    server::validate(&config)?;
    crate::telemetry::init(config.log_format, &config.log_level);
    match server::connections::raise_descriptor_limit() {
        Ok(limit) if limit < config.max_connections as u64 => tracing::warn!(
            descriptor_limit = limit,
            max_connections = config.max_connections,
            "the descriptor limit is below max_connections; accept will fail (and back off) before the connection limit is reached"
        ),
        Ok(limit) => tracing::debug!(descriptor_limit = limit, "descriptor limit raised to the hard limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the descriptor limit"),
    }

    let clock: SharedClock = Arc::new(SystemClock);
    // Binding first fails fast on a taken port, before a long open (or a
    // wait for an unreachable etcd).
    let listeners = server::Listeners::bind(&config).await?;
    let engine = server::store::open_store(&config, Arc::clone(&clock)).await?;
    print_banner(&config, &listeners);
    server::serve_reloading(config, engine, listeners, server::shutdown_signal(), reload).await
}

/// Prints `make run`'s banner on stdout once the sockets are bound and the
/// store is open (connections made from here on queue until the first
/// accept), for human logs only: with JSON logs a machine reads the output.
fn print_banner(config: &Config, listeners: &server::Listeners) {
    use server::banner::{banner, program_for_banner, MetricsState};
    if config.log_format != crate::config::LogFormat::Human {
        return;
    }
    let Ok(grpc) = listeners.grpc.local_addr() else {
        return;
    };
    let metrics = match (&listeners.metrics, listeners.metrics_taken) {
        (Some(listener), _) => listener
            .local_addr()
            .map(MetricsState::On)
            .unwrap_or(MetricsState::Off),
        (None, Some(taken)) => MetricsState::Taken(taken),
        (None, None) => MetricsState::Off,
    };
    let program = match (std::env::current_exe(), std::env::current_dir()) {
        (Ok(exe), Ok(cwd)) => program_for_banner(&exe, &cwd),
        _ => "tierkv".to_string(),
    };
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    // A closed stdout must not stop the server; the log says "serving" too.
    let _ = stdout.write_all(banner(config, grpc, metrics, &program).as_bytes());
    let _ = stdout.flush();
}

/// Makes every file and directory the server creates private to its user
/// (files 0600, directories 0700), by adding 077 to the process umask before
/// anything is opened. RocksDB creates its own files (tables, logs, backups'
/// copies) with mode 0644 less the umask, so the umask is the one place that
/// covers them all. Bits the caller already masks stay masked.
fn restrict_file_modes() {
    // SAFETY: umask(2) only swaps the process's file mode creation mask and
    // cannot fail; nothing has created a file yet.
    unsafe {
        let inherited = libc::umask(0o077);
        libc::umask(inherited | 0o077);
    }
}

fn auth(command: AuthCommand) -> ExitCode {
    match command {
        AuthCommand::NewToken => {
            let token = crate::auth::new_token();
            println!("token:        {token}");
            println!("token_sha256: {}", crate::auth::hash_token(&token));
            eprintln!("give the token to the client (TIERKV_TOKEN); put only token_sha256 in [[auth.tokens]]");
            ExitCode::SUCCESS
        }
        AuthCommand::HashToken { allow_weak } => {
            let mut token = String::new();
            if let Err(error) = std::io::stdin().read_line(&mut token) {
                eprintln!("error: reading the token from stdin: {error}");
                return ExitCode::from(2);
            }
            let token = token.trim();
            if token.is_empty() {
                eprintln!("error: no token on stdin");
                return ExitCode::from(2);
            }
            if let Err(weak) = crate::auth::check_token_strength(token) {
                if !allow_weak {
                    // Never echo the token.
                    eprintln!(
                        "error: the token looks weak: {weak}. token_sha256 is an unsalted hash, safe only for tokens of 128 random bits or more: make one with `tierkv auth new-token`, or pass --allow-weak to hash this one anyway"
                    );
                    return ExitCode::from(2);
                }
                eprintln!(
                    "warning: the token looks weak ({weak}); hashing it because of --allow-weak"
                );
            }
            println!("{}", crate::auth::hash_token(token));
            ExitCode::SUCCESS
        }
    }
}
