//! `KvService.Watch`: the request into a [`WatchRequest`], the watcher's
//! items into encoded responses (values built exactly as Get builds them),
//! and its errors into statuses.
//!
//! A batch of events is shared by every watcher of a fan-out group, and so
//! is its wire form: the first stream that sends a batch encodes its events
//! (`WatchEvents.events` entries) once into [`Batch::encoded`]; every
//! response is then the concatenation of its batches' bytes between a
//! two-field frame ([`WatchFrame`]), byte for byte what prost would encode
//! for the same `WatchResponse`, written by the Watch stream's own codec
//! (`super::watch_codec`) without encoding anything again per watcher.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use prost::Message as _;
use tokio_stream::Stream;
use tonic::Status;

use super::get_responses;
use crate::api::convert::timestamp_from_millis;
use crate::api::status::{kv_status, watch_status};
use crate::kv::{Entry, KvError};
use crate::proto::v1 as pb;
use crate::watch::{Batch, EventKind, WatchEvent, WatchItem, WatchRequest, Watcher};

/// The stream of a `Watch` call through the generated service (responses
/// decoded again from their frames; the server mounts the frame stream).
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The stream of encoded responses of a `Watch` call.
pub type FrameStream = Pin<Box<dyn Stream<Item = Result<WatchFrame, Status>> + Send>>;

/// One encoded `WatchResponse`: `parts` (the shared bytes of whole batches,
/// or the whole response for a heartbeat) framed by `head` and `tail`.
#[derive(Debug, Clone, Default)]
pub struct WatchFrame {
    /// The `events` field's tag and length (empty for a heartbeat).
    pub head: Vec<u8>,
    /// The batches' encoded events, in order.
    pub parts: Vec<Bytes>,
    /// The `position` field.
    pub tail: Vec<u8>,
}

impl WatchFrame {
    /// The encoded length.
    pub fn encoded_len(&self) -> usize {
        self.head.len() + self.parts.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }

    /// The bytes, contiguous.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&self.head);
        for part in &self.parts {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(&self.tail);
        out
    }
}

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

/// The encoded responses of `watcher`, ending after the first error.
pub(crate) fn frames(watcher: Watcher) -> FrameStream {
    Box::pin(WatcherStream {
        watcher: Some(watcher),
        pending: None,
    })
}

/// The responses of `frames`, decoded (for the generated service's trait).
pub(crate) fn decoded(frames: FrameStream) -> WatchStream {
    use tokio_stream::StreamExt as _;
    Box::pin(frames.map(|frame| {
        frame.and_then(|frame| {
            pb::WatchResponse::decode(frame.to_vec().as_slice())
                .map_err(|error| Status::internal(format!("a Watch response: {error}")))
        })
    }))
}

type Next = Pin<Box<dyn Future<Output = (Option<Result<WatchFrame, Status>>, Watcher)> + Send>>;

/// A [`Watcher`] as a stream: one response future at a time, holding the
/// watcher while it runs.
struct WatcherStream {
    watcher: Option<Watcher>,
    pending: Option<Next>,
}

impl Stream for WatcherStream {
    type Item = Result<WatchFrame, Status>;

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

/// One response. Fields in tag order, as prost writes them: `events` (1)
/// then `position` (3).
pub(crate) async fn response(item: WatchItem) -> Result<WatchFrame, Status> {
    let (batches, position) = match item {
        WatchItem::Progress { position } => {
            let response = pb::WatchResponse {
                kind: Some(pb::watch_response::Kind::Progress(pb::WatchProgress {})),
                position: position.to_string(),
            };
            return Ok(WatchFrame {
                parts: vec![Bytes::from(response.encode_to_vec())],
                ..WatchFrame::default()
            });
        }
        WatchItem::Events { batches, position } => (batches, position),
    };
    let mut parts = Vec::with_capacity(batches.len());
    for batch in &batches {
        let encoded = batch
            .encoded
            .get_or_try_init(|| encode_batch(batch))
            .await?;
        parts.push(encoded.clone());
    }
    let body: usize = parts.iter().map(Bytes::len).sum();
    let mut head = Vec::with_capacity(11);
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint(body as u64, &mut head);
    let tail = pb::WatchResponse {
        kind: None,
        position: position.to_string(),
    }
    .encode_to_vec();
    Ok(WatchFrame { head, parts, tail })
}

/// The wire form of a batch's events: its `WatchEvents.events` entries
/// (concatenated, several batches' make one `WatchEvents`).
async fn encode_batch(batch: &Batch) -> Result<Bytes, Status> {
    let events = proto_events(batch.events.clone()).await?;
    Ok(Bytes::from(pb::WatchEvents { events }.encode_to_vec()))
}

/// The protobuf events; values go through Get's conversion (JSON built
/// within the response limit).
pub(crate) async fn proto_events(events: Vec<WatchEvent>) -> Result<Vec<pb::WatchEvent>, Status> {
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
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::kv::ReadValue;
    use crate::watch::Position;

    fn event(key: &str, kind: EventKind, value: Option<ReadValue>) -> WatchEvent {
        let put = kind == EventKind::Put;
        WatchEvent {
            key: key.into(),
            kind,
            version: if put { 41 } else { 0 },
            expire_at_millis: put.then_some(1_800_000_000_123),
            schema_version: u32::from(put),
            value: value.map(|value| Entry {
                value,
                metadata: Some(serde_json::json!({"by": "test", "n": [1, 2.5, null]})),
                expire_at_millis: Some(1_800_000_000_123),
                version: 41,
                schema_version: 1,
            }),
            value_superseded: false,
        }
    }

    /// A response built from shared, pre-encoded batches is byte for byte
    /// what prost encodes for the `WatchResponse` the per-watcher path built
    /// from the same events (every kind of event and value, metadata,
    /// expiry, `value_superseded`; several batches in one response), and
    /// decodes with the generated types to those events. A batch is encoded
    /// once: a second response holding it reuses the same bytes.
    #[tokio::test]
    async fn frames_are_the_bytes_prost_encodes() {
        let mut superseded = event("doc:gone", EventKind::Put, None);
        superseded.value_superseded = true;
        let first = vec![
            event(
                "doc:text",
                EventKind::Put,
                Some(ReadValue::Text("héllo".into())),
            ),
            event(
                "doc:json",
                EventKind::Put,
                Some(ReadValue::Json(
                    br#"{"a":[1,"x",true],"b":{"c":null}}"#.to_vec(),
                )),
            ),
        ];
        let second = vec![
            event(
                "doc:bytes",
                EventKind::Put,
                Some(ReadValue::Bytes(vec![0, 255, 7])),
            ),
            event("doc:plain", EventKind::Put, None),
            superseded,
            event("doc:old", EventKind::Delete, None),
            event("doc:", EventKind::NamespaceCleared, None),
        ];
        let batches = vec![
            Arc::new(Batch::new(first.clone(), 10)),
            Arc::new(Batch::new(second.clone(), 12)),
        ];
        let position = Position {
            history_id: 0x3f9c_2a17_d04e_8b61,
            sequence: 12,
        };
        let frame = response(WatchItem::Events {
            batches: batches.clone(),
            position,
        })
        .await
        .unwrap();
        let all: Vec<WatchEvent> = first.into_iter().chain(second).collect();
        let expected = pb::WatchResponse {
            kind: Some(pb::watch_response::Kind::Events(pb::WatchEvents {
                events: proto_events(all).await.unwrap(),
            })),
            position: position.to_string(),
        };
        assert_eq!(frame.to_vec(), expected.encode_to_vec());
        let decoded = pb::WatchResponse::decode(frame.to_vec().as_slice()).unwrap();
        assert_eq!(decoded, expected);
        let Some(pb::watch_response::Kind::Events(events)) = &decoded.kind else {
            panic!("events expected: {decoded:?}");
        };
        assert_eq!(events.events.len(), 7);
        assert_eq!(
            events.events[0].value,
            Some(pb::watch_event::Value::Text("héllo".into()))
        );
        assert!(matches!(
            events.events[1].value,
            Some(pb::watch_event::Value::Json(_))
        ));
        assert_eq!(
            events.events[2].value,
            Some(pb::watch_event::Value::Bytes(vec![0, 255, 7]))
        );
        assert!(events.events[4].value_superseded && events.events[4].value.is_none());
        assert_eq!(
            events.events[6].r#type,
            pb::EventType::NamespaceCleared as i32
        );
        assert_eq!(decoded.position, "3f9c2a17d04e8b61-12");
        // The same batch in another watcher's response: not encoded again.
        let again = response(WatchItem::Events {
            batches: vec![Arc::clone(&batches[1])],
            position,
        })
        .await
        .unwrap();
        assert_eq!(again.parts[0].as_ptr(), frame.parts[1].as_ptr());
        // A heartbeat, too.
        let beat = response(WatchItem::Progress { position }).await.unwrap();
        let expected = pb::WatchResponse {
            kind: Some(pb::watch_response::Kind::Progress(pb::WatchProgress {})),
            position: position.to_string(),
        };
        assert_eq!(beat.to_vec(), expected.encode_to_vec());
    }
}
