//! Opening the configured store (`[engine] kind`) and following a remote
//! store's reachability in the health service.
//!
//! An etcd cluster that cannot be reached is a transient outage, never a
//! reason to exit: at start the server keeps trying (with back-off, logging
//! each failure) instead of crash-looping, and while serving, calls answer
//! UNAVAILABLE and health turns NOT_SERVING until a probe succeeds again.

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;

use super::metrics_http::Readiness;
use super::{open_engine, ServerError};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError, EngineKind};
use crate::engine::{Engine, EngineError, EtcdEngine, EtcdOptions, EtcdTls};

/// How often the store is probed while serving.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to open an unreachable etcd.
const MAX_OPEN_BACKOFF: Duration = Duration::from_secs(5);

/// The engine options `[engine.etcd]` and `[watch]` describe, with the TLS
/// files read.
pub fn etcd_options(config: &Config) -> Result<EtcdOptions, ConfigError> {
    let etcd = &config.engine.etcd;
    let read = |path: &std::path::PathBuf, what: &str| {
        std::fs::read(path).map_err(|error| {
            ConfigError::Invalid(format!(
                "engine.etcd.{what}: cannot read {}: {error}",
                path.display()
            ))
        })
    };
    let tls = if etcd.ca_file.is_some() || etcd.cert_file.is_some() {
        Some(EtcdTls {
            ca_pem: etcd
                .ca_file
                .as_ref()
                .map(|path| read(path, "ca_file"))
                .transpose()?,
            identity_pem: match (&etcd.cert_file, &etcd.key_file) {
                (Some(cert), Some(key)) => Some((read(cert, "cert_file")?, read(key, "key_file")?)),
                _ => None,
            },
        })
    } else {
        None
    };
    Ok(EtcdOptions {
        endpoints: etcd.endpoints.clone(),
        prefix: etcd.prefix.clone(),
        dial_timeout: Duration::from_millis(etcd.dial_timeout_ms),
        request_timeout: Duration::from_millis(etcd.request_timeout_ms),
        tls,
        user: etcd
            .user
            .clone()
            .map(|user| (user, etcd.password.clone().unwrap_or_default())),
        max_txn_ops: etcd.max_txn_ops,
        max_request_bytes: etcd.max_request_bytes,
        history_max_events: config.watch.history_events,
        history_max_age_millis: config.watch.history_age_secs.saturating_mul(1000),
        expiry_grace: Duration::from_secs(config.expiry_grace_secs),
        ..EtcdOptions::default()
    })
}

/// Opens the store `config` names: RocksDB in `data_dir`, or the etcd
/// cluster, waiting (with back-off) while etcd is unreachable.
pub async fn open_store(
    config: &Config,
    clock: SharedClock,
) -> Result<Arc<dyn Engine>, ServerError> {
    match config.engine.kind {
        EngineKind::Rocksdb => Ok(Arc::new(open_engine(config, clock).await?)),
        EngineKind::Etcd => {
            let options = etcd_options(config)?;
            let namespaces = config.namespaces().map_err(ConfigError::Invalid)?;
            let mut backoff = Duration::from_millis(200);
            loop {
                match EtcdEngine::open(options.clone(), namespaces.clone(), Arc::clone(&clock))
                    .await
                {
                    Ok(engine) => {
                        tracing::info!(
                            endpoints = ?options.endpoints,
                            prefix = %options.prefix,
                            "the store is the etcd cluster"
                        );
                        return Ok(Arc::new(engine));
                    }
                    Err(EngineError::Unavailable(reason)) => {
                        tracing::warn!(
                            endpoints = ?options.endpoints,
                            %reason,
                            retry_in_ms = backoff.as_millis() as u64,
                            "etcd is unreachable; retrying"
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(MAX_OPEN_BACKOFF);
                    }
                    Err(other) => return Err(other.into()),
                }
            }
        }
    }
}

/// Probes the store every [`PROBE_INTERVAL`] and sets every service's health
/// (and `/readyz`) to follow it, until aborted (the server aborts it before
/// its shutdown turns health NOT_SERVING for good).
pub(super) async fn follow_store(
    engine: Arc<dyn Engine>,
    reporter: tonic_health::server::HealthReporter,
    service_names: Vec<&'static str>,
    readiness: Arc<Readiness>,
    timeout: Duration,
) {
    let mut serving = true;
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    loop {
        tick.tick().await;
        let reachable = match tokio::time::timeout(timeout, engine.probe()).await {
            Ok(Ok(())) => true,
            Ok(Err(error)) => {
                if serving {
                    tracing::warn!(error = %error.log_summary(), "the store is unreachable: health is NOT_SERVING until it answers");
                }
                false
            }
            Err(_) => {
                if serving {
                    tracing::warn!("the store did not answer its probe: health is NOT_SERVING until it answers");
                }
                false
            }
        };
        if reachable != serving {
            serving = reachable;
            if serving {
                tracing::info!("the store answers again: health is SERVING");
            }
            let status = if serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            for name in &service_names {
                reporter.set_service_status(*name, status).await;
            }
            reporter.set_service_status("", status).await;
            readiness.set(serving);
        }
    }
}
