//! `KvService.Watch`: the request into a [`WatchRequest`], the watcher's
//! items into responses (values built exactly as Get builds them), and its
//! errors into statuses.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::Stream;
use tonic::Status;

use super::get_responses;
use crate::api::convert::timestamp_from_millis;
use crate::api::status::{kv_status, watch_status};
use crate::kv::{Entry, KvError};
use crate::proto::v1 as pb;
use crate::watch::{EventKind, WatchEvent, WatchItem, WatchRequest, Watcher};

/// The stream of a `Watch` call.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The domain request of a `WatchRequest`.
pub(crate) fn watch_request(request: pb::WatchRequest) -> Result<WatchRequest, KvError> {
    let progress_interval = match request.progress_interval {
        None => None,
        Some(interval) => {
            let nanos = i128::from(interval.seconds) * 1_000_000_000 + i128::from(interval.nanos);
            if interval.seconds < 0 || interval.nanos < 0 || nanos <= 0 {
                return Err(crate::kv::invalid(
                    "progress_interval".to_string(),
                    "progress_interval must be positive (at least 100 ms is used)".to_string(),
                ));
            }
            Some(std::time::Duration::from_nanos(
                u64::try_from(nanos).unwrap_or(u64::MAX),
            ))
        }
    };
    Ok(WatchRequest {
        prefix: request.prefix,
        start_after: request.start_after,
        include_values: request.include_values,
        progress_interval,
    })
}

/// The responses of `watcher`, ending after the first error.
pub(crate) fn stream(watcher: Watcher) -> WatchStream {
    Box::pin(WatcherStream {
        watcher: Some(watcher),
        pending: None,
    })
}

type Next =
    Pin<Box<dyn Future<Output = (Option<Result<pb::WatchResponse, Status>>, Watcher)> + Send>>;

/// A [`Watcher`] as a stream: one response future at a time, holding the
/// watcher while it runs.
struct WatcherStream {
    watcher: Option<Watcher>,
    pending: Option<Next>,
}

impl Stream for WatcherStream {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.pending.is_none() {
            let Some(mut watcher) = self.watcher.take() else {
                return Poll::Ready(None);
            };
            self.pending = Some(Box::pin(async move {
                let item = match watcher.next().await {
                    None => None,
                    Some(Err(error)) => Some(Err(watch_status(error))),
                    Some(Ok(item)) => Some(response(item).await),
                };
                (item, watcher)
            }));
        }
        let Some(pending) = self.pending.as_mut() else {
            return Poll::Ready(None);
        };
        match pending.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready((item, watcher)) => {
                self.pending = None;
                // After an error the stream ends: the watcher is dropped.
                if matches!(item, Some(Ok(_))) {
                    self.watcher = Some(watcher);
                }
                Poll::Ready(item)
            }
        }
    }
}

/// One response; values go through Get's conversion (JSON built within the
/// response limit).
async fn response(item: WatchItem) -> Result<pb::WatchResponse, Status> {
    let (events, position) = match item {
        WatchItem::Progress { position } => {
            return Ok(pb::WatchResponse {
                kind: Some(pb::watch_response::Kind::Progress(pb::WatchProgress {})),
                position: position.to_string(),
            })
        }
        WatchItem::Events { events, position } => (events, position),
    };
    let mut with_values: Vec<(usize, String, Entry)> = Vec::new();
    let mut out = Vec::with_capacity(events.len());
    for (index, event) in events.into_iter().enumerate() {
        let WatchEvent {
            key,
            kind,
            version,
            expire_at_millis,
            schema_version,
            value,
            value_superseded,
        } = event;
        if let Some(entry) = value {
            with_values.push((index, key.to_string(), entry));
        }
        out.push(pb::WatchEvent {
            key: key.to_string(),
            r#type: match kind {
                EventKind::Put => pb::EventType::Put,
                EventKind::Delete => pb::EventType::Delete,
                EventKind::NamespaceCleared => pb::EventType::NamespaceCleared,
            } as i32,
            version,
            expire_time: expire_at_millis.map(timestamp_from_millis),
            schema_version,
            value: None,
            metadata: None,
            value_superseded,
        });
    }
    if !with_values.is_empty() {
        let (indexes, results): (Vec<usize>, Vec<(String, Option<Entry>)>) = with_values
            .into_iter()
            .map(|(index, key, entry)| (index, (key, Some(entry))))
            .unzip();
        let built = get_responses(results)
            .await
            .map_err(|error| kv_status("Watch", error))?;
        for (index, built) in indexes.into_iter().zip(built) {
            let event = &mut out[index];
            event.metadata = built.metadata;
            event.value = built.value.map(|value| match value {
                pb::get_response::Value::Text(text) => pb::watch_event::Value::Text(text),
                pb::get_response::Value::Json(json) => pb::watch_event::Value::Json(json),
                pb::get_response::Value::Bytes(bytes) => pb::watch_event::Value::Bytes(bytes),
            });
        }
    }
    Ok(pb::WatchResponse {
        kind: Some(pb::watch_response::Kind::Events(pb::WatchEvents {
            events: out,
        })),
        position: position.to_string(),
    })
}
