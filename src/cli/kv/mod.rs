//! `tierkv kv …`: a client for a running server, modelled on `wrangler kv`.
//!
//! - `get` — one key's value, as it is or with its metadata.
//! - `write` — `put`, `delete`, `patch` of one key.
//! - `list` — every key with a prefix.
//! - `bulk_file` — wrangler's bulk files, read as a stream into mutations.
//! - `bulk_send` — those mutations in batches within the server's limits.
//! - `error` — what the commands fail with.

mod bulk_file;
mod bulk_send;
mod error;
mod get;
mod list;
mod write;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use self::bulk_file::BulkKind;
use self::error::CliError;
use super::ConnectArgs;

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
        /// The representation to print.
        #[arg(long = "type", value_enum)]
        value_type: Option<TypeArg>,
        /// Print a JSON object with the value, metadata, expiration and version.
        #[arg(long)]
        with_metadata: bool,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value (text, or JSON with --json).
        value: String,
        /// Store the value as JSON.
        #[arg(long)]
        json: bool,
        /// Expire after this many seconds (at least 1).
        #[arg(long, conflicts_with = "expiration")]
        ttl: Option<u64>,
        /// Expire at this time, in seconds since the Unix epoch.
        #[arg(long)]
        expiration: Option<i64>,
        /// Metadata, as JSON.
        #[arg(long)]
        metadata: Option<String>,
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
    /// Print every key (with a prefix) as a JSON array, paging through all of them.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
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

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(super) enum TypeArg {
    Text,
    Json,
    Bytes,
}

/// Runs a `tierkv kv` command; exit code 0 on success, 1 on a miss, 2 on errors.
pub async fn run(args: KvArgs) -> ExitCode {
    match execute(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn execute(args: KvArgs) -> Result<ExitCode, CliError> {
    let client = args.connect.client().await.map_err(CliError::Connect)?;
    let mut client = client.kv();
    match args.command {
        KvCommand::Get {
            key,
            value_type,
            with_metadata,
        } => get::get(&mut client, key, value_type, with_metadata).await,
        KvCommand::Put {
            key,
            value,
            json,
            ttl,
            expiration,
            metadata,
        } => {
            let request = write::put_request(key.clone(), value, json, ttl, expiration, metadata)?;
            write::put(&mut client, key, request).await
        }
        KvCommand::Delete { key } => write::delete(&mut client, key).await,
        KvCommand::Patch {
            key,
            patch,
            if_version,
            create,
        } => write::patch(&mut client, key, &patch, if_version, create).await,
        KvCommand::List { prefix } => {
            let keys = list::list_all(&mut client, &prefix).await?;
            let mut stdout = std::io::stdout().lock();
            let printed = serde_json::to_writer_pretty(&mut stdout, &keys)
                .map_err(|error| CliError::Usage(error.to_string()))
                .and_then(|()| {
                    writeln!(stdout).map_err(|error| CliError::Usage(error.to_string()))
                });
            printed.map(|()| ExitCode::SUCCESS)
        }
        KvCommand::Bulk { command } => match command {
            BulkCommand::Put { file } => bulk_send::bulk(client, file, BulkKind::Put).await,
            BulkCommand::Delete { file } => bulk_send::bulk(client, file, BulkKind::Delete).await,
        },
    }
}
