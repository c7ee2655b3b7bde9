//! `tierkv kv …`: a client for a running server, modelled on `wrangler kv`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use super::CliChannel as Channel;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use serde::Deserialize;

use super::ConnectArgs;
use crate::api::convert::{json_from_proto, json_to_proto};
use crate::kv::limits::{MAX_BATCH_WRITE_BYTES, MAX_BATCH_WRITE_MUTATIONS};
use crate::proto::v1 as pb;
use pb::kv_service_client::KvServiceClient;

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
            CliError::Rpc(status) => write!(f, "{}", super::describe(status)),
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

async fn connect(args: &ConnectArgs) -> Result<KvServiceClient<Channel>, CliError> {
    let client = KvServiceClient::new(args.channel().await.map_err(CliError::Connect)?);
    Ok(client
        .max_decoding_message_size(super::connect::MAX_MESSAGE_SIZE)
        .max_encoding_message_size(super::connect::MAX_MESSAGE_SIZE))
}

async fn execute(args: KvArgs) -> Result<ExitCode, CliError> {
    let mut client = connect(&args.connect).await?;
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
        KvCommand::Patch {
            key,
            patch,
            if_version,
            create,
        } => {
            let request = pb::PatchRequest {
                key: key.clone(),
                merge_patch: Some(json_to_proto(parse_json("PATCH", &patch)?)),
                if_version,
                create_if_missing: create,
                ..Default::default()
            };
            let response = client.patch(request).await?.into_inner();
            let value = response.value.map(json_from_proto).transpose();
            let value = value
                .map_err(|reason| CliError::Usage(format!("the server's answer: {reason}")))?
                .unwrap_or_default();
            println!("{value}");
            let what = if response.created {
                "created"
            } else {
                "patched"
            };
            eprintln!("{what} {key:?} (version {})", response.version);
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
            BulkCommand::Put { file } => bulk(client, file, BulkKind::Put).await,
            BulkCommand::Delete { file } => bulk(client, file, BulkKind::Delete).await,
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
            fallback: None,
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
        object.insert("schema_version".into(), response.schema_version.into());
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
        ..Default::default()
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

/// One entry of a bulk delete file: `"key"` or `{"name": "key"}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum BulkDeleteEntry {
    Key(String),
    Object {
        name: Option<String>,
        key: Option<String>,
    },
}

const BULK_PUT_USAGE: &str = "bulk put expects [{\"key\", \"value\", \"expiration\"?, \"expiration_ttl\"?, \"metadata\"?, \"base64\"?}, …]";
const BULK_DELETE_USAGE: &str = "bulk delete expects [\"key\", …] or [{\"name\": \"key\"}, …]";

fn bulk_put_mutation(index: usize, entry: BulkPutEntry) -> Result<pb::Mutation, CliError> {
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
    let expiration = expiration_from(entry.expiration_ttl, entry.expiration)
        .map_err(|error| CliError::Usage(format!("entry {index} ({:?}): {error}", entry.key)))?;
    Ok(pb::Mutation {
        operation: Some(pb::mutation::Operation::Put(pb::PutRequest {
            key: entry.key,
            value: Some(value),
            metadata: entry.metadata.map(json_to_proto),
            expiration,
            ..Default::default()
        })),
    })
}

fn bulk_delete_mutation(index: usize, entry: BulkDeleteEntry) -> Result<pb::Mutation, CliError> {
    let key = match entry {
        BulkDeleteEntry::Key(key) => key,
        BulkDeleteEntry::Object {
            name: Some(key), ..
        }
        | BulkDeleteEntry::Object {
            name: None,
            key: Some(key),
        } => key,
        BulkDeleteEntry::Object { .. } => {
            return Err(CliError::Usage(format!(
                "entry {index}: {BULK_DELETE_USAGE}"
            )))
        }
    };
    Ok(pb::Mutation {
        operation: Some(pb::mutation::Operation::Delete(pb::DeleteRequest {
            key,
            if_version: None,
        })),
    })
}

/// Calls `each` with every element of the JSON array that `reader` holds, in
/// order, one element at a time: memory stays that of one element, whatever
/// the size of the array. Returns the number of elements.
fn for_each_in_array<T, F>(
    reader: impl std::io::Read,
    usage: &str,
    mut each: F,
) -> Result<usize, CliError>
where
    T: serde::de::DeserializeOwned,
    F: FnMut(usize, T) -> Result<(), CliError>,
{
    let mut stopped = None;
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let visitor = ArrayVisitor {
        each: &mut each,
        stopped: &mut stopped,
        _element: std::marker::PhantomData,
    };
    let parsed = serde::Deserializer::deserialize_seq(&mut deserializer, visitor)
        .and_then(|count| deserializer.end().map(|()| count));
    match (parsed, stopped) {
        (_, Some(error)) => Err(error),
        (Ok(count), None) => Ok(count),
        (Err(error), None) => Err(CliError::Usage(format!("{usage}: {error}"))),
    }
}

struct ArrayVisitor<'a, T, F> {
    each: &'a mut F,
    /// The error of `each` that stopped the walk, if any.
    stopped: &'a mut Option<CliError>,
    _element: std::marker::PhantomData<T>,
}

impl<'de, T, F> serde::de::Visitor<'de> for ArrayVisitor<'_, T, F>
where
    T: serde::Deserialize<'de>,
    F: FnMut(usize, T) -> Result<(), CliError>,
{
    type Value = usize;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a JSON array")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut items: A) -> Result<usize, A::Error> {
        let mut index = 0;
        while let Some(item) = items.next_element::<T>()? {
            if let Err(error) = (self.each)(index, item) {
                *self.stopped = Some(error);
                return Err(serde::de::Error::custom("stopped"));
            }
            index += 1;
        }
        Ok(index)
    }
}

#[derive(Debug, Clone, Copy)]
enum BulkKind {
    Put,
    Delete,
}

impl BulkKind {
    fn verb(self) -> &'static str {
        match self {
            BulkKind::Put => "writing",
            BulkKind::Delete => "deleting",
        }
    }

    /// Walks the file's entries as mutations, one at a time.
    fn for_each_mutation(
        self,
        path: &std::path::Path,
        mut each: impl FnMut(pb::Mutation) -> Result<(), CliError>,
    ) -> Result<usize, CliError> {
        let file = std::fs::File::open(path)
            .map_err(|error| CliError::Usage(format!("cannot read {}: {error}", path.display())))?;
        let reader = std::io::BufReader::with_capacity(256 * 1024, file);
        let usage = |usage: &str| format!("{}: {usage}", path.display());
        match self {
            BulkKind::Put => for_each_in_array(reader, &usage(BULK_PUT_USAGE), |index, entry| {
                each(bulk_put_mutation(index, entry)?)
            }),
            BulkKind::Delete => {
                for_each_in_array(reader, &usage(BULK_DELETE_USAGE), |index, entry| {
                    each(bulk_delete_mutation(index, entry)?)
                })
            }
        }
    }
}

/// `bulk put` / `bulk delete`: streams the file twice, holding at most one
/// batch. The first pass checks every entry, so a bad entry anywhere stops
/// the command before anything is written; the second sends batches as they
/// fill, one at a time.
async fn bulk(
    client: KvServiceClient<Channel>,
    path: PathBuf,
    kind: BulkKind,
) -> Result<ExitCode, CliError> {
    let runtime = tokio::runtime::Handle::current();
    // Parsing is blocking I/O and CPU: off the async workers, which drive the
    // connection; each batch is sent from there and awaited before the next.
    tokio::task::spawn_blocking(move || {
        let total = kind.for_each_mutation(&path, |_| Ok(()))?;
        let mut sender = BatchSender::new(client, runtime, total, kind.verb());
        kind.for_each_mutation(&path, |mutation| sender.push(mutation))?;
        sender.finish()
    })
    .await
    .map_err(|error| CliError::Usage(format!("bulk command failed: {error}")))?
}

/// Groups mutations into batches within the server's count and size limits.
struct Batcher {
    batch: Vec<pb::Mutation>,
    batch_bytes: usize,
    byte_budget: usize,
    max_mutations: usize,
}

impl Batcher {
    fn new() -> Self {
        Self {
            batch: Vec::new(),
            batch_bytes: 0,
            // Leave headroom under the byte limit for framing.
            byte_budget: MAX_BATCH_WRITE_BYTES - MAX_BATCH_WRITE_BYTES / 16,
            max_mutations: MAX_BATCH_WRITE_MUTATIONS,
        }
    }

    /// Adds a mutation; returns the full batch it does not fit in, to send.
    fn push(&mut self, mutation: pb::Mutation) -> Option<Vec<pb::Mutation>> {
        let size = prost::Message::encoded_len(&mutation);
        let full = (!self.batch.is_empty()
            && (self.batch.len() == self.max_mutations
                || self.batch_bytes + size > self.byte_budget))
            .then(|| self.take());
        self.batch_bytes += size;
        self.batch.push(mutation);
        full
    }

    /// The batch so far, emptying it.
    fn take(&mut self) -> Vec<pb::Mutation> {
        self.batch_bytes = 0;
        std::mem::take(&mut self.batch)
    }
}

/// Sends each batch as soon as it is full and waits for it before the next.
struct BatchSender {
    client: KvServiceClient<Channel>,
    runtime: tokio::runtime::Handle,
    batcher: Batcher,
    done: usize,
    total: usize,
    verb: &'static str,
    progress: indicatif::ProgressBar,
}

impl BatchSender {
    fn new(
        client: KvServiceClient<Channel>,
        runtime: tokio::runtime::Handle,
        total: usize,
        verb: &'static str,
    ) -> Self {
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
        Self {
            client,
            runtime,
            batcher: Batcher::new(),
            done: 0,
            total,
            verb,
            progress,
        }
    }

    fn push(&mut self, mutation: pb::Mutation) -> Result<(), CliError> {
        match self.batcher.push(mutation) {
            Some(full) => self.send(full),
            None => Ok(()),
        }
    }

    fn send(&mut self, mutations: Vec<pb::Mutation>) -> Result<(), CliError> {
        let count = mutations.len();
        let result = self
            .runtime
            .block_on(self.client.batch_write(pb::BatchWriteRequest { mutations }));
        if let Err(status) = result {
            self.progress.abandon();
            eprintln!(
                "{} of {} keys done before this batch failed; the failed batch wrote nothing",
                self.done, self.total
            );
            return Err(status.into());
        }
        self.done += count;
        self.progress.set_position(self.done as u64);
        Ok(())
    }

    fn finish(mut self) -> Result<ExitCode, CliError> {
        let last = self.batcher.take();
        if !last.is_empty() {
            self.send(last)?;
        }
        self.progress.finish_and_clear();
        eprintln!("{} {} keys: done", self.verb, self.total);
        Ok(ExitCode::SUCCESS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_mutations(json: &str) -> Result<Vec<pb::Mutation>, CliError> {
        let mut mutations = Vec::new();
        for_each_in_array(json.as_bytes(), BULK_PUT_USAGE, |index, entry| {
            mutations.push(bulk_put_mutation(index, entry)?);
            Ok(())
        })?;
        Ok(mutations)
    }

    fn delete_mutations(json: &str) -> Result<Vec<pb::Mutation>, CliError> {
        let mut mutations = Vec::new();
        for_each_in_array(json.as_bytes(), BULK_DELETE_USAGE, |index, entry| {
            mutations.push(bulk_delete_mutation(index, entry)?);
            Ok(())
        })?;
        Ok(mutations)
    }

    /// Wrangler's bulk put format, base64 included, becomes put mutations.
    #[test]
    fn parses_wrangler_bulk_put() {
        let mutations = put_mutations(
            r#"[
            {"key": "a", "value": "1"},
            {"key": "b", "value": "aGk=", "base64": true, "expiration_ttl": 60, "metadata": {"m": 1}},
            {"key": "c", "value": "x", "expiration": 4102444800}
        ]"#,
        )
        .unwrap();
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
        assert_eq!(put_mutations("[]").unwrap().len(), 0);
        let missing_value = put_mutations(r#"[{"key": "a"}]"#).unwrap_err().to_string();
        assert!(missing_value.contains("value"), "{missing_value}");
        let both =
            put_mutations(r#"[{"key": "a", "value": "1", "expiration": 1, "expiration_ttl": 60}]"#)
                .unwrap_err()
                .to_string();
        assert!(both.contains("entry 0 (\"a\")"), "{both}");
        for broken in [
            r#"{"key": "a"}"#,
            r#"[{"key": "a", "value": "1"}"#,
            r#"[] []"#,
            "",
        ] {
            assert!(put_mutations(broken).is_err(), "{broken}");
        }
    }

    /// Deletes accept strings and `{name}` objects.
    #[test]
    fn parses_wrangler_bulk_delete() {
        let mutations = delete_mutations(r#"["a", {"name": "b"}, {"key": "c"}]"#).unwrap();
        assert_eq!(mutations.len(), 3);
        assert!(delete_mutations("[1]").is_err());
        assert!(delete_mutations(r#"[{"other": "x"}]"#).is_err());
        assert!(delete_mutations(r#"{"a": 1}"#).is_err());
    }

    /// Batches respect the per-batch mutation count and byte budget.
    #[test]
    fn batches_respect_the_limits() {
        let delete = |key: &str| bulk_delete_mutation(0, BulkDeleteEntry::Key(key.into())).unwrap();
        let mut batcher = Batcher::new();
        let mut sizes = Vec::new();
        for i in 0..25_001 {
            if let Some(full) = batcher.push(delete(&format!("k{i}"))) {
                sizes.push(full.len());
            }
        }
        sizes.push(batcher.take().len());
        assert_eq!(sizes, vec![10_000, 10_000, 5_001]);

        // A delete of a one-byte key encodes in 5 bytes.
        let mut batcher = Batcher::new();
        batcher.byte_budget = 12;
        assert!(batcher.push(delete("a")).is_none());
        assert!(batcher.push(delete("b")).is_none());
        assert_eq!(batcher.push(delete("c")).map(|full| full.len()), Some(2));
        assert_eq!(batcher.take().len(), 1);
        assert!(batcher.take().is_empty());
    }
}
