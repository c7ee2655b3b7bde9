//! `tierkv kv watch PREFIX`: one JSON line per change under a prefix, for
//! as long as it runs. It resumes by itself from the last position it
//! printed, with back-off, when the stream breaks (the server restarted or
//! drained, the connection dropped, the client fell behind); an error a
//! retry cannot fix (a trimmed or foreign position, a missing grant) ends
//! it with its exit code.
//!
//! Without `--from` it first takes the position of a one-key List of the
//! prefix, so that even a break before the first event loses nothing.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use pb::kv_service_client::KvServiceClient;
use tonic::Code;

use super::get::result_json;
use crate::cli::error::CliError;
use crate::cli::CliChannel as Channel;
use crate::proto::v1 as pb;

/// What `kv watch` was asked for.
#[derive(Debug)]
pub(super) struct WatchOptions {
    /// The watched prefix.
    pub prefix: String,
    /// Resume after this position.
    pub from: Option<String>,
    /// Print values and metadata.
    pub values: bool,
    /// Print a `{"position": …}` line this often while nothing changes.
    pub progress: Option<Duration>,
    /// Stop after this many events (0: never).
    pub max_events: u64,
}

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First wait after a break.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Whether a status ends a stream that resuming may continue.
fn resumable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::ResourceExhausted
            | Code::Cancelled
            | Code::Unknown
            | Code::Internal
    )
}

/// Runs the watch until `max_events`, an error a retry cannot fix, or the
/// process is stopped.
pub(super) async fn watch(
    client: &mut KvServiceClient<Channel>,
    options: WatchOptions,
) -> Result<ExitCode, CliError> {
    let mut position = match options.from.clone() {
        Some(position) => position,
        None => {
            client
                .list(pb::ListRequest {
                    prefix: options.prefix.clone(),
                    page_size: 1,
                    page_token: String::new(),
                })
                .await?
                .into_inner()
                .position
        }
    };
    let mut printed = 0u64;
    let mut backoff = FIRST_BACKOFF;
    let mut stdout = std::io::stdout().lock();
    loop {
        let request = pb::WatchRequest {
            prefix: options.prefix.clone(),
            start_after: Some(position.clone()),
            include_values: options.values,
            progress_interval: options.progress.map(|interval| prost_types::Duration {
                seconds: interval.as_secs() as i64,
                nanos: interval.subsec_nanos() as i32,
            }),
        };
        let failure = match client.watch(request).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(response)) => {
                            backoff = FIRST_BACKOFF;
                            let done = print_response(
                                &mut stdout,
                                response,
                                options.values,
                                &mut printed,
                                options.max_events,
                            )?;
                            if let Some(next) = done.position {
                                position = next;
                            }
                            if done.finished {
                                return Ok(ExitCode::SUCCESS);
                            }
                        }
                        // The server ended the stream without a status: resume.
                        Ok(None) => break tonic::Status::unavailable("the stream ended"),
                        Err(status) => break status,
                    }
                }
            }
        };
        if !resumable(&failure) {
            return Err(CliError::Rpc(failure));
        }
        eprintln!(
            "watch interrupted ({:?}: {}); resuming after {position} in {} ms",
            failure.code(),
            failure.message(),
            backoff.as_millis()
        );
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What printing one response did.
struct Printed {
    /// The position to resume after, when the response's events were all printed.
    position: Option<String>,
    /// `max_events` reached.
    finished: bool,
}

fn print_response(
    stdout: &mut impl Write,
    response: pb::WatchResponse,
    values: bool,
    printed: &mut u64,
    max_events: u64,
) -> Result<Printed, CliError> {
    let output = CliError::Output;
    let events = match response.kind {
        Some(pb::watch_response::Kind::Events(events)) => events.events,
        Some(pb::watch_response::Kind::Progress(_)) => {
            let line = serde_json::json!({ "progress": true, "position": response.position });
            writeln!(stdout, "{line}").map_err(output)?;
            stdout.flush().map_err(output)?;
            return Ok(Printed {
                position: Some(response.position),
                finished: false,
            });
        }
        None => Vec::new(),
    };
    for event in events {
        let kind = match pb::EventType::try_from(event.r#type) {
            Ok(pb::EventType::Put) => "put",
            Ok(pb::EventType::Delete) => "delete",
            Ok(pb::EventType::NamespaceCleared) => "namespace_cleared",
            _ => "unknown",
        };
        let superseded = event.value_superseded;
        let has_value = event.value.is_some();
        let mut object = match result_json(pb::GetResponse {
            found: true,
            value: event.value.map(|value| match value {
                pb::watch_event::Value::Text(text) => pb::get_response::Value::Text(text),
                pb::watch_event::Value::Json(json) => pb::get_response::Value::Json(json),
                pb::watch_event::Value::Bytes(bytes) => pb::get_response::Value::Bytes(bytes),
            }),
            metadata: event.metadata,
            expire_time: event.expire_time,
            version: event.version,
            schema_version: event.schema_version,
            key: event.key,
            from_fallback: false,
        })? {
            serde_json::Value::Object(object) => object,
            _ => serde_json::Map::new(),
        };
        object.remove("found");
        if !values || !has_value {
            object.remove("value");
            object.remove("metadata");
        }
        if kind != "put" {
            for field in ["expiration", "version", "schema_version"] {
                object.remove(field);
            }
        }
        object.insert("type".into(), kind.into());
        if superseded {
            object.insert("value_superseded".into(), true.into());
        }
        object.insert("position".into(), response.position.clone().into());
        writeln!(stdout, "{}", serde_json::Value::Object(object)).map_err(output)?;
        *printed += 1;
        if max_events > 0 && *printed >= max_events {
            stdout.flush().map_err(output)?;
            return Ok(Printed {
                position: None,
                finished: true,
            });
        }
    }
    stdout.flush().map_err(output)?;
    Ok(Printed {
        position: Some(response.position),
        finished: false,
    })
}
