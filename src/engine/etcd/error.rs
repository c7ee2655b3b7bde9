//! Mapping etcd client failures to engine errors, and which requests may be
//! sent again.

use crate::engine::EngineError;

/// Maps an etcd client failure: what a retry can fix is unavailable; a
/// request etcd refuses for its size names the limit and the flag.
pub(crate) fn etcd_error(error: etcd_client::Error) -> EngineError {
    use etcd_client::Error as E;
    match error {
        E::GRpcStatus(status) => {
            let message = status.message().to_string();
            if message.contains("too many operations in txn request") {
                return EngineError::Limit(format!(
                    "the etcd cluster refused the transaction: {message}; raise etcd's --max-txn-ops (and [engine.etcd] max_txn_ops) or write fewer mutations per batch"
                ));
            }
            if message.contains("request is too large") {
                return EngineError::Limit(format!(
                    "the etcd cluster refused the request: {message}; raise etcd's --max-request-bytes (and [engine.etcd] max_request_bytes) or write smaller batches"
                ));
            }
            match etcd_error_kind(status.code() as i32) {
                Kind::Permanent => EngineError::Storage(format!("etcd: {message}")),
                Kind::Transient => EngineError::Unavailable(format!("etcd: {message}")),
            }
        }
        E::TransportError(error) => EngineError::Unavailable(format!("etcd unreachable: {error}")),
        E::IoError(error) => EngineError::Unavailable(format!("etcd unreachable: {error}")),
        other => EngineError::Storage(format!("etcd: {other}")),
    }
}

/// Tries after the first of a request that never reached etcd. The
/// client's balancer picks a stopped member about as often as any other
/// (its connection is refused at once, so a try costs little): with one
/// member of three stopped, 16 more tries all meeting it are a chance in
/// tens of millions.
const UNSENT_RETRIES: usize = 16;
/// Tries after the first of an idempotent request that failed in a way a
/// retry can fix (each may take up to the request timeout).
const TRANSIENT_RETRIES: usize = 3;

/// Whether a request that failed on try `attempt` (0 for the first) may be
/// sent again: it never reached etcd (the connection to the member was
/// refused or could not be made), or it is `idempotent` and failed in a way
/// a retry can fix.
pub(super) fn retry(error: &etcd_client::Error, idempotent: bool, attempt: usize) -> bool {
    let (unsent, transient) = match error {
        etcd_client::Error::TransportError(_) => (true, true),
        etcd_client::Error::GRpcStatus(status) => {
            const UNAVAILABLE: i32 = 14;
            let unsent = status.code() as i32 == UNAVAILABLE
                && (status.message().contains("connect error")
                    || status.message().contains("Connection refused"));
            let transient = matches!(etcd_error_kind(status.code() as i32), Kind::Transient);
            (unsent, transient)
        }
        _ => (false, false),
    };
    (unsent && attempt < UNSENT_RETRIES) || (idempotent && transient && attempt < TRANSIENT_RETRIES)
}

enum Kind {
    Transient,
    Permanent,
}

/// gRPC status codes etcd answers with (its API is gRPC): what no retry
/// fixes is permanent, the rest transient.
fn etcd_error_kind(code: i32) -> Kind {
    const INVALID_ARGUMENT: i32 = 3;
    const PERMISSION_DENIED: i32 = 7;
    const FAILED_PRECONDITION: i32 = 9;
    const OUT_OF_RANGE: i32 = 11;
    const UNIMPLEMENTED: i32 = 12;
    const UNAUTHENTICATED: i32 = 16;
    match code {
        INVALID_ARGUMENT | PERMISSION_DENIED | UNAUTHENTICATED | FAILED_PRECONDITION
        | OUT_OF_RANGE | UNIMPLEMENTED => Kind::Permanent,
        _ => Kind::Transient,
    }
}
