//! The `tierkv.v1.CacheService` adapter.

use std::time::{Duration, Instant};

use tonic::{Request, Response, Status};

use super::auth::{authorize_key, authorize_prefix};
use super::call::RequestDeadline;
use super::convert::{build_json_value, scan_json_text};
use super::convert::{nanos_from_duration, timestamp_from_millis};
use super::kv::{json_read_error, put_command, value_type_from_proto, INLINE_JSON_BYTES};
use super::status::{cache_status, kv_status};
use crate::auth::Access;
use crate::cache::{CacheError, CachePut, CacheService, PurgeCommand, Tier};
use crate::engine::EngineError;
use crate::kv::limits::{MAX_JSON_DEPTH, MAX_RESPONSE_BYTES};
use crate::kv::{Expiration, FieldViolation, KvError, ReadValue};
use crate::proto::v1 as pb;
use pb::cache_service_server::CacheService as CacheServiceRpc;

/// How much earlier than the deadline layer the service stops waiting for an
/// origin, so that it can still answer with a stale copy (or its own
/// DEADLINE_EXCEEDED) before the layer answers for it.
const ANSWER_MARGIN: Duration = Duration::from_millis(5);

/// Serves [`CacheService`] over gRPC.
#[derive(Clone)]
pub struct CacheApi {
    service: CacheService,
}

impl CacheApi {
    /// An adapter for `service`.
    pub fn new(service: CacheService) -> Self {
        Self { service }
    }

    /// The tonic service to mount.
    pub fn into_server(self) -> pb::cache_service_server::CacheServiceServer<Self> {
        use crate::kv::limits::MAX_MESSAGE_BYTES;
        pb::cache_service_server::CacheServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// When the call must be answered by: the deadline the deadline layer
    /// will enforce (the client's `grpc-timeout` or the server's request
    /// timeout, whichever is sooner), less [`ANSWER_MARGIN`].
    fn deadline<T>(&self, request: &Request<T>) -> Option<Instant> {
        request
            .extensions()
            .get::<RequestDeadline>()
            .map(|deadline| Instant::now() + deadline.time_left(ANSWER_MARGIN))
    }
}

fn tier_to_proto(tier: Tier) -> pb::CacheTier {
    match tier {
        Tier::Memory => pb::CacheTier::Memory,
        Tier::Store => pb::CacheTier::Store,
        Tier::Origin => pb::CacheTier::Origin,
        Tier::Stale => pb::CacheTier::Stale,
    }
}

fn duration_from_millis(millis: u64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: (millis / 1000) as i64,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

/// A cached JSON text as the `google.protobuf.Value` of a Get answer: within
/// the nesting limit and what the response limit leaves beside a found
/// answer's key and version (as KvService.Get measures it); large values are
/// converted on the blocking pool.
async fn json_answer(
    key: String,
    version: u64,
    text: Vec<u8>,
) -> Result<prost_types::Value, KvError> {
    use prost::Message as _;
    let inline = text.len() <= INLINE_JSON_BYTES;
    let convert = move || {
        let base = pb::GetResponse {
            found: true,
            key: key.clone(),
            version,
            ..Default::default()
        }
        .encoded_len();
        // The json field's tag and length take at most 6 bytes.
        let budget = MAX_RESPONSE_BYTES.saturating_sub(base + 6);
        let scanned = scan_json_text(&text, MAX_JSON_DEPTH, budget)
            .map_err(|error| json_read_error(key.clone(), text.len(), budget, error))?;
        build_json_value(&text, &scanned)
            .map_err(|error| json_read_error(key, text.len(), 0, error))
    };
    if inline {
        return convert();
    }
    tokio::task::spawn_blocking(convert)
        .await
        .unwrap_or_else(|error| {
            Err(KvError::Engine(EngineError::Storage(format!(
                "converting a response failed: {error}"
            ))))
        })
}

#[tonic::async_trait]
impl CacheServiceRpc for CacheApi {
    async fn get(
        &self,
        request: Request<pb::CacheGetRequest>,
    ) -> Result<Response<pb::CacheGetResponse>, Status> {
        // A read, even when it fills the tiers from an origin: the fill
        // stores what the origin serves for the key, nothing the caller chose.
        authorize_key(&request, Access::Read, &request.get_ref().key)?;
        let deadline = self.deadline(&request);
        let request = request.into_inner();
        let value_type =
            value_type_from_proto(request.r#type).map_err(|error| kv_status("Get", error))?;
        let cached = self
            .service
            .get(&request.key, value_type, deadline)
            .await
            .map_err(|error| cache_status("Get", error))?;
        let Some(cached) = cached else {
            return Ok(Response::new(pb::CacheGetResponse {
                key: request.key,
                ..Default::default()
            }));
        };
        let value = match cached.value {
            ReadValue::Text(text) => pb::cache_get_response::Value::Text(text),
            ReadValue::Bytes(bytes) => pb::cache_get_response::Value::Bytes(bytes),
            // JSON is converted as KvService.Get converts it: within the
            // nesting and response limits, large values off the workers.
            ReadValue::Json(text) => pb::cache_get_response::Value::Json(
                json_answer(request.key.clone(), cached.version, text)
                    .await
                    .map_err(|error| kv_status("Get", error))?,
            ),
        };
        Ok(Response::new(pb::CacheGetResponse {
            found: true,
            value: Some(value),
            content_type: cached.content_type.unwrap_or_default(),
            tier: tier_to_proto(cached.tier) as i32,
            age: Some(duration_from_millis(cached.age_ms)),
            expire_time: cached.expire_at_millis.map(timestamp_from_millis),
            version: cached.version,
            key: request.key,
            stored: cached.stored,
        }))
    }

    async fn put(
        &self,
        request: Request<pb::CachePutRequest>,
    ) -> Result<Response<pb::CachePutResponse>, Status> {
        authorize_key(&request, Access::Write, &request.get_ref().key)?;
        let result = async {
            let request = request.into_inner();
            let mut violations = Vec::new();
            let memory_ttl_nanos = match request.memory_ttl.as_ref().map(nanos_from_duration) {
                None => None,
                Some(Ok(nanos)) => Some(nanos),
                Some(Err(reason)) => {
                    violations.push(FieldViolation {
                        field: "memory_ttl".into(),
                        description: reason.replacen("ttl", "memory_ttl", 1),
                    });
                    None
                }
            };
            // The value and the store TTL convert exactly as KvService.Put's do.
            let kv_request = pb::PutRequest {
                key: request.key,
                value: request.value.map(|value| match value {
                    pb::cache_put_request::Value::Text(text) => pb::put_request::Value::Text(text),
                    pb::cache_put_request::Value::Json(json) => pb::put_request::Value::Json(json),
                    pb::cache_put_request::Value::Bytes(bytes) => {
                        pb::put_request::Value::Bytes(bytes)
                    }
                }),
                expiration: request.store_ttl.map(pb::put_request::Expiration::Ttl),
                ..Default::default()
            };
            let command = match put_command("", kv_request) {
                Ok(command) => Some(command),
                Err(KvError::InvalidArgument(mut found)) => {
                    violations.append(&mut found);
                    None
                }
                Err(other) => return Err(CacheError::Kv(other)),
            };
            let (Some(command), true) = (command, violations.is_empty()) else {
                return Err(CacheError::Kv(KvError::InvalidArgument(violations)));
            };
            let store_ttl_nanos = match command.expiration {
                Expiration::TtlNanos(nanos) => Some(nanos),
                _ => None,
            };
            self.service
                .put(CachePut {
                    key: command.key,
                    value: command.value,
                    content_type: (!request.content_type.is_empty())
                        .then_some(request.content_type),
                    memory_ttl_nanos,
                    store_ttl_nanos,
                })
                .await
        }
        .await;
        let put = result.map_err(|error| cache_status("Put", error))?;
        Ok(Response::new(pb::CachePutResponse {
            version: put.version,
            expire_time: put.expire_at_millis.map(timestamp_from_millis),
        }))
    }

    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        authorize_key(&request, Access::Write, &request.get_ref().key)?;
        let existed = self
            .service
            .invalidate(&request.into_inner().key)
            .await
            .map_err(|error| cache_status("Invalidate", error))?;
        Ok(Response::new(pb::InvalidateResponse { existed }))
    }

    async fn purge(
        &self,
        request: Request<pb::PurgeRequest>,
    ) -> Result<Response<pb::PurgeResponse>, Status> {
        authorize_prefix(&request, Access::Write, &request.get_ref().prefix)?;
        let deadline = self.deadline(&request);
        let request = request.into_inner();
        let outcome = self
            .service
            .purge(
                PurgeCommand {
                    prefix: request.prefix,
                    expected_keys: request.expected_keys,
                    dry_run: request.dry_run,
                },
                deadline,
            )
            .await
            .map_err(|error| cache_status("Purge", error))?;
        Ok(Response::new(pb::PurgeResponse {
            purged: outcome.purged,
            listed: outcome.listed,
            skipped: outcome.skipped,
            more: outcome.more,
        }))
    }
}
