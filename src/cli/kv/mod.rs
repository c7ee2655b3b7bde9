//! `tierkv kv …`: a client for a running server, modelled on `wrangler kv`.
//!
//! - `get` — one key's value, as it is or with its metadata.
//! - `write` — `put`, `delete`, `patch` of one key.
//! - `list` — every key with a prefix.
//! - `watch` — the changes under a prefix, one JSON line each, resuming by itself.
//! - `bulk_file` — wrangler's bulk files, read as a stream into mutations.
//! - `bulk_send` — those mutations in batches within the server's limits.
//! - `error` — what the commands fail with.

mod bulk_file;
mod bulk_send;

mod get;
mod list;
mod watch;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use self::bulk_file::BulkKind;
use super::error::CliError;
use super::output::OutputFormat;
use super::ConnectArgs;
use crate::proto::v1 as pb;

/// Arguments of `tierkv kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Debug, Subcommand)]
enum KvCommand {
    /// Print a key's value (exit code 1 when the key does not exist).
    Get {
        /// The key.
        key: String,
        /// The representation to ask the server for.
        #[arg(long = "type", value_enum)]
        value_type: Option<TypeArg>,
        /// `raw`: the value as it is; `json`: a JSON object with the key,
        /// value, metadata, expiration and versions.
        #[arg(long, value_enum, default_value_t = GetOutput::Raw)]
        output: GetOutput,
        /// The same as `--output json`.
        #[arg(long, conflicts_with = "output")]
        with_metadata: bool,
    },
    /// Print several keys' values in one call (BatchGet, at most 100 keys);
    /// exit code 1 when any of them does not exist (all are printed).
    GetMany {
        /// The keys.
        #[arg(required = true, num_args = 1..)]
        keys: Vec<String>,
        /// The representation to ask the server for.
        #[arg(long = "type", value_enum)]
        value_type: Option<TypeArg>,
        /// `json`: an array of objects, one per key, in order; `table`: one
        /// line per key.
        #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// Write a key: the value from the command line, a file (`--path`) or
    /// stdin (`-`). A value from a file or stdin is stored as bytes unless
    /// `--json` is given.
    Put {
        /// The key.
        key: String,
        /// The value (text, or JSON with --json); `-` reads it from stdin.
        #[arg(
            required_unless_present = "path",
            conflicts_with = "path",
            allow_hyphen_values = true
        )]
        value: Option<String>,
        /// Read the value from this file, as it is (binary values, large JSON).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Store the value as JSON.
        #[arg(long, conflicts_with = "base64")]
        json: bool,
        /// The value is base64: store the bytes it decodes to.
        #[arg(long)]
        base64: bool,
        /// Expire after this many seconds (at least 1).
        #[arg(long, conflicts_with = "expiration")]
        ttl: Option<u64>,
        /// Expire at this time, in seconds since the Unix epoch.
        #[arg(long)]
        expiration: Option<i64>,
        /// Metadata, as JSON.
        #[arg(long)]
        metadata: Option<String>,
        /// Write only if the key's current version is this (compare-and-set;
        /// exit code 3 otherwise).
        #[arg(long, conflicts_with = "if_absent")]
        if_version: Option<u64>,
        /// Write only if the key does not exist (exit code 3 otherwise).
        #[arg(long)]
        if_absent: bool,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Apply an RFC 7396 JSON merge patch to a JSON value, atomically on the
    /// server, and print the value it leaves.
    Patch {
        /// The key.
        key: String,
        /// The merge patch, as JSON: members set to null are removed, objects merge.
        patch: String,
        /// Patch only if the key's current version is this.
        #[arg(long)]
        if_version: Option<u64>,
        /// Create the key (from `{}`) when it does not exist.
        #[arg(long)]
        create: bool,
    },
    /// Print the keys with a prefix as a JSON array, streamed page by page;
    /// with `--limit` or `--cursor`, one page, and the next cursor on stderr.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// One page of at most this many keys (1 to 1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Continue from the cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
        /// Print only the key names, one per line.
        #[arg(long)]
        keys_only: bool,
    },
    /// Print every change under PREFIX as one JSON line (key, type, version,
    /// expiration, position; value and metadata with --values), resuming by
    /// itself from the last position printed when the stream breaks.
    /// Heartbeats (--progress) print `{"progress":true,"position":…}`.
    Watch {
        /// Only keys starting with this ("" for every key the token may read).
        prefix: String,
        /// Resume after this position (a `position` printed before, or a
        /// List's); without it, start now.
        #[arg(long)]
        from: Option<String>,
        /// Print each put's value and metadata.
        #[arg(long)]
        values: bool,
        /// Print a heartbeat line with the position every this many
        /// seconds while nothing changes.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        progress: Option<u64>,
        /// Exit (0) after this many events.
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// Write or delete many keys from a wrangler-style JSON file.
    Bulk {
        #[command(subcommand)]
        command: BulkCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BulkCommand {
    /// Write the `[{key, value, expiration?, expiration_ttl?, metadata?, base64?}]` in FILE.
    Put {
        /// The JSON file.
        file: PathBuf,
    },
    /// Delete the keys in FILE: `["key", …]` or `[{"name": "key"}, …]`.
    Delete {
        /// The JSON file.
        file: PathBuf,
    },
}

/// How `kv get` prints a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum GetOutput {
    /// The value as it is.
    Raw,
    /// A JSON object with the value, metadata, expiration and versions.
    Json,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum TypeArg {
    Text,
    Json,
    Bytes,
}

/// Runs a `tierkv kv` command; exit code 0 on success, 1 on a miss, the
/// others as in [`super::EXIT_CODES`].
pub async fn run(args: KvArgs) -> ExitCode {
    match execute(args).await {
        Ok(code) => code,
        Err(error) => error.report(),
    }
}

async fn execute(args: KvArgs) -> Result<ExitCode, CliError> {
    let client = args.connect.client().await?;
    let mut client = client.kv();
    match args.command {
        KvCommand::Get {
            key,
            value_type,
            output,
            with_metadata,
        } => {
            let json = with_metadata || output == GetOutput::Json;
            get::get(&mut client, key, value_type, json).await
        }
        KvCommand::GetMany {
            keys,
            value_type,
            output,
        } => get::get_many(&mut client, keys, value_type, output).await,
        KvCommand::Put {
            key,
            value,
            path,
            json,
            base64,
            ttl,
            expiration,
            metadata,
            if_version,
            if_absent,
        } => {
            let value = write::read_value(value, path.as_deref(), json, base64)?;
            let mut request = write::put_request(key.clone(), value, ttl, expiration, metadata)?;
            request.precondition = if let Some(version) = if_version {
                Some(pb::put_request::Precondition::IfVersion(version))
            } else if if_absent {
                Some(pb::put_request::Precondition::IfAbsent(true))
            } else {
                None
            };
            write::put(&mut client, key, request).await
        }
        KvCommand::Delete { key } => write::delete(&mut client, key).await,
        KvCommand::Patch {
            key,
            patch,
            if_version,
            create,
        } => write::patch(&mut client, key, &patch, if_version, create).await,
        KvCommand::List {
            prefix,
            limit,
            cursor,
            keys_only,
        } => {
            let one_page = limit.is_some() || cursor.is_some();
            let page = list::Paging {
                limit,
                cursor: cursor.unwrap_or_default(),
                one_page,
            };
            list::list(&mut client, &prefix, page, keys_only).await
        }
        KvCommand::Watch {
            prefix,
            from,
            values,
            progress,
            max_events,
        } => {
            let options = watch::WatchOptions {
                prefix,
                from,
                values,
                progress: progress.map(std::time::Duration::from_secs),
                max_events: max_events.unwrap_or(0),
            };
            watch::watch(&mut client, options).await
        }
        KvCommand::Bulk { command } => match command {
            BulkCommand::Put { file } => bulk_send::bulk(client, file, BulkKind::Put).await,
            BulkCommand::Delete { file } => bulk_send::bulk(client, file, BulkKind::Delete).await,
        },
    }
}
