//! The Session service's domain logic: expiring user sessions with opaque
//! bearer tokens, a per-user index, sliding idle expiry, rotation and
//! revocation. No transport types live here; `crate::api::session` adapts it
//! to gRPC.
//!
//! # Storage
//! Two kinds of keys live in the session namespace (prefix `P`, `session:` by
//! default), which the Session service owns (the KV service refuses them):
//! - `P s/<session_id>`: the session (a protobuf message: user, hash of the
//!   token's secret, times, data, metadata);
//! - `P u/<escaped user_id>/<session_id>`: the user → sessions index, empty.
//!
//! Both are written in one atomic batch with the same expiry (the earlier of
//! the absolute and the idle expiry), so the engine's expiry removes them
//! together and a listing (a prefix scan of the index) never disagrees with
//! the sessions. `/` and `%` in user ids are percent-encoded so that one
//! user's index prefix never covers another's.
//!
//! # Concurrency
//! Every change is a read-modify-write guarded by the session record's
//! version (`IfVersion`); a conflict re-reads and retries, so concurrent
//! updates of different fields never lose each other. Creation uses
//! `IfAbsent`, so it never overwrites.

pub mod config;
mod error;
mod keys;
mod listing;
mod model;
pub mod record;
pub mod token;
mod validate;

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::engine::{DeleteOp, Engine, EngineError, Precondition, PutOp, ValueKind, WriteOp};
use crate::kv::FieldViolation;
pub use config::SessionConfig;
pub use error::SessionError;
use error::{invalid, violation};
use keys::Keys;
use model::into_session;
pub use model::{CreateSession, RevokeTarget, Session, SessionPage, StoredObject};
pub use record::DataCodec;
use record::{decode, decode_object, Stored};
pub use token::Token;
use validate::{check_duration, check_json_size, merge_patch};

/// The gRPC service that owns the session namespace.
pub const OWNER: &str = "tierkv.v1.SessionService";
/// Page size of a listing that asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest page of a listing.
pub const MAX_PAGE_SIZE: usize = 1000;
/// How many times a change re-reads and retries after losing a race.
const MAX_ATTEMPTS: usize = 1000;
/// Sessions read from the engine at once while a listing fills its page: a
/// page that stops early at its byte limit holds at most this many records
/// beyond it.
const LIST_READ_BATCH: usize = 16;
/// Index entries revoked per atomic batch by `revoke_all_for_user`.
const REVOKE_BATCH: usize = 500;
/// A well-formed session id that is never issued (the all-zero id is as
/// likely as any other, 2^-128), read for malformed tokens.
const MISSING_SESSION_ID: &str = "AAAAAAAAAAAAAAAAAAAAAA";
/// The one message for every token that does not lead to a live session.
pub const NOT_FOUND_MESSAGE: &str = "no live session for this token";

/// A live session read from the engine.
struct Found {
    session_id: String,
    stored: Stored,
    version: u64,
}

/// The Session service.
#[derive(Clone)]
pub struct SessionService {
    engine: Arc<dyn Engine>,
    /// Encodes data and metadata in records (the server's is protobuf's
    /// `Struct`, so replies carry them as stored).
    codec: Arc<dyn DataCodec>,
    config: Arc<SessionConfig>,
    /// The keys of records and of the per-user index.
    keys: Keys,
    counters: Arc<Counters>,
}

/// How many sessions were created, rotated and revoked since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionCounts {
    /// Sessions created.
    pub created: u64,
    /// Tokens rotated.
    pub rotated: u64,
    /// Sessions revoked, one by one or all of a user's at once.
    pub revoked: u64,
}

#[derive(Debug, Default)]
struct Counters {
    created: std::sync::atomic::AtomicU64,
    rotated: std::sync::atomic::AtomicU64,
    revoked: std::sync::atomic::AtomicU64,
}

fn count(counter: &std::sync::atomic::AtomicU64, by: u64) {
    counter.fetch_add(by, std::sync::atomic::Ordering::Relaxed);
}

impl SessionService {
    /// A service over `engine` with a validated `config`, storing data and
    /// metadata as `codec` encodes them.
    pub fn new(engine: Arc<dyn Engine>, config: SessionConfig, codec: Arc<dyn DataCodec>) -> Self {
        let keys = Keys::new(&config.prefix);
        Self {
            engine,
            codec,
            config: Arc::new(config),
            keys,
            counters: Arc::default(),
        }
    }

    /// Sessions created, rotated and revoked since start.
    pub fn counts(&self) -> SessionCounts {
        let load = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        SessionCounts {
            created: load(&self.counters.created),
            rotated: load(&self.counters.rotated),
            revoked: load(&self.counters.revoked),
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Now, by the engine's clock, the one clock for expiry: it never goes
    /// back (not even across restarts), so a clock stepped back cannot
    /// shorten a new session or revive an old one.
    fn now_millis(&self) -> u64 {
        self.engine.now_millis()
    }

    /// Creates a session; the result carries its token.
    pub async fn create(&self, request: CreateSession) -> Result<Session, SessionError> {
        let created = self.create_session(request).await;
        if created.is_ok() {
            count(&self.counters.created, 1);
        }
        created
    }

    async fn create_session(&self, request: CreateSession) -> Result<Session, SessionError> {
        let mut violations = Vec::new();
        if let Err(found) = self.check_user_id("user_id", &request.user_id) {
            violations.push(found);
        }
        let max_ms = self.config.max_ttl_secs.saturating_mul(1000);
        let ttl_ms = match request.ttl_nanos {
            None => Some(self.config.default_ttl_secs.saturating_mul(1000)),
            Some(nanos) => check_duration("ttl", nanos, max_ms)
                .map_err(|found| violations.push(found))
                .ok(),
        };
        let idle_ms = match request.idle_timeout_nanos {
            None => Some(
                (self.config.default_idle_timeout_secs > 0)
                    .then(|| self.config.default_idle_timeout_secs.saturating_mul(1000)),
            ),
            Some(nanos) => check_duration("idle_timeout", nanos, max_ms)
                .map(Some)
                .map_err(|found| violations.push(found))
                .ok(),
        };
        let data = request.data.unwrap_or_default();
        if let Err(found) = check_json_size("data", &data, self.config.max_data_bytes) {
            violations.push(found);
        }
        if let Some(metadata) = &request.metadata {
            if let Err(found) =
                check_json_size("metadata", metadata, self.config.max_metadata_bytes)
            {
                violations.push(found);
            }
        }
        let (Some(ttl_ms), Some(idle_ms)) = (ttl_ms, idle_ms) else {
            return Err(SessionError::InvalidArgument(violations));
        };
        if !violations.is_empty() {
            return Err(SessionError::InvalidArgument(violations));
        }

        let now = self.now_millis();
        let expire_ms = now.saturating_add(ttl_ms);
        let mut stored = Stored {
            user_id: request.user_id,
            secret_hash: Vec::new(),
            create_ms: now,
            expire_ms,
            idle_timeout_ms: idle_ms,
            idle_expire_ms: idle_ms.map(|idle| now.saturating_add(idle).min(expire_ms)),
            last_seen_ms: now,
            data: Some(self.codec.encode(data)),
            metadata: request.metadata.map(|metadata| self.codec.encode(metadata)),
        };
        // A collision of 128 random bits does not happen; IfAbsent makes sure
        // that if it did, nothing would be overwritten.
        for _ in 0..3 {
            let issued = token::issue();
            stored.secret_hash = issued.secret_hash.to_vec();
            let ops = vec![
                self.put_record(&issued.session_id, &stored, Precondition::IfAbsent),
                self.put_index(
                    &stored.user_id,
                    &issued.session_id,
                    stored.record_expire_ms(),
                    Precondition::IfAbsent,
                ),
            ];
            match self.engine.write(ops).await {
                Ok(outcomes) => {
                    let version = outcomes.put_version(0)?;
                    tracing::info!(session_id = %issued.session_id, "session created");
                    return Ok(into_session(
                        stored,
                        issued.session_id,
                        version,
                        Some(issued.token),
                    ));
                }
                Err(EngineError::PreconditionFailed { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SessionError::Contention(3))
    }

    /// The live session `token` belongs to; with `touch`, also touches it.
    pub async fn get(&self, token: &str, touch: bool) -> Result<Session, SessionError> {
        if touch {
            return self.touch(token).await;
        }
        let found = self.find(token).await?;
        Ok(into_session(
            found.stored,
            found.session_id,
            found.version,
            None,
        ))
    }

    /// Slides the idle expiry forward (never past the absolute expiry) and
    /// records the use, writing at most once per touch interval.
    pub async fn touch(&self, token: &str) -> Result<Session, SessionError> {
        for _ in 0..MAX_ATTEMPTS {
            // Relies on the engine's strong reads plus `IfVersion`, not on the change feed.
            let found = self.find(token).await?;
            let now = self.now_millis();
            if !self.touch_due(&found.stored, now) {
                return Ok(into_session(
                    found.stored,
                    found.session_id,
                    found.version,
                    None,
                ));
            }
            let mut stored = found.stored;
            stored.last_seen_ms = now;
            if let Some(idle) = stored.idle_timeout_ms {
                stored.idle_expire_ms = Some(now.saturating_add(idle).min(stored.expire_ms));
            }
            // The index entry carries the record's expiry, so it moves too.
            let ops = vec![
                self.put_record(
                    &found.session_id,
                    &stored,
                    Precondition::IfVersion(found.version),
                ),
                self.put_index(
                    &stored.user_id,
                    &found.session_id,
                    stored.record_expire_ms(),
                    Precondition::None,
                ),
            ];
            match self.engine.write(ops).await {
                Ok(outcomes) => {
                    let version = outcomes.put_version(0)?;
                    return Ok(into_session(stored, found.session_id, version, None));
                }
                Err(EngineError::PreconditionFailed { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SessionError::Contention(MAX_ATTEMPTS))
    }

    /// Whether a touch at `now` should write: once per touch interval, and
    /// at least once per half idle timeout so that a session in use never
    /// idles out between writes.
    fn touch_due(&self, stored: &Stored, now: u64) -> bool {
        let mut interval = self.config.touch_interval_secs.saturating_mul(1000);
        if let Some(idle) = stored.idle_timeout_ms {
            interval = interval.min(idle / 2);
        }
        now.saturating_sub(stored.last_seen_ms) >= interval
    }

    /// Applies an RFC 7396 merge patch to the session's data.
    pub async fn update(
        &self,
        token: &str,
        patch: Map<String, Value>,
        if_version: Option<u64>,
    ) -> Result<Session, SessionError> {
        let patch = Value::Object(patch);
        for _ in 0..MAX_ATTEMPTS {
            let found = self.find(token).await?;
            if let Some(expected) = if_version {
                if expected != found.version {
                    return Err(SessionError::VersionMismatch {
                        expected,
                        current: found.version,
                    });
                }
            }
            let mut stored = found.stored;
            let data = decode_object(
                &*self.codec,
                &found.session_id,
                stored.data.as_deref().unwrap_or_default(),
            )?;
            let data = merge_patch(data, &patch);
            if let Err(found) = check_json_size("data", &data, self.config.max_data_bytes) {
                return Err(SessionError::InvalidArgument(vec![FieldViolation {
                    description: format!("after the patch, {}", found.description),
                    ..found
                }]));
            }
            stored.data = Some(self.codec.encode(data));
            let ops = vec![self.put_record(
                &found.session_id,
                &stored,
                Precondition::IfVersion(found.version),
            )];
            match self.engine.write(ops).await {
                Ok(outcomes) => {
                    let version = outcomes.put_version(0)?;
                    return Ok(into_session(stored, found.session_id, version, None));
                }
                // The session ended (revoked, expired) between the read and the
                // write: that is NOT_FOUND, as it would be a moment later.
                Err(EngineError::PreconditionFailed {
                    current_version: None,
                    ..
                }) => return Err(SessionError::NotFound),
                Err(EngineError::PreconditionFailed {
                    current_version: Some(current),
                    ..
                }) => {
                    if let Some(expected) = if_version {
                        return Err(SessionError::VersionMismatch { expected, current });
                    }
                }
                Err(other) => return Err(other.into()),
            }
        }
        Err(SessionError::Contention(MAX_ATTEMPTS))
    }

    /// Gives the session a new token; the old one stops working at once.
    pub async fn rotate(&self, token: &str) -> Result<Session, SessionError> {
        let rotated = self.rotate_session(token).await;
        if rotated.is_ok() {
            count(&self.counters.rotated, 1);
        }
        rotated
    }

    async fn rotate_session(&self, token: &str) -> Result<Session, SessionError> {
        for _ in 0..MAX_ATTEMPTS {
            let found = self.find(token).await?;
            let issued = token::reissue(found.session_id);
            let mut stored = found.stored;
            stored.secret_hash = issued.secret_hash.to_vec();
            let ops = vec![self.put_record(
                &issued.session_id,
                &stored,
                Precondition::IfVersion(found.version),
            )];
            match self.engine.write(ops).await {
                Ok(outcomes) => {
                    let version = outcomes.put_version(0)?;
                    tracing::info!(session_id = %issued.session_id, "session token rotated");
                    return Ok(into_session(
                        stored,
                        issued.session_id,
                        version,
                        Some(issued.token),
                    ));
                }
                // Another change won; re-read. If it was a rotation, the
                // presented token no longer matches and this ends NOT_FOUND.
                Err(EngineError::PreconditionFailed { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SessionError::Contention(MAX_ATTEMPTS))
    }

    /// Ends a session; `false` when there was no live one (idempotent).
    pub async fn revoke(&self, target: RevokeTarget) -> Result<bool, SessionError> {
        let revoked = self.revoke_session(target).await;
        if let Ok(true) = revoked {
            count(&self.counters.revoked, 1);
        }
        revoked
    }

    async fn revoke_session(&self, target: RevokeTarget) -> Result<bool, SessionError> {
        if let RevokeTarget::SessionId(session_id) = &target {
            if !token::is_session_id(session_id) {
                return Err(invalid(
                    "session_id",
                    format!(
                        "session_id must be {} URL-safe base64 characters; it is {} bytes",
                        token::SESSION_ID_LEN,
                        session_id.len()
                    ),
                ));
            }
        }
        for _ in 0..MAX_ATTEMPTS {
            let found = match &target {
                RevokeTarget::Token(token) => match self.find(token).await {
                    Ok(found) => found,
                    Err(SessionError::NotFound) => return Ok(false),
                    Err(other) => return Err(other),
                },
                RevokeTarget::SessionId(session_id) => match self.read(session_id).await? {
                    Some(found) => found,
                    None => return Ok(false),
                },
            };
            let ops = vec![
                WriteOp::Delete(DeleteOp {
                    key: self.keys.record(&found.session_id),
                    precondition: Precondition::IfVersion(found.version),
                }),
                WriteOp::Delete(DeleteOp {
                    key: self.keys.index(&found.stored.user_id, &found.session_id),
                    precondition: Precondition::None,
                }),
            ];
            match self.engine.write(ops).await {
                Ok(_) => {
                    tracing::info!(session_id = %found.session_id, "session revoked");
                    return Ok(true);
                }
                Err(EngineError::PreconditionFailed { .. }) => continue,
                Err(other) => return Err(other.into()),
            }
        }
        Err(SessionError::Contention(MAX_ATTEMPTS))
    }

    /// Reads the session a token names and checks the token's secret.
    async fn find(&self, token: &str) -> Result<Found, SessionError> {
        let Some(presented) = token::parse(token) else {
            // Read a key that never exists, so that a malformed token costs
            // what an unknown one does and the answer time says nothing.
            self.read(MISSING_SESSION_ID).await?;
            return Err(SessionError::NotFound);
        };
        let found = self.read(presented.session_id).await?;
        // Compare against something even when there is no session, so that
        // an unknown id and a wrong secret take the same path.
        let stored_hash = found
            .as_ref()
            .and_then(|found| token::SecretHash::try_from(found.stored.secret_hash.as_slice()).ok())
            .unwrap_or([0xff; 32]);
        let matches = token::hashes_equal(&stored_hash, &presented.secret_hash);
        match found {
            Some(found) if matches => Ok(found),
            _ => Err(SessionError::NotFound),
        }
    }

    /// Reads a live session by id.
    async fn read(&self, session_id: &str) -> Result<Option<Found>, SessionError> {
        let Some(record) = self.engine.get(self.keys.record(session_id)).await? else {
            return Ok(None);
        };
        let version = record.version;
        let stored = decode(&*self.codec, session_id, record)?;
        // The engine hides expired records; this guards against a clock read
        // between its check and ours.
        if stored.record_expire_ms() <= self.now_millis() {
            return Ok(None);
        }
        Ok(Some(Found {
            session_id: session_id.to_string(),
            stored,
            version,
        }))
    }

    fn put_record(&self, session_id: &str, stored: &Stored, precondition: Precondition) -> WriteOp {
        WriteOp::Put(PutOp {
            key: self.keys.record(session_id),
            kind: ValueKind::Bytes,
            value: stored.to_bytes(),
            metadata: None,
            expire_at_millis: Some(stored.record_expire_ms()),
            schema_version: 1,
            precondition,
        })
    }

    fn put_index(
        &self,
        user_id: &str,
        session_id: &str,
        expire_ms: u64,
        precondition: Precondition,
    ) -> WriteOp {
        WriteOp::Put(PutOp {
            key: self.keys.index(user_id, session_id),
            kind: ValueKind::Bytes,
            value: Vec::new(),
            metadata: None,
            expire_at_millis: Some(expire_ms),
            schema_version: 1,
            precondition,
        })
    }

    fn check_user_id(&self, field: &str, user_id: &str) -> Result<(), FieldViolation> {
        let limit = self.config.max_user_id_bytes;
        if user_id.is_empty() {
            return Err(violation(field, "user_id must not be empty".into()));
        }
        if user_id.len() > limit {
            return Err(violation(
                field,
                format!(
                    "user_id is {} bytes; the limit is {limit} bytes (session.max_user_id_bytes)",
                    user_id.len()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
