//! `tierkv admin …`: batch migrations and namespaces of a running server.
//!
//! Every command prints JSON on stdout; `migrate` also draws a progress bar
//! on stderr when it is a terminal and reports keys it could not migrate on
//! stderr as it goes.

use std::process::ExitCode;
use std::time::Duration;

use super::CliChannel as Channel;
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::error::{CliError, EXIT_OTHER};
use super::output::{print_rows, waiting, OutputFormat};
use super::ConnectArgs;
use crate::proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;

/// Arguments of `tierkv admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: AdminCommand,
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Migrate every record under a prefix to its configured schema version
    /// (resumes an interrupted run; Ctrl-C stops it, keeping its checkpoint).
    Migrate {
        /// The key prefix.
        prefix: String,
        /// Count and report what would be migrated; write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Records per batch (default 500, at most 10,000).
        #[arg(long, default_value_t = 0)]
        batch_size: u32,
        /// Most records examined per second.
        #[arg(long)]
        rate: Option<u32>,
    },
    /// Print the state of the running or last migration of a prefix.
    Migration {
        /// The key prefix.
        prefix: String,
    },
    /// Print every namespace with its estimated key count and size.
    Namespaces {
        /// `json` (the default) or `table`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Delete every key of a namespace. Without --expected-keys, prints how
    /// many live keys it holds and deletes nothing.
    DropNamespace {
        /// The namespace's prefix.
        prefix: String,
        /// The namespace's exact live key count, as a confirmation.
        #[arg(long)]
        expected_keys: Option<u64>,
        /// Needed to drop the default namespace "" or one a service owns
        /// (the session namespace, one holding cache origins).
        #[arg(long)]
        force: bool,
    },
    /// Print the server's figures (the same as its /metrics): Prometheus
    /// text, or JSON samples with --json.
    Stats {
        /// Only metrics whose name starts with this (e.g. tierkv_rpc_).
        #[arg(long, default_value = "")]
        prefix: String,
        /// `text`: the Prometheus text; `json`: an array of samples;
        /// `table`: one line per sample.
        #[arg(long, value_enum, default_value_t = StatsOutput::Text)]
        output: StatsOutput,
        /// The same as `--output json`.
        #[arg(long, conflicts_with = "output")]
        json: bool,
    },
    /// Write a consistent copy of the whole store, while serving, into the
    /// server's backup_dir; prints its name and size.
    Backup {
        /// The backup's directory name under backup_dir (default:
        /// backup-<unix milliseconds>).
        name: Option<String>,
    },
    /// Copy every record of a stopped store into another, offline (an
    /// embedded RocksDB into etcd, to run several replicas): every
    /// namespace, values, metadata, expiry and schema versions; versions are
    /// new. Resumes an interrupted copy. Talks to no server.
    Copy(super::copy::CopyArgs),
}

/// How `admin stats` prints the figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StatsOutput {
    /// The Prometheus text exposition, as /metrics serves it.
    Text,
    /// An array of `{name, labels, value}` samples.
    Json,
    /// One aligned line per sample.
    Table,
}

/// Runs a `tierkv admin` command; exit codes as in [`super::EXIT_CODES`]
/// (6 when a migration left records it could not migrate).
pub async fn run(args: AdminArgs) -> ExitCode {
    // The copy opens stores itself; it connects to no server.
    if let AdminCommand::Copy(copy) = args.command {
        return super::copy::run(copy).await;
    }
    match execute(args).await {
        Ok(code) => code,
        Err(error) => error.report(),
    }
}

async fn execute(args: AdminArgs) -> Result<ExitCode, CliError> {
    let mut client = args.connect.client().await?.admin();
    match args.command {
        AdminCommand::Migrate {
            prefix,
            dry_run,
            batch_size,
            rate,
        } => migrate(&mut client, prefix, dry_run, batch_size, rate).await,
        AdminCommand::Migration { prefix } => {
            let state = client
                .get_migration(pb::GetMigrationRequest { prefix })
                .await?
                .into_inner();
            print_json(&state_json(&state));
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Namespaces { output } => {
            let namespaces = namespaces(&mut client).await?;
            let list: Vec<Value> = namespaces
                .iter()
                .map(|namespace| {
                    json!({
                        "prefix": namespace.prefix,
                        "column_family": namespace.column_family,
                        "estimated_keys": namespace.estimated_keys,
                        "estimated_live_bytes": namespace.estimated_live_bytes,
                        "owner": (!namespace.owner.is_empty()).then_some(&namespace.owner),
                    })
                })
                .collect();
            print_rows(
                output,
                &[
                    "prefix",
                    "column_family",
                    "estimated_keys",
                    "estimated_live_bytes",
                    "owner",
                ],
                &list,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Stats {
            prefix,
            output,
            json,
        } => {
            let response = client
                .stats(pb::StatsRequest {
                    name_prefix: prefix.clone(),
                })
                .await?
                .into_inner();
            let format = match (json, output) {
                (true, _) | (false, StatsOutput::Json) => Some(OutputFormat::Json),
                (false, StatsOutput::Table) => Some(OutputFormat::Table),
                (false, StatsOutput::Text) => None,
            };
            if let Some(format) = format {
                let samples: Vec<Value> = response
                    .samples
                    .iter()
                    .map(|sample| {
                        json!({
                            "name": sample.name,
                            "labels": sample.labels,
                            "value": sample.value,
                        })
                    })
                    .collect();
                print_rows(format, &["name", "labels", "value"], &samples)?;
            } else {
                // The text, limited to the metrics asked for (and their comments).
                for line in response.text.lines() {
                    let name = line
                        .strip_prefix("# HELP ")
                        .or_else(|| line.strip_prefix("# TYPE "))
                        .unwrap_or(line);
                    if name.starts_with(&prefix) {
                        println!("{line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminCommand::Backup { name } => {
            let call = client.backup(pb::BackupRequest {
                name: name.unwrap_or_default(),
            });
            let response = waiting("backing up the store".to_string(), call)
                .await?
                .into_inner();
            let took_ms = response
                .took
                .map(|took| took.seconds * 1000 + i64::from(took.nanos) / 1_000_000)
                .unwrap_or_default();
            print_json(&json!({
                "name": response.name,
                "files": response.files,
                "bytes": response.bytes,
                "took_ms": took_ms,
            }));
            Ok(ExitCode::SUCCESS)
        }
        // Handled by [`run`] before connecting; kept here for completeness.
        AdminCommand::Copy(copy) => Ok(super::copy::run(copy).await),
        AdminCommand::DropNamespace {
            prefix,
            expected_keys,
            force,
        } => {
            let message = match expected_keys {
                Some(_) => format!("dropping namespace {prefix:?}"),
                None => format!("counting the keys of namespace {prefix:?}"),
            };
            let call = client.drop_namespace(pb::DropNamespaceRequest {
                prefix,
                expected_keys,
                force,
            });
            let response = waiting(message, call).await?.into_inner();
            print_json(&json!({ "deleted_keys": response.deleted_keys }));
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn namespaces(
    client: &mut AdminServiceClient<Channel>,
) -> Result<Vec<pb::Namespace>, CliError> {
    Ok(client
        .list_namespaces(pb::ListNamespacesRequest {})
        .await?
        .into_inner()
        .namespaces)
}

async fn migrate(
    client: &mut AdminServiceClient<Channel>,
    prefix: String,
    dry_run: bool,
    batch_size: u32,
    rate: Option<u32>,
) -> Result<ExitCode, CliError> {
    // A bar with a length when the prefix is a whole namespace, whose size is
    // estimated; a spinner with counts otherwise.
    let estimate = namespaces(client)
        .await
        .ok()
        .and_then(|namespaces| {
            namespaces
                .into_iter()
                .find(|namespace| namespace.prefix == prefix && !prefix.is_empty())
        })
        .map(|namespace| namespace.estimated_keys);
    let bar = match estimate {
        Some(total) => ProgressBar::new(total.max(1)).with_style(
            ProgressStyle::with_template(
                "{bar:40} {pos}/{len} scanned (estimated) {msg} [{elapsed_precise}, {per_sec}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {pos} scanned {msg} [{elapsed_precise}]")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        ),
    };
    bar.set_draw_target(ProgressDrawTarget::stderr());
    bar.enable_steady_tick(Duration::from_millis(200));

    let mut stream = client
        .migrate(pb::MigrateRequest {
            prefix,
            dry_run,
            batch_size,
            max_records_per_second: rate,
        })
        .await?
        .into_inner();
    let mut last: Option<pb::MigrationState> = None;
    loop {
        let message = match stream.message().await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(status) => {
                bar.abandon();
                return Err(status.into());
            }
        };
        for failure in &message.failures {
            bar.suspend(|| eprintln!("not migrated: {:?}: {}", failure.key, failure.reason));
        }
        if message.failures_not_listed > 0 {
            bar.suspend(|| {
                eprintln!(
                    "not migrated: {} more keys of this batch (not listed)",
                    message.failures_not_listed
                )
            });
        }
        if let Some(state) = message.state {
            if bar.length().is_some_and(|length| state.scanned > length) {
                bar.set_length(state.scanned);
            }
            bar.set_position(state.scanned);
            bar.set_message(format!(
                "migrated {} current {} failed {} newer {} skipped {}",
                state.migrated,
                state.already_current,
                state.failed,
                state.newer_than_known,
                state.skipped
            ));
            last = Some(state);
        }
    }
    bar.finish();
    let Some(state) = last else {
        return Err(CliError::Incomplete(
            "the server ended the migration without reporting progress".into(),
        ));
    };
    print_json(&state_json(&state));
    if !state.done {
        return Err(CliError::Incomplete(
            "the migration stopped before the end; run the command again to resume".into(),
        ));
    }
    Ok(if state.failed > 0 {
        ExitCode::from(EXIT_OTHER)
    } else {
        ExitCode::SUCCESS
    })
}

fn state_json(state: &pb::MigrationState) -> Value {
    let time = |timestamp: &Option<prost_types::Timestamp>| {
        timestamp.as_ref().map(|timestamp| timestamp.to_string())
    };
    json!({
        "prefix": state.prefix,
        "dry_run": state.dry_run,
        "scanned": state.scanned,
        "migrated": state.migrated,
        "already_current": state.already_current,
        "failed": state.failed,
        "newer_than_known": state.newer_than_known,
        "skipped": state.skipped,
        "checkpoint": state.checkpoint,
        "start_time": time(&state.start_time),
        "finish_time": time(&state.finish_time),
        "done": state.done,
        "running": state.running,
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
    );
}
