//! A user's sessions: listing them a page at a time through the per-user
//! index, and revoking them all.

use super::record::decode;
use super::*;
use crate::engine::{DeleteOp, Precondition, ScanRequest, WriteOp, WriteOutcome};
use crate::kv::limits::MAX_LIST_EXAMINED;
use crate::records::pages::PrefixPages;

impl SessionService {
    /// One page of a user's live sessions, without tokens, whose reply takes
    /// at most `max_reply_bytes` ([`Session::reply_bytes_bound`] of each):
    /// a page stops early, with a token for the rest, before the session that
    /// would pass the limit, so a page is never refused whole. Records are
    /// read a few at a time, so the memory a call holds follows the page it
    /// answers, not the page size asked for.
    pub async fn list_by_user(
        &self,
        user_id: &str,
        page_size: i32,
        page_token: &str,
        max_reply_bytes: usize,
    ) -> Result<SessionPage, SessionError> {
        self.check_user_id("user_id", user_id)
            .map_err(|found| SessionError::InvalidArgument(vec![found]))?;
        let page_size =
            crate::kv::limits::resolve_page_size(page_size, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
                .map_err(|description| invalid("page_size", description))?;
        // A page token is the last session id of the previous page: ids are
        // not secret, and a forged one only moves the start within this
        // user's own index.
        if !page_token.is_empty() && !token::is_session_id(page_token) {
            return Err(invalid(
                "page_token",
                "page_token is not one this service returned".into(),
            ));
        }
        let prefix = self.keys.user_prefix(user_id);
        let page = self
            .engine
            .scan(ScanRequest {
                start_after: (!page_token.is_empty()).then(|| format!("{prefix}{page_token}")),
                prefix: prefix.clone(),
                limit: page_size + 1,
                include_values: false,
                max_examined: MAX_LIST_EXAMINED.max(page_size + 1),
            })
            .await?;
        let more = page.entries.len() > page_size;
        let session_ids: Vec<String> = page
            .entries
            .into_iter()
            .take(page_size)
            .map(|(key, _)| key[prefix.len()..].to_string())
            .collect();
        // A scan stopped by its bound on examined records (a run of expired
        // entries not yet compacted away) resumes after the last one examined.
        let mut next_page_token = match (more, session_ids.last(), page.resume_after) {
            (true, Some(last), _) => last.clone(),
            (false, _, Some(resume_after)) => resume_after[prefix.len()..].to_string(),
            _ => String::new(),
        };
        let mut sessions: Vec<Session> = Vec::new();
        let mut reply_bytes = 0usize;
        'batches: for batch in session_ids.chunks(LIST_READ_BATCH) {
            let records = self
                .engine
                .get_many(batch.iter().map(|id| self.keys.record(id)).collect())
                .await?;
            for (session_id, record) in batch.iter().zip(records) {
                // Revoked between the scan and the read: not live any more.
                let Some(record) = record else { continue };
                let version = record.version;
                let stored = decode(&*self.codec, session_id, record)?;
                if stored.user_id != user_id {
                    continue;
                }
                let session = into_session(stored, session_id.clone(), version, None);
                let bytes = session.reply_bytes_bound();
                if reply_bytes + bytes > max_reply_bytes {
                    let Some(last) = sessions.last() else {
                        return Err(SessionError::ReplyTooLarge {
                            session_id: session_id.clone(),
                            bytes,
                            limit: max_reply_bytes,
                        });
                    };
                    next_page_token = last.session_id.clone();
                    break 'batches;
                }
                reply_bytes += bytes;
                sessions.push(session);
            }
        }
        Ok(SessionPage {
            sessions,
            next_page_token,
        })
    }

    /// Ends every live session of a user except `except_session_id`; returns
    /// how many were ended.
    pub async fn revoke_all_for_user(
        &self,
        user_id: &str,
        except_session_id: Option<&str>,
    ) -> Result<u64, SessionError> {
        let revoked = self.revoke_all(user_id, except_session_id).await;
        if let Ok(ended) = revoked {
            count(&self.counters.revoked, ended);
        }
        revoked
    }

    async fn revoke_all(
        &self,
        user_id: &str,
        except_session_id: Option<&str>,
    ) -> Result<u64, SessionError> {
        self.check_user_id("user_id", user_id)
            .map_err(|found| SessionError::InvalidArgument(vec![found]))?;
        if let Some(except) = except_session_id {
            if !token::is_session_id(except) {
                return Err(invalid(
                    "except_session_id",
                    format!(
                        "except_session_id must be {} URL-safe base64 characters; it is {} bytes",
                        token::SESSION_ID_LEN,
                        except.len()
                    ),
                ));
            }
        }
        let prefix = self.keys.user_prefix(user_id);
        let mut pages = PrefixPages::new(prefix.clone(), None, false, MAX_LIST_EXAMINED);
        let mut revoked = 0u64;
        while let Some(entries) = pages.next(&*self.engine, REVOKE_BATCH).await? {
            let mut ops = Vec::with_capacity(entries.len() * 2);
            for (index_key, _) in entries {
                let session_id = &index_key[prefix.len()..];
                if Some(session_id) == except_session_id {
                    continue;
                }
                // Unconditional: a concurrent touch or update, guarded by the
                // record's version, fails after this and finds nothing.
                ops.push(WriteOp::Delete(DeleteOp {
                    key: self.keys.record(session_id),
                    precondition: Precondition::None,
                }));
                ops.push(WriteOp::Delete(DeleteOp {
                    key: index_key,
                    precondition: Precondition::None,
                }));
            }
            if !ops.is_empty() {
                let outcomes = self.engine.write(ops).await?;
                revoked += outcomes
                    .iter()
                    .step_by(2)
                    .filter(|outcome| matches!(outcome, WriteOutcome::Delete { existed: true }))
                    .count() as u64;
            }
        }
        tracing::info!(revoked, "revoked every session of a user");
        Ok(revoked)
    }
}
