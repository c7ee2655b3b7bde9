//! Authenticating every call (when `[auth]` configures tokens) before any
//! other work: a call without a valid `authorization: Bearer <token>` header
//! ends with UNAUTHENTICATED at once; a valid one carries its
//! [`CallIdentity`] to the handlers, which check each key against it.
//! Health checks and reflection stay open, for probes and tooling. The
//! tokens are read from the shared [`AuthState`] on every call, so a reload
//! (SIGHUP) takes effect on the next call of every connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use crate::api::call::CallIdentity;
use crate::auth::AuthState;

/// Authenticates calls with the tokens in force in an [`AuthState`] (or
/// marks them all [`CallIdentity::Anyone`] while there are none).
#[derive(Debug, Clone)]
pub struct AuthLayer {
    state: Arc<AuthState>,
}

impl AuthLayer {
    /// A layer checking tokens with those in force in `state`.
    pub fn new(state: Arc<AuthState>) -> Self {
        Self { state }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            state: Arc::clone(&self.state),
        }
    }
}

/// The service [`AuthLayer`] produces.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    state: Arc<AuthState>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The token of an `authorization: Bearer <token>` header.
fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticated<S>
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

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let identity = match &self.state.current() {
            None => CallIdentity::Anyone,
            Some(_) if super::probe_or_tooling(request.uri().path()) => CallIdentity::Anyone,
            Some(authenticator) => match bearer_token(request.headers()) {
                None => {
                    let status = Status::unauthenticated(
                        "this server requires a token: send the metadata `authorization: Bearer <token>`",
                    );
                    return Box::pin(async move { Ok(status.into_http()) });
                }
                Some(token) => match authenticator.authenticate(token) {
                    None => {
                        // Never log the token; the method is in the span.
                        tracing::debug!("call with an unknown token refused");
                        let status = Status::unauthenticated("the token is not valid");
                        return Box::pin(async move { Ok(status.into_http()) });
                    }
                    Some(principal) => CallIdentity::Token(principal),
                },
            },
        };
        // Nothing below needs the credential; keep it out of reach of any
        // handler or log that would print headers.
        request.headers_mut().remove(http::header::AUTHORIZATION);
        request.extensions_mut().insert(identity);
        Box::pin(self.inner.call(request))
    }
}
