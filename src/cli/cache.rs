//! `tierkv cache …`: a client for the Cache service of a running server.
//!
//! `get` prints the value on stdout exactly as `tierkv kv get` does (text and
//! bytes as they are, JSON serialized with a newline) and the tier it came
//! from on stderr, so that scripts can pipe the value and still see the tier.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::error::CliError;
use super::output::waiting;
use super::{CliChannel, ConnectArgs};
use crate::api::convert::{json_from_proto, json_to_proto};
use crate::proto::v1 as pb;
use pb::cache_service_client::CacheServiceClient;

/// Arguments of `tierkv cache`.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Debug, Subcommand)]
enum CacheCommand {
    /// Print a key's value through the cache tiers; the tier goes to stderr
    /// (exit code 1 when there is no value).
    Get {
        /// The key.
        key: String,
        /// Give up after this many seconds (the origin's own timeout still applies).
        #[arg(long)]
        timeout: Option<f64>,
    },
    /// Write a key to the store and to memory.
    Put {
        /// The key.
        key: String,
        /// The value (text, or JSON with --json).
        value: String,
        /// Store the value as JSON.
        #[arg(long)]
        json: bool,
        /// The record's time to live in seconds (at least 1).
        #[arg(long)]
        ttl: Option<u64>,
        /// How long memory may answer, in seconds (default 60).
        #[arg(long)]
        memory_ttl: Option<u64>,
        /// A content type to keep with the value.
        #[arg(long)]
        content_type: Option<String>,
    },
    /// Remove a key from both tiers.
    Invalidate {
        /// The key.
        key: String,
    },
    /// Remove the keys under a prefix from both tiers (at most 10,000 per
    /// call). Without --expected-keys, prints how many keys it would remove
    /// and removes nothing.
    Purge {
        /// The prefix (not empty).
        prefix: String,
        /// The number of keys the purge lists, as a confirmation (the
        /// `listed` of the run without it).
        #[arg(long)]
        expected_keys: Option<u64>,
    },
}

/// Runs a `tierkv cache` command; exit code 0 on success, 1 when there is no
/// value (a miss, or NOT_FOUND from an origin), the others as in
/// [`super::EXIT_CODES`].
pub async fn run(args: CacheArgs) -> ExitCode {
    match execute(args).await {
        Ok(code) => code,
        Err(error) => error.report(),
    }
}

fn seconds(value: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(value).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

async fn execute(args: CacheArgs) -> Result<ExitCode, CliError> {
    let mut client = args.connect.client().await?.cache();
    match args.command {
        CacheCommand::Get { key, timeout } => get(&mut client, key, timeout).await,
        CacheCommand::Put {
            key,
            value,
            json,
            ttl,
            memory_ttl,
            content_type,
        } => {
            let value = if json {
                let parsed: serde_json::Value = serde_json::from_str(&value)
                    .map_err(|error| format!("the value is not valid JSON: {error}"))?;
                pb::cache_put_request::Value::Json(json_to_proto(parsed))
            } else {
                pb::cache_put_request::Value::Text(value)
            };
            let response = client
                .put(pb::CachePutRequest {
                    key,
                    value: Some(value),
                    content_type: content_type.unwrap_or_default(),
                    memory_ttl: memory_ttl.map(seconds),
                    store_ttl: ttl.map(seconds),
                })
                .await?
                .into_inner();
            println!("{}", serde_json::json!({ "version": response.version }));
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Invalidate { key } => {
            let response = client
                .invalidate(pb::InvalidateRequest { key })
                .await?
                .into_inner();
            println!("{}", serde_json::json!({ "existed": response.existed }));
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Purge {
            prefix,
            expected_keys,
        } => {
            let dry_run = expected_keys.is_none();
            let verb = if dry_run { "counting" } else { "purging" };
            let message = format!("{verb} cached keys under {prefix:?}");
            let call = client.purge(pb::PurgeRequest {
                prefix,
                expected_keys,
                dry_run,
            });
            let response = waiting(message, call).await?.into_inner();
            if dry_run {
                println!(
                    "{}",
                    serde_json::json!({ "listed": response.listed, "more": response.more })
                );
                eprintln!(
                    "nothing removed: pass --expected-keys {} to remove them",
                    response.listed
                );
            } else {
                println!(
                    "{}",
                    serde_json::json!({
                        "purged": response.purged,
                        "skipped": response.skipped,
                        "more": response.more,
                    })
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn tier_name(tier: i32) -> &'static str {
    match pb::CacheTier::try_from(tier) {
        Ok(pb::CacheTier::Memory) => "MEMORY",
        Ok(pb::CacheTier::Store) => "STORE",
        Ok(pb::CacheTier::Origin) => "ORIGIN",
        Ok(pb::CacheTier::Stale) => "STALE",
        _ => "UNSPECIFIED",
    }
}

async fn get(
    client: &mut CacheServiceClient<CliChannel>,
    key: String,
    timeout: Option<f64>,
) -> Result<ExitCode, CliError> {
    let mut request = tonic::Request::new(pb::CacheGetRequest {
        key: key.clone(),
        r#type: 0,
    });
    if let Some(timeout) = timeout {
        let timeout = std::time::Duration::try_from_secs_f64(timeout)
            .map_err(|error| format!("--timeout {timeout}: {error}"))?;
        request.set_timeout(timeout);
    }
    let response = match client.get(request).await {
        Ok(response) => response.into_inner(),
        Err(status) if status.code() == tonic::Code::NotFound => {
            eprintln!("{key:?} not found at its origin");
            return Ok(ExitCode::from(1));
        }
        Err(status) => return Err(status.into()),
    };
    if !response.found {
        eprintln!("{key:?} not found");
        return Ok(ExitCode::from(1));
    }
    let mut stdout = std::io::stdout().lock();
    match response.value {
        Some(pb::cache_get_response::Value::Text(text)) => stdout.write_all(text.as_bytes()),
        Some(pb::cache_get_response::Value::Bytes(bytes)) => stdout.write_all(&bytes),
        Some(pb::cache_get_response::Value::Json(json)) => {
            let json = json_from_proto(json)?;
            writeln!(stdout, "{json}")
        }
        None => Ok(()),
    }
    .and_then(|()| stdout.flush())
    .map_err(|error| format!("cannot write output: {error}"))?;
    eprintln!("tier: {}", tier_name(response.tier));
    Ok(ExitCode::SUCCESS)
}
