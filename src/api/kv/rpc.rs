//! The tonic service of `tierkv.v1.KvService`: authorizes each call, converts
//! with the functions of `super`, calls the domain service and maps its
//! errors (`crate::api::status`).

use super::*;
use crate::api::auth::{authorize_key, authorize_keys, authorize_prefix};
use crate::api::call::RequestDeadline;
use crate::api::convert::{json_to_proto, timestamp_from_millis};
use crate::api::status::kv_status;
use crate::auth::Access;
use crate::kv::{FieldViolation, KvError, KvService, Mutation, MutationResult};
use crate::proto::v1 as pb;
use crate::watch::{WatchConfig, WatchService};
use pb::kv_service_server::KvService as KvServiceRpc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// Serves [`KvService`] over gRPC.
#[derive(Clone)]
pub struct KvApi {
    service: KvService,
    watch: WatchService,
}

impl KvApi {
    /// An adapter for `service`, with a Watch service of the default
    /// `[watch]` settings over the same records.
    pub fn new(service: KvService) -> Self {
        let watch = WatchService::new(service.store().clone(), WatchConfig::default());
        Self { service, watch }
    }

    /// Serves Watch with `watch` (the server's configured one).
    pub fn with_watch(mut self, watch: WatchService) -> Self {
        self.watch = watch;
        self
    }

    /// The tonic service to mount: the generated server, with Watch served
    /// through its own codec (shared pre-encoded batches).
    pub fn into_server(self) -> super::watch_codec::KvServer {
        super::watch_codec::KvServer::new(self)
    }

    /// A Watch call's encoded responses.
    pub(super) async fn watch_frames(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<super::watch::FrameStream, Status> {
        // Read access to every key under the prefix, as List needs.
        authorize_prefix(&request, Access::Read, &request.get_ref().prefix)?;
        let request = super::watch::watch_request(request.into_inner())
            .map_err(|error| kv_status("Watch", error))?;
        let watcher = self
            .watch
            .watch(request)
            .await
            .map_err(crate::api::status::watch_status)?;
        Ok(super::watch::frames(watcher))
    }
}

#[tonic::async_trait]
impl KvServiceRpc for KvApi {
    type WatchStream = super::watch::WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        // Served by `KvServer` through its own codec; this is the same
        // stream for a caller that mounts the generated server itself.
        let frames = self.watch_frames(request).await?;
        Ok(Response::new(super::watch::decoded(frames)))
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        authorize_key(&request, Access::Read, &request.get_ref().key)?;
        let time = fallback_time(&request);
        let request = request.into_inner();
        let result = async {
            let value_type = value_type_from_proto(request.r#type)?;
            if let Some(fallback) = request.fallback {
                let fallback = fallback_value(fallback)?;
                let outcome = self
                    .service
                    .get_or_fallback(&request.key, value_type, time)
                    .await?;
                return answer_with_fallbacks(vec![(request.key, outcome)], &fallback)
                    .await
                    .map(|mut responses| responses.pop().unwrap_or_default());
            }
            let entry = self.service.get(&request.key, value_type).await?;
            let mut responses = get_responses(vec![(request.key, entry)]).await?;
            Ok(responses.pop().unwrap_or_default())
        }
        .await;
        result
            .map(Response::new)
            .map_err(|error| kv_status("Get", error))
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        authorize_keys(
            &request,
            Access::Read,
            request.get_ref().keys.iter().map(String::as_str),
        )?;
        let time = fallback_time(&request);
        let request = request.into_inner();
        let result = async {
            let value_type = value_type_from_proto(request.r#type)?;
            if let Some(fallback) = request.fallback {
                let fallback = fallback_value(fallback)?;
                let outcomes = self
                    .service
                    .batch_get_or_fallback(&request.keys, value_type, time)
                    .await?;
                return answer_with_fallbacks(
                    request.keys.into_iter().zip(outcomes).collect(),
                    &fallback,
                )
                .await;
            }
            let entries = self.service.batch_get(&request.keys, value_type).await?;
            get_responses(request.keys.into_iter().zip(entries).collect()).await
        }
        .await;
        let results = result.map_err(|error| kv_status("BatchGet", error))?;
        Ok(Response::new(pb::BatchGetResponse { results }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
        authorize_key(&request, Access::Write, &request.get_ref().key)?;
        let result = async {
            let command = put_command("", request.into_inner())?;
            self.service.put(command).await
        }
        .await;
        let put = result.map_err(|error| kv_status("Put", error))?;
        Ok(Response::new(pb::PutResponse {
            version: put.version,
            expire_time: put.expire_at_millis.map(timestamp_from_millis),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        authorize_key(&request, Access::Write, &request.get_ref().key)?;
        let existed = self
            .service
            .delete(delete_command(request.into_inner()))
            .await
            .map_err(|error| kv_status("Delete", error))?;
        Ok(Response::new(pb::DeleteResponse { existed }))
    }

    async fn batch_write(
        &self,
        request: Request<pb::BatchWriteRequest>,
    ) -> Result<Response<pb::BatchWriteResponse>, Status> {
        authorize_keys(
            &request,
            Access::Write,
            request
                .get_ref()
                .mutations
                .iter()
                // A mutation without an operation names no key: it is left to
                // validation below, which refuses it as INVALID_ARGUMENT.
                .filter_map(|mutation| match &mutation.operation {
                    Some(pb::mutation::Operation::Put(put)) => Some(put.key.as_str()),
                    Some(pb::mutation::Operation::Delete(delete)) => Some(delete.key.as_str()),
                    None => None,
                }),
        )?;
        let result = async {
            let mut mutations = Vec::new();
            let mut violations = Vec::new();
            for (index, mutation) in request.into_inner().mutations.into_iter().enumerate() {
                match mutation.operation {
                    Some(pb::mutation::Operation::Put(put)) => {
                        match put_command(&format!("mutations[{index}].put."), put) {
                            Ok(command) => mutations.push(Mutation::Put(command)),
                            Err(KvError::InvalidArgument(mut found)) => {
                                violations.append(&mut found)
                            }
                            Err(other) => return Err(other),
                        }
                    }
                    Some(pb::mutation::Operation::Delete(delete)) => {
                        mutations.push(Mutation::Delete(delete_command(delete)))
                    }
                    None => violations.push(FieldViolation {
                        field: format!("mutations[{index}]"),
                        description: "a mutation needs put or delete".into(),
                    }),
                }
            }
            if !violations.is_empty() {
                return Err(KvError::InvalidArgument(violations));
            }
            self.service.batch_write(mutations).await
        }
        .await;
        let outcomes = result.map_err(|error| kv_status("BatchWrite", error))?;
        let results = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                MutationResult::Put(put) => pb::MutationResult {
                    version: put.version,
                    expire_time: put.expire_at_millis.map(timestamp_from_millis),
                    existed: false,
                },
                MutationResult::Delete { existed } => pb::MutationResult {
                    existed,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::BatchWriteResponse { results }))
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        authorize_prefix(&request, Access::Read, &request.get_ref().prefix)?;
        let request = request.into_inner();
        let page = self
            .service
            .list(&request.prefix, request.page_size, &request.page_token)
            .await
            .map_err(|error| kv_status("List", error))?;
        let keys = page
            .keys
            .into_iter()
            .map(|key| pb::ListedKey {
                name: key.name,
                expire_time: key.expire_at_millis.map(timestamp_from_millis),
                metadata: key.metadata.map(json_to_proto),
                version: key.version,
                schema_version: key.schema_version,
            })
            .collect();
        Ok(Response::new(pb::ListResponse {
            keys,
            next_page_token: page.next_page_token,
            position: crate::watch::Position {
                history_id: self.service.engine().history_id(),
                sequence: page.position,
            }
            .to_string(),
        }))
    }

    async fn patch(
        &self,
        request: Request<pb::PatchRequest>,
    ) -> Result<Response<pb::PatchResponse>, Status> {
        // A patch writes the key and answers with its whole value: both grants.
        authorize_key(&request, Access::Write, &request.get_ref().key)?;
        authorize_key(&request, Access::Read, &request.get_ref().key)?;
        let result = async {
            let command = patch_command(request.into_inner())?;
            self.service.patch(command).await
        }
        .await;
        let patched = result.map_err(|error| kv_status("Patch", error))?;
        Ok(Response::new(pb::PatchResponse {
            value: Some(json_to_proto(patched.value)),
            version: patched.version,
            expire_time: patched.expire_at_millis.map(timestamp_from_millis),
            created: patched.created,
        }))
    }
}

/// Time kept back from a fallback read's deadline to build and send the
/// answer, so the fallback goes out before the deadline layer gives up.
const FALLBACK_RESERVE: Duration = Duration::from_millis(5);

/// How long a fallback read may take: up to the request's deadline, less
/// [`FALLBACK_RESERVE`]; unbounded without a deadline.
fn fallback_time<T>(request: &Request<T>) -> Option<Duration> {
    request
        .extensions()
        .get::<RequestDeadline>()
        .map(|deadline| deadline.time_left(FALLBACK_RESERVE))
}
