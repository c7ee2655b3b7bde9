//! Request deadlines that end in `DEADLINE_EXCEEDED`.
//!
//! tonic enforces a client's `grpc-timeout` itself but reports expiry as
//! `CANCELLED`, which tells a client the wrong story (it did not cancel). This
//! layer sits inside tonic's and gives up a little earlier — [`MARGIN`] before
//! the client's deadline, or at the server's own request timeout, whichever
//! comes first — answering `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::Status;
use tower::{Layer, Service};

use super::load_shed::Accepted;
use crate::api::call::RequestDeadline;

/// How much earlier than the client's deadline the server gives up, so its
/// answer wins the race with tonic's own timer (which has millisecond ticks).
pub const MARGIN: Duration = Duration::from_millis(2);

/// Applies deadlines to every request.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer {
    server_timeout: Option<Duration>,
}

impl DeadlineLayer {
    /// A layer that also caps every request at `server_timeout`.
    pub fn new(server_timeout: Option<Duration>) -> Self {
        Self { server_timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Deadline {
            inner,
            server_timeout: self.server_timeout,
        }
    }
}

/// The service [`DeadlineLayer`] produces.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    server_timeout: Option<Duration>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Deadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let client_timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .map(|timeout| timeout.saturating_sub(MARGIN));
        let budget = match (client_timeout, self.server_timeout) {
            (Some(client), Some(server)) => Some(client.min(server)),
            (client, server) => client.or(server),
        };
        let Some(budget) = budget else {
            return Box::pin(self.inner.call(request));
        };
        // Counted from when the server read the call: time spent waiting for
        // its turn is part of the caller's budget.
        let deadline = Accepted::time_of(&request) + budget;
        if budget.is_zero() || deadline <= std::time::Instant::now() {
            // Already out of time: answer without starting any work.
            return Box::pin(async move { Ok(deadline_exceeded(budget)) });
        }
        let mut request = request;
        request.extensions_mut().insert(RequestDeadline(deadline));
        let response = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline.into(), response).await {
                Ok(result) => result,
                Err(_) => Ok(deadline_exceeded(budget)),
            }
        })
    }
}

fn deadline_exceeded<ResBody: Default>(budget: Duration) -> http::Response<ResBody> {
    tracing::debug!(
        budget_ms = budget.as_millis() as u64,
        "request deadline exceeded"
    );
    Status::deadline_exceeded(format!(
        "request did not finish within its deadline ({} ms)",
        budget.as_millis()
    ))
    .into_http()
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every unit of the gRPC wire format parses; junk does not.
    #[test]
    fn parses_grpc_timeouts() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("9n"), Some(Duration::from_nanos(9)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
    }
}
