//! The `tierkv.v1.KvService` adapter.

use tonic::{Request, Response, Status};

use super::convert::{
    duration_from_proto, json_from_proto, json_to_proto, millis_from_timestamp,
    timestamp_from_millis,
};
use super::status::kv_status;
use crate::engine::Precondition;
use crate::kv::{
    DeleteCommand, Entry, Expiration, FieldViolation, KvError, KvService, Mutation, MutationResult,
    PutCommand, Value, ValueType,
};
use crate::proto::v1 as pb;
use pb::kv_service_server::KvService as KvServiceRpc;

/// Serves [`KvService`] over gRPC.
#[derive(Clone)]
pub struct KvApi {
    service: KvService,
}

impl KvApi {
    /// An adapter for `service`.
    pub fn new(service: KvService) -> Self {
        Self { service }
    }

    /// The tonic service to mount.
    pub fn into_server(self) -> pb::kv_service_server::KvServiceServer<Self> {
        use crate::kv::limits::MAX_MESSAGE_BYTES;
        pb::kv_service_server::KvServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn invalid(field: String, description: String) -> KvError {
    KvError::InvalidArgument(vec![FieldViolation { field, description }])
}

fn value_type_from_proto(raw: i32) -> Result<ValueType, KvError> {
    match pb::ValueType::try_from(raw) {
        Ok(pb::ValueType::Unspecified) => Ok(ValueType::AsStored),
        Ok(pb::ValueType::Text) => Ok(ValueType::Text),
        Ok(pb::ValueType::Json) => Ok(ValueType::Json),
        Ok(pb::ValueType::Bytes) => Ok(ValueType::Bytes),
        Err(_) => Err(invalid(
            "type".into(),
            format!("unknown value type {raw}; use TEXT, JSON or BYTES"),
        )),
    }
}

fn get_response(key: String, entry: Option<Entry>) -> pb::GetResponse {
    let Some(entry) = entry else {
        return pb::GetResponse {
            key,
            ..Default::default()
        };
    };
    let value = match entry.value {
        Value::Text(text) => pb::get_response::Value::Text(text),
        Value::Json(json) => pb::get_response::Value::Json(json_to_proto(json)),
        Value::Bytes(bytes) => pb::get_response::Value::Bytes(bytes),
    };
    pb::GetResponse {
        found: true,
        value: Some(value),
        metadata: entry.metadata.map(json_to_proto),
        expire_time: entry.expire_at_millis.map(timestamp_from_millis),
        version: entry.version,
        schema_version: entry.schema_version,
        key,
    }
}

fn put_command(field_prefix: &str, request: pb::PutRequest) -> Result<PutCommand, KvError> {
    let mut violations = Vec::new();
    let value = match request.value {
        None => None,
        Some(pb::put_request::Value::Text(text)) => Some(Value::Text(text)),
        Some(pb::put_request::Value::Bytes(bytes)) => Some(Value::Bytes(bytes)),
        Some(pb::put_request::Value::Json(json)) => match json_from_proto(json) {
            Ok(json) => Some(Value::Json(json)),
            Err(reason) => {
                violations.push(FieldViolation {
                    field: format!("{field_prefix}json"),
                    description: reason,
                });
                None
            }
        },
    };
    let metadata = match request.metadata.map(json_from_proto).transpose() {
        Ok(metadata) => metadata,
        Err(reason) => {
            violations.push(FieldViolation {
                field: format!("{field_prefix}metadata"),
                description: reason,
            });
            None
        }
    };
    let expiration = match request.expiration {
        None => Ok(Expiration::Never),
        Some(pb::put_request::Expiration::Ttl(ttl)) => duration_from_proto(&ttl)
            .map(Expiration::Ttl)
            .map_err(|reason| (format!("{field_prefix}ttl"), reason)),
        Some(pb::put_request::Expiration::ExpireTime(at)) => millis_from_timestamp(&at)
            .map(Expiration::AtMillis)
            .map_err(|reason| (format!("{field_prefix}expire_time"), reason)),
    };
    let expiration = expiration.unwrap_or_else(|(field, description)| {
        violations.push(FieldViolation { field, description });
        Expiration::Never
    });
    let precondition = match request.precondition {
        None | Some(pb::put_request::Precondition::IfAbsent(false)) => Precondition::None,
        Some(pb::put_request::Precondition::IfAbsent(true)) => Precondition::IfAbsent,
        Some(pb::put_request::Precondition::IfVersion(version)) => Precondition::IfVersion(version),
    };
    if !violations.is_empty() {
        return Err(KvError::InvalidArgument(violations));
    }
    Ok(PutCommand {
        key: request.key,
        value,
        metadata,
        expiration,
        precondition,
    })
}

fn delete_command(request: pb::DeleteRequest) -> DeleteCommand {
    DeleteCommand {
        key: request.key,
        if_version: request.if_version,
    }
}

#[tonic::async_trait]
impl KvServiceRpc for KvApi {
    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let value_type = value_type_from_proto(request.r#type)?;
            self.service.get(&request.key, value_type).await
        }
        .await;
        match result {
            Ok(entry) => Ok(Response::new(get_response(request.key, entry))),
            Err(error) => Err(kv_status("Get", error)),
        }
    }

    async fn batch_get(
        &self,
        request: Request<pb::BatchGetRequest>,
    ) -> Result<Response<pb::BatchGetResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let value_type = value_type_from_proto(request.r#type)?;
            self.service.batch_get(&request.keys, value_type).await
        }
        .await;
        let entries = result.map_err(|error| kv_status("BatchGet", error))?;
        let results = request
            .keys
            .into_iter()
            .zip(entries)
            .map(|(key, entry)| get_response(key, entry))
            .collect();
        Ok(Response::new(pb::BatchGetResponse { results }))
    }

    async fn put(
        &self,
        request: Request<pb::PutRequest>,
    ) -> Result<Response<pb::PutResponse>, Status> {
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
            })
            .collect();
        Ok(Response::new(pb::ListResponse {
            keys,
            next_page_token: page.next_page_token,
        }))
    }
}
