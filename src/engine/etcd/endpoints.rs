//! Keeping stopped members out of the client's balancer.
//!
//! The etcd client balances requests over every endpoint with
//! power-of-two-choices by load, and a stopped member refuses connections
//! at once, so it always looks the least loaded: left in, it would take
//! most requests (found by `tests/failures_etcd.rs`). This task checks every
//! member's port every [`CHECK_INTERVAL`] and takes a member that does not
//! accept connections out of the balancer, and back in once it does; the
//! last member is never taken out. A request that met a stopped member
//! before the check is sent again (it never reached etcd).

use std::collections::HashSet;
use std::time::Duration;

use tokio::net::TcpStream;

/// How often the members' ports are checked.
const CHECK_INTERVAL: Duration = Duration::from_millis(250);
/// How long a connection attempt may take before the member counts as down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// `host:port` of an endpoint URL (`http://host:port/...`).
fn authority(endpoint: &str) -> Option<String> {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let authority = rest.split('/').next()?;
    if authority.contains(':') {
        Some(authority.to_string())
    } else {
        let port = if endpoint.starts_with("https://") {
            443
        } else {
            80
        };
        Some(format!("{authority}:{port}"))
    }
}

async fn accepts(authority: &str) -> bool {
    matches!(
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(authority)).await,
        Ok(Ok(_))
    )
}

/// Runs until aborted (with the engine).
pub(super) async fn keep_balanced(client: etcd_client::Client, endpoints: Vec<String>) {
    if endpoints.len() < 2 {
        return;
    }
    let mut out: HashSet<String> = HashSet::new();
    let mut tick = tokio::time::interval(CHECK_INTERVAL);
    loop {
        tick.tick().await;
        for endpoint in &endpoints {
            let Some(authority) = authority(endpoint) else {
                continue;
            };
            let up = accepts(&authority).await;
            if !up && !out.contains(endpoint) && out.len() + 1 < endpoints.len() {
                if client.remove_endpoint(endpoint).await.is_ok() {
                    tracing::warn!(%endpoint, "an etcd member does not accept connections; requests avoid it until it does");
                    out.insert(endpoint.clone());
                }
            } else if up && out.contains(endpoint) && client.add_endpoint(endpoint).await.is_ok() {
                tracing::info!(%endpoint, "an etcd member accepts connections again");
                out.remove(endpoint);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Endpoints become host:port, with the scheme's port when none is given.
    #[test]
    fn authorities() {
        assert_eq!(
            authority("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(
            authority("https://etcd-0.etcd/").as_deref(),
            Some("etcd-0.etcd:443")
        );
        assert_eq!(authority("http://etcd").as_deref(), Some("etcd:80"));
    }
}
