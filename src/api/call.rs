//! What the server's tower layers learn about a call and hand to the
//! adapters, in the request's extensions. The layers live in
//! `crate::server`, above the adapters; the types they share live here, below
//! them, so the adapters read them without importing the server.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Principal;

/// Who a call is, as handlers see it (in the request's extensions).
#[derive(Debug, Clone)]
pub enum CallIdentity {
    /// Authentication is off: every call may do everything.
    Anyone,
    /// The call presented this token.
    Token(Arc<Principal>),
}

/// When the server's deadline layer (`crate::server::deadline`) will answer
/// DEADLINE_EXCEEDED for a request, in the request's extensions for handlers
/// that would rather answer something else in time (a fallback read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestDeadline(pub std::time::Instant);

impl RequestDeadline {
    /// The time left for work that must finish before the deadline, keeping
    /// back `reserve` for building and sending the answer; zero when there is
    /// none.
    pub fn time_left(&self, reserve: Duration) -> Duration {
        self.0
            .saturating_duration_since(std::time::Instant::now())
            .saturating_sub(reserve)
    }
}
