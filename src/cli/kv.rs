//! `tierkv kv …`: a client for a running server, modelled on `wrangler kv`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use super::DEFAULT_ENDPOINT;
use crate::api::convert::{json_from_proto, json_to_proto};
use crate::kv::limits::{MAX_BATCH_WRITE_BYTES, MAX_BATCH_WRITE_MUTATIONS, MAX_MESSAGE_BYTES};
use crate::proto::v1 as pb;
use pb::kv_service_client::KvServiceClient;

/// Arguments of `tierkv kv`.
#[derive(Debug, Args)]
pub struct KvArgs {
    /// The server to talk to.
    #[arg(long, global = true, env = "TIERKV_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    endpoint: String,
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
enum TypeArg {
    Text,
    Json,
    Bytes,
}

/// A failure of a client command.
#[derive(Debug)]
enum CliError {
    /// The user's input is unusable.
    Usage(String),
    /// The server answered with an error.
    Rpc(tonic::Status),
    /// The server could not be reached.
    Connect(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(message) => write!(f, "{message}"),
            CliError::Connect(message) => write!(f, "cannot connect: {message}"),
            CliError::Rpc(status) => {
                write!(f, "{:?}: {}", status.code(), status.message())?;
                if let Some(bad_request) = status.get_details_bad_request() {
                    for violation in bad_request.field_violations {
                        write!(f, "\n  {}: {}", violation.field, violation.description)?;
                    }
                }
                Ok(())
            }
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(status)
    }
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

async fn connect(endpoint: &str) -> Result<KvServiceClient<Channel>, CliError> {
    let client = KvServiceClient::connect(endpoint.to_string())
        .await
        .map_err(|error| CliError::Connect(format!("{endpoint}: {error}")))?;
    Ok(client
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

async fn execute(args: KvArgs) -> Result<ExitCode, CliError> {
    let mut client = connect(&args.endpoint).await?;
    match args.command {
        KvCommand::Get {
            key,
            value_type,
            with_metadata,
        } => get(&mut client, key, value_type, with_metadata).await,
        KvCommand::Put {
            key,
            value,
            json,
            ttl,
            expiration,
            metadata,
        } => {
            let request = put_request(key.clone(), value, json, ttl, expiration, metadata)?;
            let response = client.put(request).await?.into_inner();
            eprintln!("wrote {key:?} (version {})", response.version);
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::Delete { key } => {
            let response = client
                .delete(pb::DeleteRequest {
                    key: key.clone(),
                    if_version: None,
                })
                .await?
                .into_inner();
            if response.existed {
                eprintln!("deleted {key:?}");
            } else {
                eprintln!("{key:?} did not exist");
            }
            Ok(ExitCode::SUCCESS)
        }
        KvCommand::List { prefix } => {
            let keys = list_all(&mut client, &prefix).await?;
            let mut stdout = std::io::stdout().lock();
            let printed = serde_json::to_writer_pretty(&mut stdout, &keys)
                .map_err(|error| CliError::Usage(error.to_string()))
                .and_then(|()| {
                    writeln!(stdout).map_err(|error| CliError::Usage(error.to_string()))
                });
            printed.map(|()| ExitCode::SUCCESS)
        }
        KvCommand::Bulk { command } => match command {
            BulkCommand::Put { file } => {
                let mutations = bulk_put_mutations(&read_file(&file)?)?;
                send_in_chunks(&mut client, mutations, "writing").await
            }
            BulkCommand::Delete { file } => {
                let mutations = bulk_delete_mutations(&read_file(&file)?)?;
                send_in_chunks(&mut client, mutations, "deleting").await
            }
        },
    }
}

async fn get(
    client: &mut KvServiceClient<Channel>,
    key: String,
    value_type: Option<TypeArg>,
    with_metadata: bool,
) -> Result<ExitCode, CliError> {
    let value_type = match value_type {
        None => pb::ValueType::Unspecified,
        Some(TypeArg::Text) => pb::ValueType::Text,
        Some(TypeArg::Json) => pb::ValueType::Json,
        Some(TypeArg::Bytes) => pb::ValueType::Bytes,
    };
    let response = client
        .get(pb::GetRequest {
            key: key.clone(),
            r#type: value_type as i32,
        })
        .await?
        .into_inner();
    if !response.found {
        eprintln!("{key:?} not found");
        return Ok(ExitCode::from(1));
    }
    let mut stdout = std::io::stdout().lock();
    let write_error =
        |error: std::io::Error| CliError::Usage(format!("cannot write output: {error}"));
    if with_metadata {
        let (value, is_base64) = match response.value {
            Some(pb::get_response::Value::Text(text)) => (serde_json::Value::String(text), false),
            Some(pb::get_response::Value::Json(json)) => {
                (json_from_proto(json).map_err(CliError::Usage)?, false)
            }
            Some(pb::get_response::Value::Bytes(bytes)) => match String::from_utf8(bytes) {
                Ok(text) => (serde_json::Value::String(text), false),
                Err(error) => (
                    serde_json::Value::String(BASE64.encode(error.into_bytes())),
                    true,
                ),
            },
            None => (serde_json::Value::Null, false),
        };
        let mut object = serde_json::Map::new();
        object.insert("value".into(), value);
        if is_base64 {
            object.insert("base64".into(), true.into());
        }
        object.insert(
            "metadata".into(),
            response
                .metadata
                .map(json_from_proto)
                .transpose()
                .map_err(CliError::Usage)?
                .unwrap_or(serde_json::Value::Null),
        );
        object.insert(
            "expiration".into(),
            response
                .expire_time
                .map_or(serde_json::Value::Null, |at| at.seconds.into()),
        );
        object.insert("version".into(), response.version.into());
        writeln!(stdout, "{}", serde_json::Value::Object(object)).map_err(write_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    match response.value {
        Some(pb::get_response::Value::Text(text)) => stdout.write_all(text.as_bytes()),
        Some(pb::get_response::Value::Bytes(bytes)) => stdout.write_all(&bytes),
        Some(pb::get_response::Value::Json(json)) => {
            let json = json_from_proto(json).map_err(CliError::Usage)?;
            writeln!(stdout, "{json}")
        }
        None => Ok(()),
    }
    .map_err(write_error)?;
    Ok(ExitCode::SUCCESS)
}

fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(text)
        .map_err(|error| CliError::Usage(format!("{what} is not valid JSON: {error}")))
}

fn put_request(
    key: String,
    value: String,
    json: bool,
    ttl: Option<u64>,
    expiration: Option<i64>,
    metadata: Option<String>,
) -> Result<pb::PutRequest, CliError> {
    let value = if json {
        pb::put_request::Value::Json(json_to_proto(parse_json("VALUE", &value)?))
    } else {
        pb::put_request::Value::Text(value)
    };
    Ok(pb::PutRequest {
        key,
        value: Some(value),
        metadata: metadata
            .map(|text| parse_json("--metadata", &text).map(json_to_proto))
            .transpose()?,
        expiration: expiration_from(ttl, expiration)?,
        precondition: None,
    })
}

fn expiration_from(
    ttl: Option<u64>,
    expiration: Option<i64>,
) -> Result<Option<pb::put_request::Expiration>, CliError> {
    match (ttl, expiration) {
        (Some(_), Some(_)) => Err(CliError::Usage(
            "give either an expiration or a ttl, not both".into(),
        )),
        (Some(seconds), None) => Ok(Some(pb::put_request::Expiration::Ttl(
            prost_types::Duration {
                seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                nanos: 0,
            },
        ))),
        (None, Some(seconds)) => Ok(Some(pb::put_request::Expiration::ExpireTime(
            prost_types::Timestamp { seconds, nanos: 0 },
        ))),
        (None, None) => Ok(None),
    }
}

/// A key as `tierkv kv list` prints it (wrangler's shape).
#[derive(Debug, serde::Serialize)]
struct ListedKeyOutput {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<serde_json::Value>,
}

async fn list_all(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
) -> Result<Vec<ListedKeyOutput>, CliError> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size: 0,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for key in page.keys {
            keys.push(ListedKeyOutput {
                name: key.name,
                expiration: key.expire_time.map(|at| at.seconds),
                metadata: key
                    .metadata
                    .map(json_from_proto)
                    .transpose()
                    .map_err(CliError::Usage)?,
            });
        }
        if page.next_page_token.is_empty() {
            return Ok(keys);
        }
        page_token = page.next_page_token;
    }
}

fn read_file(path: &PathBuf) -> Result<serde_json::Value, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?;
    parse_json(&path.display().to_string(), &text)
}

/// One entry of wrangler's bulk put format.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkPutEntry {
    key: String,
    value: String,
    expiration: Option<i64>,
    expiration_ttl: Option<u64>,
    metadata: Option<serde_json::Value>,
    #[serde(default)]
    base64: bool,
}

fn bulk_put_mutations(json: &serde_json::Value) -> Result<Vec<pb::Mutation>, CliError> {
    let entries: Vec<BulkPutEntry> = serde_json::from_value(json.clone()).map_err(|error| {
        CliError::Usage(format!(
            "bulk put expects [{{\"key\", \"value\", \"expiration\"?, \"expiration_ttl\"?, \"metadata\"?, \"base64\"?}}]: {error}"
        ))
    })?;
    entries
        .into_iter()
        .enumerate()
        .map(|(index, entry)| {
            let value = if entry.base64 {
                pb::put_request::Value::Bytes(BASE64.decode(&entry.value).map_err(|error| {
                    CliError::Usage(format!(
                        "entry {index} ({:?}): value is not base64: {error}",
                        entry.key
                    ))
                })?)
            } else {
                pb::put_request::Value::Text(entry.value)
            };
            let expiration =
                expiration_from(entry.expiration_ttl, entry.expiration).map_err(|error| {
                    CliError::Usage(format!("entry {index} ({:?}): {error}", entry.key))
                })?;
            Ok(pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(pb::PutRequest {
                    key: entry.key,
                    value: Some(value),
                    metadata: entry.metadata.map(json_to_proto),
                    expiration,
                    precondition: None,
                })),
            })
        })
        .collect()
}

fn bulk_delete_mutations(json: &serde_json::Value) -> Result<Vec<pb::Mutation>, CliError> {
    let usage =
        || CliError::Usage("bulk delete expects [\"key\", …] or [{\"name\": \"key\"}, …]".into());
    let items = json.as_array().ok_or_else(usage)?;
    items
        .iter()
        .map(|item| {
            let key = match item {
                serde_json::Value::String(key) => key.clone(),
                serde_json::Value::Object(object) => object
                    .get("name")
                    .or_else(|| object.get("key"))
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(usage)?
                    .to_string(),
                _ => return Err(usage()),
            };
            Ok(pb::Mutation {
                operation: Some(pb::mutation::Operation::Delete(pb::DeleteRequest {
                    key,
                    if_version: None,
                })),
            })
        })
        .collect()
}

fn mutation_size(mutation: &pb::Mutation) -> usize {
    prost::Message::encoded_len(mutation)
}

/// Splits mutations into batches within the server's count and size limits.
fn chunk_mutations(mutations: Vec<pb::Mutation>) -> Vec<Vec<pb::Mutation>> {
    // Leave headroom under the byte limit for framing.
    let byte_budget = MAX_BATCH_WRITE_BYTES - MAX_BATCH_WRITE_BYTES / 16;
    let mut chunks = Vec::new();
    let mut current = Vec::new();
    let mut current_bytes = 0;
    for mutation in mutations {
        let size = mutation_size(&mutation);
        if !current.is_empty()
            && (current.len() == MAX_BATCH_WRITE_MUTATIONS || current_bytes + size > byte_budget)
        {
            chunks.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += size;
        current.push(mutation);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

async fn send_in_chunks(
    client: &mut KvServiceClient<Channel>,
    mutations: Vec<pb::Mutation>,
    verb: &str,
) -> Result<ExitCode, CliError> {
    let total = mutations.len();
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} keys ({eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(verb.to_string());
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut done = 0;
    for chunk in chunk_mutations(mutations) {
        let count = chunk.len();
        let result = client
            .batch_write(pb::BatchWriteRequest { mutations: chunk })
            .await;
        if let Err(status) = result {
            progress.abandon();
            eprintln!("{done} of {total} keys done before this batch failed; the failed batch wrote nothing");
            return Err(status.into());
        }
        done += count;
        progress.set_position(done as u64);
    }
    progress.finish_and_clear();
    eprintln!("{verb} {total} keys: done");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Wrangler's bulk put format, base64 included, becomes put mutations.
    #[test]
    fn parses_wrangler_bulk_put() {
        let json = serde_json::json!([
            {"key": "a", "value": "1"},
            {"key": "b", "value": "aGk=", "base64": true, "expiration_ttl": 60, "metadata": {"m": 1}},
            {"key": "c", "value": "x", "expiration": 4102444800u64}
        ]);
        let mutations = bulk_put_mutations(&json).unwrap();
        assert_eq!(mutations.len(), 3);
        let Some(pb::mutation::Operation::Put(put)) = &mutations[1].operation else {
            panic!("expected a put");
        };
        assert_eq!(
            put.value,
            Some(pb::put_request::Value::Bytes(b"hi".to_vec()))
        );
        assert!(matches!(
            put.expiration,
            Some(pb::put_request::Expiration::Ttl(_))
        ));
        assert!(bulk_put_mutations(&serde_json::json!([{"key": "a"}])).is_err());
        assert!(bulk_put_mutations(&serde_json::json!([
            {"key": "a", "value": "1", "expiration": 1, "expiration_ttl": 60}
        ]))
        .is_err());
    }

    /// Deletes accept strings and `{name}` objects.
    #[test]
    fn parses_wrangler_bulk_delete() {
        let mutations = bulk_delete_mutations(&serde_json::json!(["a", {"name": "b"}])).unwrap();
        assert_eq!(mutations.len(), 2);
        assert!(bulk_delete_mutations(&serde_json::json!([1])).is_err());
        assert!(bulk_delete_mutations(&serde_json::json!({"a": 1})).is_err());
    }

    /// Chunks respect the per-batch mutation count.
    #[test]
    fn chunks_respect_the_count_limit() {
        let mutations = bulk_delete_mutations(&serde_json::Value::Array(
            (0..25_001)
                .map(|i| serde_json::Value::String(format!("k{i}")))
                .collect(),
        ))
        .unwrap();
        let chunks = chunk_mutations(mutations);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10_000, 10_000, 5_001]
        );
    }
}
