//! Per-call deadlines that end in `DEADLINE_EXCEEDED`, whoever notices first.
//!
//! A deadline travels to the server as `grpc-timeout`, and the server gives up
//! just before it with `DEADLINE_EXCEEDED`. But tonic's channel also times the
//! call on this side and reports its own expiry as `CANCELLED` ("Timeout
//! expired"), which tells the caller the wrong story (nobody cancelled); and a
//! server that never answers is not bound by the header at all. [`call`] sends
//! the header, bounds the whole call locally too, and maps both local endings
//! to `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::time::Duration;

use tonic::{Code, IntoRequest, Request, Status};

/// The message tonic's channel gives a call whose `grpc-timeout` it timed out
/// itself (`tonic::TimeoutExpired`), with code `CANCELLED`.
const LOCAL_EXPIRY: &str = "Timeout expired";

/// `message` as a request that carries `timeout` to the server
/// (`grpc-timeout`). For streaming calls, or to set metadata before calling;
/// [`call`] does this and more for unary calls.
pub fn request<T>(message: impl IntoRequest<T>, timeout: Duration) -> Request<T> {
    let mut request = message.into_request();
    request.set_timeout(timeout);
    request
}

/// Makes one call with a deadline `timeout` from now: `send` gets the request
/// (with its `grpc-timeout`) and makes the call, e.g.
/// `deadline::call(timeout, message, |request| kv.get(request))`. The result
/// is the call's, except that running out of time, on either side, is
/// `DEADLINE_EXCEEDED`.
pub async fn call<T, R, F, Fut>(
    timeout: Duration,
    message: impl IntoRequest<T>,
    send: F,
) -> Result<R, Status>
where
    F: FnOnce(Request<T>) -> Fut,
    Fut: Future<Output = Result<R, Status>>,
{
    match tokio::time::timeout(timeout, send(request(message, timeout))).await {
        Ok(Err(status)) if is_local_expiry(&status) => Err(exceeded(timeout)),
        Ok(result) => result,
        Err(_elapsed) => Err(exceeded(timeout)),
    }
}

/// Whether `status` is tonic's report of a deadline it timed out locally.
fn is_local_expiry(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message() == LOCAL_EXPIRY
}

fn exceeded(timeout: Duration) -> Status {
    Status::deadline_exceeded(format!(
        "no answer within the deadline of {timeout:?} (client side)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header carries the timeout; tonic's local expiry and a call that
    /// never ends are both DEADLINE_EXCEEDED, other statuses pass through.
    #[tokio::test]
    async fn expiry_is_deadline_exceeded() {
        let timeout = Duration::from_millis(20);
        let sent = request((), timeout);
        assert_eq!(
            sent.metadata().get("grpc-timeout").unwrap(),
            "20000000n",
            "tonic writes nanoseconds"
        );

        let local = call(timeout, (), |_| async {
            Err::<(), _>(Status::cancelled(LOCAL_EXPIRY))
        })
        .await;
        assert_eq!(local.unwrap_err().code(), Code::DeadlineExceeded);

        let hung = call(timeout, (), |_| {
            std::future::pending::<Result<(), Status>>()
        })
        .await;
        assert_eq!(hung.unwrap_err().code(), Code::DeadlineExceeded);

        let cancelled = call(timeout, (), |_| async {
            Err::<(), _>(Status::cancelled("the caller went away"))
        })
        .await;
        assert_eq!(cancelled.unwrap_err().code(), Code::Cancelled);
        assert_eq!(call(timeout, (), |_| async { Ok(7) }).await.unwrap(), 7);
    }
}
