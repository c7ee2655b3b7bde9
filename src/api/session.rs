//! The `tierkv.v1.SessionService` adapter.

use prost_types::{Struct, Timestamp};
use tonic::{Request, Response, Status};

use super::auth::authorize_prefix;
use super::convert::{json_from_struct, struct_from_json, timestamp_from_millis};
use super::status::session_status;
use crate::auth::Access;
use crate::kv::FieldViolation;
use crate::proto::v1 as pb;
use crate::session::{
    CreateSession, DataCodec, RevokeTarget, Session, SessionError, SessionService,
};
use pb::session_service_server::SessionService as SessionServiceRpc;

/// The bytes a page of `ListByUser` may take: the response limit KvService
/// uses, less room for the rest of the reply (the next page token).
const LIST_REPLY_BYTES: usize = crate::kv::limits::MAX_RESPONSE_BYTES - 1024;

/// Serves [`SessionService`] over gRPC.
#[derive(Clone)]
pub struct SessionApi {
    service: SessionService,
}

impl SessionApi {
    /// An adapter for `service`.
    pub fn new(service: SessionService) -> Self {
        Self { service }
    }

    /// The tonic service to mount: requests up to the largest session write
    /// (the request limits layer bounds each method), replies up to the
    /// largest message, which listings stay within.
    pub fn into_server(self) -> pb::session_service_server::SessionServiceServer<Self> {
        use crate::kv::limits::MAX_MESSAGE_BYTES;
        use crate::session::config::MAX_SESSION_WRITE_REQUEST_BYTES;
        pb::session_service_server::SessionServiceServer::new(self)
            .max_decoding_message_size(MAX_SESSION_WRITE_REQUEST_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

fn object_from_proto(
    field: &str,
    value: Option<Struct>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, SessionError> {
    let Some(value) = value else { return Ok(None) };
    json_from_struct(value).map(Some).map_err(|description| {
        SessionError::InvalidArgument(vec![FieldViolation {
            field: field.to_string(),
            description,
        }])
    })
}

/// Session data and metadata in records as `google.protobuf.Struct`s, the
/// form replies carry (see `docs/record-format.md`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StructCodec;

impl DataCodec for StructCodec {
    fn encode(&self, object: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
        use prost::Message as _;
        struct_from_json(object).encode_to_vec()
    }

    fn decode(&self, bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>, String> {
        use prost::Message as _;
        let value = Struct::decode(bytes).map_err(|error| error.to_string())?;
        json_from_struct(value)
    }
}

fn nanos(duration: &prost_types::Duration) -> i128 {
    i128::from(duration.seconds) * 1_000_000_000 + i128::from(duration.nanos)
}

fn time(millis: u64) -> Option<Timestamp> {
    Some(timestamp_from_millis(millis))
}

/// The reply for `session`. Its data and metadata are stored in the
/// `Struct` encoding a reply carries ([`StructCodec`]), so they are decoded
/// straight into the reply, with no JSON in between; bytes that do not
/// decode are a corrupt record (DATA_LOSS).
fn session_to_proto(method: &'static str, session: Session) -> Result<pb::Session, Status> {
    use prost::Message as _;
    let corrupt = |error: prost::DecodeError| {
        session_status(
            method,
            SessionError::corrupt(
                &session.session_id,
                format!("session data is not valid: {error}"),
            ),
        )
    };
    let data = Struct::decode(session.data.encoded()).map_err(corrupt)?;
    let metadata = match &session.metadata {
        Some(metadata) => Some(Struct::decode(metadata.encoded()).map_err(corrupt)?),
        None => None,
    };
    Ok(pb::Session {
        token: session
            .token
            .map(|token| token.into_exposed())
            .unwrap_or_default(),
        session_id: session.session_id,
        user_id: session.user_id,
        data: Some(data),
        metadata,
        create_time: time(session.create_at_millis),
        expire_time: time(session.expire_at_millis),
        idle_expire_time: session.idle_expire_at_millis.and_then(time),
        last_seen_time: time(session.last_seen_at_millis),
        version: session.version,
    })
}

impl SessionApi {
    /// Sessions live under the session prefix: a token needs `access` to it.
    fn authorize<T>(&self, request: &Request<T>, access: Access) -> Result<(), Status> {
        authorize_prefix(request, access, &self.service.config().prefix)
    }
}

#[tonic::async_trait]
impl SessionServiceRpc for SessionApi {
    async fn create(
        &self,
        request: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        self.authorize(&request, Access::Write)?;
        let request = request.into_inner();
        let result = async {
            let command = CreateSession {
                user_id: request.user_id,
                ttl_nanos: request.ttl.as_ref().map(nanos),
                idle_timeout_nanos: request.idle_timeout.as_ref().map(nanos),
                data: object_from_proto("data", request.data)?,
                metadata: object_from_proto("metadata", request.metadata)?,
            };
            self.service.create(command).await
        }
        .await;
        let session = result.map_err(|error| session_status("Create", error))?;
        Ok(Response::new(session_to_proto("Create", session)?))
    }

    async fn get(
        &self,
        request: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        self.authorize(
            &request,
            if request.get_ref().touch {
                Access::Write
            } else {
                Access::Read
            },
        )?;
        let request = request.into_inner();
        let session = self
            .service
            .get(&request.token, request.touch)
            .await
            .map_err(|error| session_status("Get", error))?;
        Ok(Response::new(session_to_proto("Get", session)?))
    }

    async fn touch(
        &self,
        request: Request<pb::TouchSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        self.authorize(&request, Access::Write)?;
        let session = self
            .service
            .touch(&request.into_inner().token)
            .await
            .map_err(|error| session_status("Touch", error))?;
        Ok(Response::new(session_to_proto("Touch", session)?))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        self.authorize(&request, Access::Write)?;
        let request = request.into_inner();
        let result = async {
            let patch = object_from_proto("data", request.data)?.unwrap_or_default();
            self.service
                .update(&request.token, patch, request.if_version)
                .await
        }
        .await;
        let session = result.map_err(|error| session_status("Update", error))?;
        Ok(Response::new(session_to_proto("Update", session)?))
    }

    async fn rotate(
        &self,
        request: Request<pb::RotateSessionRequest>,
    ) -> Result<Response<pb::Session>, Status> {
        self.authorize(&request, Access::Write)?;
        let session = self
            .service
            .rotate(&request.into_inner().token)
            .await
            .map_err(|error| session_status("Rotate", error))?;
        Ok(Response::new(session_to_proto("Rotate", session)?))
    }

    async fn revoke(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        self.authorize(&request, Access::Write)?;
        let target = match request.into_inner().session {
            Some(pb::revoke_session_request::Session::Token(token)) => RevokeTarget::Token(token),
            Some(pb::revoke_session_request::Session::SessionId(id)) => RevokeTarget::SessionId(id),
            None => {
                return Err(session_status(
                    "Revoke",
                    SessionError::InvalidArgument(vec![FieldViolation {
                        field: "session".into(),
                        description: "set token or session_id".into(),
                    }]),
                ))
            }
        };
        let revoked = self
            .service
            .revoke(target)
            .await
            .map_err(|error| session_status("Revoke", error))?;
        Ok(Response::new(pb::RevokeSessionResponse { revoked }))
    }

    async fn list_by_user(
        &self,
        request: Request<pb::ListSessionsByUserRequest>,
    ) -> Result<Response<pb::ListSessionsByUserResponse>, Status> {
        self.authorize(&request, Access::Read)?;
        let request = request.into_inner();
        let page = self
            .service
            .list_by_user(
                &request.user_id,
                request.page_size,
                &request.page_token,
                LIST_REPLY_BYTES,
            )
            .await
            .map_err(|error| session_status("ListByUser", error))?;
        Ok(Response::new(pb::ListSessionsByUserResponse {
            sessions: page
                .sessions
                .into_iter()
                .map(|session| session_to_proto("ListByUser", session))
                .collect::<Result<_, _>>()?,
            next_page_token: page.next_page_token,
        }))
    }

    async fn revoke_all_for_user(
        &self,
        request: Request<pb::RevokeAllForUserRequest>,
    ) -> Result<Response<pb::RevokeAllForUserResponse>, Status> {
        self.authorize(&request, Access::Write)?;
        let request = request.into_inner();
        let except = (!request.except_session_id.is_empty()).then_some(request.except_session_id);
        let revoked = self
            .service
            .revoke_all_for_user(&request.user_id, except.as_deref())
            .await
            .map_err(|error| session_status("RevokeAllForUser", error))?;
        Ok(Response::new(pb::RevokeAllForUserResponse { revoked }))
    }
}

#[cfg(test)]
mod tests {
    use crate::session::DataCodec as _;
    use crate::session::StoredObject;

    /// Stored data its codec cannot read makes the reply DATA_LOSS, not a
    /// panic and not an empty object.
    #[test]
    fn unreadable_stored_data_is_data_loss() {
        let session = super::Session {
            token: None,
            session_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            user_id: "u".into(),
            data: StoredObject::new(b"not a struct".to_vec()),
            metadata: None,
            create_at_millis: 0,
            expire_at_millis: 0,
            idle_expire_at_millis: None,
            last_seen_at_millis: 0,
            version: 1,
        };
        let status = super::session_to_proto("Get", session).unwrap_err();
        assert_eq!(status.code(), tonic::Code::DataLoss, "{status:?}");
    }
    /// The owner named in the namespace configuration is this service.
    #[test]
    fn owner_is_the_generated_service_name() {
        use tonic::server::NamedService;
        type Server =
            crate::proto::v1::session_service_server::SessionServiceServer<super::SessionApi>;
        assert_eq!(<Server as NamedService>::NAME, crate::session::OWNER);
    }

    /// The bound a listing counts a session with is never below what the
    /// session takes in the reply, and not far above it.
    #[test]
    fn reply_bytes_bound_covers_the_encoded_session() {
        use prost::Message as _;
        let data: serde_json::Map<String, serde_json::Value> = (0..50)
            .map(|i| (format!("field{i}"), serde_json::Value::from(i)))
            .collect();
        let latest = crate::kv::limits::MAX_EXPIRE_AT_MILLIS;
        for (token, metadata, idle) in [
            (None, None, None),
            (
                Some(crate::session::token::issue().token),
                Some(data.clone()),
                Some(latest),
            ),
        ] {
            let session = super::Session {
                token,
                session_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
                user_id: "u".repeat(128),
                data: StoredObject::new(super::StructCodec.encode(data.clone())),
                metadata: metadata
                    .as_ref()
                    .map(|metadata| StoredObject::new(super::StructCodec.encode(metadata.clone()))),
                create_at_millis: latest,
                expire_at_millis: latest,
                idle_expire_at_millis: idle,
                last_seen_at_millis: latest,
                version: u64::MAX,
            };
            let bound = session.reply_bytes_bound();
            let reply = super::pb::ListSessionsByUserResponse {
                sessions: vec![super::session_to_proto("ListByUser", session).unwrap()],
                next_page_token: String::new(),
            };
            let actual = reply.encoded_len();
            assert!(bound >= actual, "bound {bound} < actual {actual}");
            assert!(
                bound <= actual + 64,
                "bound {bound} far above actual {actual}"
            );
        }
    }

    /// Records hold data as the `google.protobuf.Struct` a reply carries
    /// (the layout `docs/record-format.md` pins), and read back as the
    /// same JSON; bytes that are not a struct are an error, not a panic.
    #[test]
    fn struct_codec_stores_what_replies_carry() {
        use prost::Message as _;
        let data = match serde_json::json!({"role": "admin", "n": 3, "x": [1.5, null, {"y": true}]})
        {
            serde_json::Value::Object(object) => object,
            _ => unreachable!(),
        };
        let bytes = super::StructCodec.encode(data.clone());
        assert_eq!(
            bytes,
            crate::api::convert::struct_from_json(data.clone()).encode_to_vec()
        );
        assert_eq!(super::StructCodec.decode(&bytes).unwrap(), data);
        assert!(super::StructCodec.decode(&[0xff, 0xff, 0xff]).is_err());
    }

    /// The structs of the golden session record in `session::tests` are
    /// what prost writes for the JSON they stand for, and read back as it.
    #[test]
    fn struct_codec_reads_the_golden_structs() {
        use crate::session::tests::{hex, GOLDEN_DATA, GOLDEN_METADATA};
        for (golden, json) in [
            (GOLDEN_DATA, serde_json::json!({"n": 3, "role": "admin"})),
            (GOLDEN_METADATA, serde_json::json!({"ip": "10.0.0.1"})),
        ] {
            let serde_json::Value::Object(object) = json else {
                unreachable!()
            };
            assert_eq!(super::StructCodec.encode(object.clone()), hex(golden));
            assert_eq!(super::StructCodec.decode(&hex(golden)).unwrap(), object);
        }
    }
}
