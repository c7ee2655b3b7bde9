//! Wiring: opens the engine, builds the services, serves gRPC with health and
//! reflection within the configured bounds, and shuts down gracefully.

pub mod auth_layer;
pub mod connections;
pub mod deadline;
pub mod http2;
pub mod in_flight;
pub mod load_shed;
pub mod metrics_http;
pub mod reload;
pub mod request_limits;
pub mod response_budget;
pub mod rpc_metrics;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic_health::ServingStatus;

use std::convert::Infallible;

use tonic::server::NamedService;
use tonic::service::RoutesBuilder;

use crate::admin::backup::Backups;
use crate::admin::NamespaceAdmin;
use crate::api::admin::AdminApi;
use crate::api::cache::CacheApi;
use deadline::DeadlineLayer;
use crate::api::kv::KvApi;
use request_limits::{BudgetCounts, RequestBudget, RequestLimitLayer};
use crate::api::session::SessionApi;
use crate::cache::{CacheCounts, CacheService, CacheStats};
use crate::clock::SharedClock;
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, EngineError, Namespaces, RocksEngine, RocksOptions};
use crate::kv::KvService;
use crate::migrate::{LazyMigrator, Migrator};
use crate::session::SessionService;
use auth_layer::AuthLayer;
use connections::{ConnectionCounts, ConnectionLimits, Connections};
use in_flight::{InFlight, InFlightLayer};
use load_shed::{CallLimit, LoadShedLayer};
use metrics_http::Readiness;
use response_budget::{ResponseBudget, ResponseBudgetCounts, ResponseBudgetLayer};
use rpc_metrics::RpcMetricsLayer;

use crate::metrics::{EngineFigures, FigureWriter, MetricsBuilder};

/// Whether a call path is a health check or reflection: probes and tooling,
/// which authentication never refuses (load shedding counts all but
/// `Health/Check`; see `load_shed`).
fn probe_or_tooling(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

/// The services this server exposes (each also has a health status).
pub const SERVICE_NAMES: &[&str] = &[
    "tierkv.v1.KvService",
    "tierkv.v1.SessionService",
    "tierkv.v1.AdminService",
    "tierkv.v1.CacheService",
];

/// The gRPC services of a server, collected with their names so that
/// registering a service is one line and health reporting follows it.
#[derive(Default)]
pub struct ServiceSet {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
}

impl ServiceSet {
    /// Mounts a generated tonic server and reports its health by name.
    pub fn add<S>(&mut self, service: S) -> &mut Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// The names of the services added so far.
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }
}

/// Idle time before TCP keepalive probes find dead peers.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Streams a client may have reset before we accepted them, before GOAWAY
/// (h2's default, stated so it cannot silently change).
const MAX_PENDING_RESET_STREAMS: usize = 20;
/// Streams we may reset because of the client's errors, before GOAWAY
/// (hyper's default, stated likewise).
const MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;
/// Largest block of request headers (gRPC metadata), in bytes; hyper's
/// default is 16 MiB per stream.
const MAX_HEADER_LIST_BYTES: u32 = 64 * 1024;
/// After the grace period, how long closed connections get to drop their calls.
const FORCED_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// A failure to start or run the server.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened or flushed.
    #[error("storage: {0}")]
    Engine(#[from] EngineError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The cache's origins could not be set up.
    #[error("cache: {0}")]
    Cache(String),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("{0}")]
    Tls(String),
    /// The configuration reload (SIGHUP) could not be set up.
    #[error("{0}")]
    Reload(String),
    /// The metrics listen address could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The engine can no longer write (its writer died or storage failed);
    /// the process should exit so an orchestrator restarts it.
    #[error("the storage engine failed: {0}")]
    EngineFailed(String),
}

/// Opens the RocksDB engine described by `config`.
pub async fn open_engine(config: &Config, clock: SharedClock) -> Result<RocksEngine, ServerError> {
    let path = config.data_dir.clone();
    let namespaces: Namespaces = config.namespaces().map_err(ConfigError::Invalid)?;
    let options = RocksOptions {
        sync_writes: config.sync_writes,
        block_cache_bytes: config.block_cache_mb * 1024 * 1024,
        expiry_grace: Duration::from_secs(config.expiry_grace_secs),
        write_queue_bytes: config.write_queue_mb * 1024 * 1024,
        ..RocksOptions::default()
    };
    let engine =
        tokio::task::spawn_blocking(move || RocksEngine::open(path, namespaces, options, clock))
            .await
            .map_err(|error| EngineError::Storage(format!("open task failed: {error}")))??;
    Ok(engine)
}

/// The sockets a server listens on.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port.
    pub grpc: TcpListener,
    /// The metrics and probes port, unless `metrics_listen` is off.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of a validated `config`.
    pub async fn bind(config: &Config) -> Result<Self, ServerError> {
        let grpc = TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let metrics = match config.metrics_addr()? {
            None => None,
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::MetricsBind { addr, source })?,
            ),
        };
        Ok(Self { grpc, metrics })
    }
}

/// Binds the listen addresses of a validated `config`, then opens the store.
/// Binding first fails fast on a taken port, before a long open.
pub async fn open_and_bind(
    config: &Config,
    clock: SharedClock,
) -> Result<(RocksEngine, Listeners), ServerError> {
    let listeners = Listeners::bind(config).await?;
    let engine = open_engine(config, clock).await?;
    Ok((engine, listeners))
}

/// Live counters of a running server: connections, request memory, calls.
#[derive(Debug, Clone)]
pub struct ServerStats {
    connections: Arc<Connections>,
    budget: Arc<RequestBudget>,
    response_budget: Arc<ResponseBudget>,
    in_flight: Arc<InFlight>,
    readiness: Arc<Readiness>,
    call_limit: Arc<CallLimit>,
    cache: Arc<CacheStats>,
    fallbacks: Arc<crate::kv::fallback::FallbackCounters>,
}

impl ServerStats {
    /// Counters for a server configured by `config`.
    pub fn new(config: &Config) -> Self {
        Self {
            connections: Connections::new(ConnectionLimits {
                max_connections: config.max_connections,
                handshake_timeout: config.handshake_timeout(),
                tcp_keepalive: Some(TCP_KEEPALIVE),
            }),
            budget: RequestBudget::new(config.request_memory_bytes(), config.request_memory_wait()),
            response_budget: ResponseBudget::new(
                config.response_memory_bytes(),
                config.response_send_timeout(),
            ),
            in_flight: Arc::default(),
            readiness: Arc::default(),
            call_limit: CallLimit::new(
                config.max_calls_in_flight,
                config.max_watch_streams_per_connection,
            ),
            cache: CacheStats::new(),
            fallbacks: Arc::default(),
        }
    }

    /// Keys that `Get`/`BatchGet` answered with the caller's fallback, by reason.
    pub fn fallbacks(&self) -> crate::kv::FallbackCounts {
        self.fallbacks.snapshot()
    }

    /// Connections open, refused, timed out...
    pub fn connections(&self) -> ConnectionCounts {
        self.connections.counts()
    }

    /// Request memory reserved now and at peak, and requests refused.
    pub fn request_memory(&self) -> BudgetCounts {
        self.budget.counts()
    }

    /// Reply bytes produced and not yet written now and at peak, calls
    /// refused for lack of room, and replies dropped for the send timeout.
    pub fn response_memory(&self) -> ResponseBudgetCounts {
        self.response_budget.counts()
    }

    /// Calls being handled now.
    pub fn calls_in_flight(&self) -> usize {
        self.in_flight.count()
    }

    /// Calls refused since start because `max_calls_in_flight` were in flight.
    pub fn calls_shed(&self) -> u64 {
        self.call_limit.shed()
    }

    /// Health Watch and reflection streams open now.
    pub fn watch_streams_open(&self) -> usize {
        self.call_limit.watch_streams_open()
    }

    /// Health Watch and reflection streams refused since start because their
    /// connection had `max_watch_streams_per_connection` open.
    pub fn watch_streams_refused(&self) -> u64 {
        self.call_limit.watch_streams_refused()
    }

    /// The cache's counters: hits per tier, origin requests, coalesced
    /// waiters, stale serves, origin errors, memory size.
    pub fn cache(&self) -> CacheCounts {
        self.cache.snapshot()
    }
}

/// Session counts and the progress of running batch migrations, read at every scrape.
struct ServiceFigures {
    sessions: SessionService,
    migrator: Arc<Migrator>,
}

impl std::fmt::Debug for ServiceFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceFigures").finish_non_exhaustive()
    }
}

/// Labels of one running migration.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct MigrationLabels {
    prefix: String,
}

impl prometheus_client::collector::Collector for ServiceFigures {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let sessions = self.sessions.counts();
        let mut out = FigureWriter::new(&mut encoder);
        out.counter("sessions_created", "Sessions created", sessions.created)?;
        out.counter(
            "sessions_rotated",
            "Session tokens rotated",
            sessions.rotated,
        )?;
        out.counter(
            "sessions_revoked",
            "Sessions revoked, one by one or all of a user's at once",
            sessions.revoked,
        )?;
        let running = self.migrator.running_states();
        let per_run = |pick: fn(&crate::migrate::MigrationState) -> u64| {
            running
                .iter()
                .map(|state| {
                    (
                        MigrationLabels {
                            prefix: state.prefix.clone(),
                        },
                        pick(state) as i64,
                    )
                })
                .collect::<Vec<_>>()
        };
        out.gauge_family(
            "migration_running_scanned_records",
            "Records examined so far by each running batch migration",
            &per_run(|state| state.scanned),
        )?;
        out.gauge_family(
            "migration_running_migrated_records",
            "Records migrated so far by each running batch migration",
            &per_run(|state| state.migrated),
        )?;
        out.gauge_family(
            "migration_running_failed_records",
            "Records no patch applied to, so far, in each running batch migration",
            &per_run(|state| state.failed),
        )?;
        Ok(())
    }
}

/// The lazy migrator's counts, read at every scrape.
#[derive(Debug)]
struct LazyMigrationFigures(Arc<LazyMigrator>);

impl prometheus_client::collector::Collector for LazyMigrationFigures {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let counts = self.0.counts();
        let mut out = FigureWriter::new(&mut encoder);
        out.counter(
            "lazy_migration_reads",
            "Reads answered with a record migrated on the fly",
            counts.migrated_reads,
        )?;
        out.counter(
            "lazy_migration_written_back",
            "Migrated records written back by a compare-and-set",
            counts.written_back,
        )?;
        out.counter(
            "lazy_migration_lost_to_writers",
            "Write-backs dropped because a writer changed the record first",
            counts.lost_to_writers,
        )?;
        out.counter(
            "lazy_migration_skipped",
            "Write-backs not attempted: one for the key was in flight, or too many were",
            counts.skipped,
        )?;
        out.counter(
            "lazy_migration_write_errors",
            "Write-backs the engine failed",
            counts.write_errors,
        )?;
        out.counter(
            "lazy_migration_failed",
            "Reads of records no configured patch applies to, returned as stored",
            counts.failed,
        )?;
        out.counter(
            "lazy_migration_newer_than_known",
            "Reads of records with a schema version above this server's target, returned as stored",
            counts.newer_than_known,
        )
    }
}

impl prometheus_client::collector::Collector for ServerStats {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let connections = self.connections();
        let memory = self.request_memory();
        let mut out = FigureWriter::new(&mut encoder);
        out.gauge(
            "connections_open",
            "Client connections open now",
            connections.open as i64,
        )?;
        out.counter(
            "connections_accepted",
            "Client connections accepted",
            connections.accepted,
        )?;
        out.counter(
            "connections_refused",
            "Connections closed at once because max_connections was reached",
            connections.refused,
        )?;
        out.counter(
            "connections_handshake_timeouts",
            "Connections closed for not finishing the TLS handshake or HTTP/2 preface in time",
            connections.handshake_timeouts,
        )?;
        out.counter(
            "connections_tls_failures",
            "TLS handshakes that failed",
            connections.tls_failures,
        )?;
        out.counter(
            "accept_errors",
            "Failed accept calls (descriptor limit, memory)",
            connections.accept_errors,
        )?;
        out.gauge(
            "calls_in_flight",
            "gRPC calls being handled now",
            self.calls_in_flight() as i64,
        )?;
        out.gauge(
            "calls_in_flight_limit",
            "max_calls_in_flight (0: no limit)",
            self.call_limit.limit() as i64,
        )?;
        out.counter(
            "calls_shed",
            "Calls refused with RESOURCE_EXHAUSTED because max_calls_in_flight were in flight",
            self.calls_shed(),
        )?;
        out.gauge(
            "watch_streams_open",
            "Health Watch and reflection streams open now",
            self.watch_streams_open() as i64,
        )?;
        out.counter(
            "watch_streams_refused",
            "Health Watch and reflection streams refused because their connection had max_watch_streams_per_connection open",
            self.watch_streams_refused(),
        )?;
        out.gauge(
            "request_memory_in_flight_bytes",
            "Bytes of request messages held now (request_memory_mb budget)",
            memory.in_flight as i64,
        )?;
        out.gauge(
            "request_memory_capacity_bytes",
            "The request memory budget",
            memory.capacity as i64,
        )?;
        out.counter(
            "requests_refused_too_large",
            "Requests refused for exceeding their method's size limit",
            memory.refused_too_large,
        )?;
        out.counter(
            "requests_refused_busy",
            "Requests refused because the request memory budget stayed spent",
            memory.refused_busy,
        )?;
        let replies = self.response_memory();
        out.gauge(
            "response_memory_unsent_bytes",
            "Bytes of replies produced and not yet written to their clients (response_memory_mb budget)",
            replies.unsent as i64,
        )?;
        out.gauge(
            "response_memory_capacity_bytes",
            "The response memory budget",
            replies.capacity as i64,
        )?;
        out.counter(
            "responses_refused_memory",
            "Calls answered RESOURCE_EXHAUSTED because the response memory budget was spent",
            replies.refused,
        )?;
        out.counter(
            "responses_send_timeouts",
            "Replies dropped, their streams reset, for not being written within response_send_timeout_ms",
            replies.send_timeouts,
        )?;
        let cache = self.cache();
        out.counter_family(
            "cache_hits",
            "CacheService gets answered, by the tier that answered (stale: a stale copy)",
            &[
                (vec![("tier", "memory")], cache.memory_hits),
                (vec![("tier", "store")], cache.store_hits),
                (vec![("tier", "origin")], cache.origin_hits),
                (vec![("tier", "stale")], cache.stale_serves),
            ],
        )?;
        for (name, help, value) in [
            (
                "cache_misses",
                "CacheService gets of keys without an origin that found nothing",
                cache.misses,
            ),
            (
                "cache_origin_requests",
                "Requests sent to cache origins",
                cache.origin_requests,
            ),
            (
                "cache_coalesced_waiters",
                "CacheService gets that waited for a fetch already in flight",
                cache.coalesced_waiters,
            ),
            (
                "cache_origin_errors",
                "Origin requests that failed (connection, timeout, 5xx, body too large)",
                cache.origin_errors,
            ),
            (
                "cache_negative_hits",
                "CacheService gets answered NOT_FOUND from a remembered 404/410",
                cache.negative_hits,
            ),
            (
                "cache_background_refreshes",
                "Stale-while-revalidate refreshes started",
                cache.background_refreshes,
            ),
            (
                "cache_memory_clears",
                "Times the cache's memory tier was cleared because the change feed lagged",
                cache.memory_clears,
            ),
            (
                "cache_discarded_fills",
                "Origin answers not stored because a newer write, or an Invalidate or Purge of \
                 the key, came first",
                cache.discarded_fills,
            ),
            (
                "cache_fetches_refused",
                "Origin requests not started because a max_concurrent_fetches limit was reached",
                cache.fetches_refused,
            ),
            (
                "cache_stores_refused",
                "Origin answers served but not stored because the origin's store caps were reached",
                cache.stores_refused,
            ),
        ] {
            out.counter(name, help, value)?;
        }
        out.gauge(
            "cache_memory_bytes",
            "Bytes the cache's memory tier holds, as its weigher counts them (bounded by cache.memory_mb)",
            cache.memory_bytes as i64,
        )?;
        out.gauge(
            "cache_memory_entries",
            "Entries the cache's memory tier holds",
            cache.memory_entries as i64,
        )?;
        let fallbacks = self.fallbacks();
        out.counter_family(
            "kv_fallbacks",
            "Keys Get/BatchGet answered with the caller's fallback: missing or expired (absent), \
             read failed (failed), read out of time (timed_out)",
            &[
                ([("reason", "absent")], fallbacks.absent),
                ([("reason", "failed")], fallbacks.failed),
                ([("reason", "timed_out")], fallbacks.timed_out),
            ],
        )?;
        Ok(())
    }
}

/// Every gRPC method path this server serves (`/package.Service/Method`), for
/// the RPC metrics' label set.
fn known_method_paths() -> Vec<String> {
    use prost::Message;
    let mut paths = vec![
        "/grpc.health.v1.Health/Check".to_string(),
        "/grpc.health.v1.Health/Watch".to_string(),
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo".to_string(),
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo".to_string(),
    ];
    if let Ok(set) = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET) {
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                for method in service.method {
                    paths.push(format!(
                        "/{package}.{service_name}/{}",
                        method.name.unwrap_or_default()
                    ));
                }
            }
        }
    }
    paths
}

/// The span of one call: every log line the call causes carries its method
/// and, when the caller sent a W3C `traceparent`, its trace and parent span
/// ids; the RPC metrics layer records the status code and latency into it.
fn rpc_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "rpc",
        method = %request.uri().path(),
        trace_id = tracing::field::Empty,
        parent_span_id = tracing::field::Empty,
        code = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    if let Some(context) = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(crate::telemetry::parse_traceparent)
    {
        span.record("trace_id", context.trace_id.as_str());
        span.record("parent_span_id", context.parent_span_id.as_str());
    }
    span
}

/// Aborts a background task when dropped, so every way out of the server stops it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves on `listener` until `shutdown` resolves, then drains (see
/// [`serve_with_stats`]).
pub async fn serve(
    config: Config,
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let stats = ServerStats::new(&config);
    serve_with_stats(config, engine, clock, listeners, shutdown, stats).await
}

/// Serves on `listener` until `shutdown` resolves, counting into `stats`.
///
/// Shutdown runs in this order: health turns NOT_SERVING; calls are still
/// served for `shutdown_delay_ms` so load balancers notice; then new
/// connections and calls are refused (the listener closes, connections get
/// GOAWAY) and in-flight calls get `shutdown_grace_ms` to finish; connections
/// still open after that are closed, which drops their calls; once no handler
/// runs any more, the store is flushed. The store is flushed on every way
/// out, errors included.
pub async fn serve_with_stats(
    config: Config,
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    stats: ServerStats,
) -> Result<(), ServerError> {
    serve_until_flushed(config, engine, clock, listeners, shutdown, stats, None).await
}

/// Like [`serve`], re-reading `[auth]` and `[tls]` on SIGHUP (see
/// [`reload`]).
pub async fn serve_reloading(
    config: Config,
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    reload: reload::Reload,
) -> Result<(), ServerError> {
    let stats = ServerStats::new(&config);
    serve_until_flushed(
        config,
        engine,
        clock,
        listeners,
        shutdown,
        stats,
        Some(reload),
    )
    .await
}

async fn serve_until_flushed(
    config: Config,
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    stats: ServerStats,
    reload: Option<reload::Reload>,
) -> Result<(), ServerError> {
    let served = serve_until_stopped(
        &config,
        Arc::clone(&engine),
        clock,
        listeners,
        shutdown,
        &stats,
        reload,
    )
    .await;
    let flushed = engine.flush().await;
    match (served, flushed) {
        (Ok(()), Ok(())) => {
            tracing::info!("stopped");
            Ok(())
        }
        (Ok(()), Err(error)) => Err(error.into()),
        (Err(error), flushed) => {
            if let Err(flush_error) = flushed {
                tracing::error!(error = %flush_error, "flushing the store after a failure failed too");
            }
            Err(error)
        }
    }
}

/// Why the server stops serving.
#[derive(Debug)]
enum StopReason {
    /// The shutdown future resolved (SIGTERM, Ctrl-C, `RunningServer::stop`).
    Requested,
    /// The storage engine failed for good (see [`Engine::failed`]); the
    /// server drains like any other stop, then reports the failure so the
    /// process exits non-zero instead of answering UNAVAILABLE while SERVING.
    EngineFailed(String),
}

async fn serve_until_stopped(
    config: &Config,
    engine: Arc<dyn Engine>,
    clock: SharedClock,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
    stats: &ServerStats,
    reload: Option<reload::Reload>,
) -> Result<(), ServerError> {
    let listener = listeners.grpc;
    let mut metrics = MetricsBuilder::new();
    let rpc_metrics = metrics.rpc(known_method_paths());
    metrics.collector(stats.clone());
    metrics.refreshed_collector(EngineFigures::new(Arc::clone(&engine)));
    // AdminService.Stats serves the same figures; they exist once every
    // component has registered, after the services are built.
    let frozen_metrics = Arc::new(std::sync::OnceLock::new());
    let migrations = Arc::new(config.migrations()?);
    let lazy_migration = Arc::new(LazyMigrator::new(
        Arc::clone(&migrations),
        Arc::clone(&engine),
        Arc::clone(&clock),
    ));
    metrics.collector(LazyMigrationFigures(Arc::clone(&lazy_migration)));
    let migrator = Arc::new(Migrator::new(
        migrations,
        Arc::clone(&engine),
        Arc::clone(&clock),
    ));
    let mut services = ServiceSet::default();
    services.add(
        KvApi::new(
            KvService::new(Arc::clone(&engine), Arc::clone(&clock))
                .with_lazy_migration(Arc::clone(&lazy_migration))
                .with_fallback_counters(Arc::clone(&stats.fallbacks)),
        )
        .into_server(),
    );
    services.add(
        AdminApi::new(
            Arc::clone(&migrator),
            NamespaceAdmin::new(Arc::clone(&engine)).with_cache_origins(
                config
                    .cache
                    .origins
                    .iter()
                    .map(|origin| origin.prefix.clone()),
            ),
            Backups::new(Arc::clone(&engine), config.backup_dir.clone()),
            Arc::clone(&frozen_metrics),
        )
        .into_server(),
    );
    let sessions = SessionService::new(
        Arc::clone(&engine),
        Arc::clone(&clock),
        config.session.clone(),
        Arc::new(crate::api::session::StructCodec),
    );
    metrics.collector(ServiceFigures {
        sessions: sessions.clone(),
        migrator: Arc::clone(&migrator),
    });
    services.add(SessionApi::new(sessions).into_server());
    let cache = CacheService::new(
        Arc::clone(&engine),
        clock,
        config.cache.clone(),
        Arc::clone(&stats.cache),
    )
    .map_err(|error| ServerError::Cache(error.to_string()))?;
    services.add(CacheApi::new(cache).into_server());
    let service_names = services.names().to_vec();

    let metrics = metrics.build();
    let _ = frozen_metrics.set(metrics.clone());
    let metrics_addr = listeners
        .metrics
        .as_ref()
        .and_then(|listener| listener.local_addr().ok())
        .map(|addr| addr.to_string())
        .unwrap_or_else(|| "off".to_string());
    let _metrics_listener = listeners.metrics.map(|listener| {
        AbortOnDrop(metrics_http::spawn(
            listener,
            metrics,
            Arc::clone(&stats.readiness),
        ))
    });

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, &service_names, ServingStatus::Serving).await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|error| ServerError::Reflection(error.to_string()))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|error| ServerError::Reflection(error.to_string()))?;

    let local_addr = listener
        .local_addr()
        .map(|addr| addr.to_string())
        .unwrap_or_default();
    let (drain_tx, drain_rx) = oneshot::channel::<()>();
    let mut routes = services.routes;
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let auth = Arc::new(crate::auth::AuthState::new(&config.auth).map_err(ConfigError::Invalid)?);
    for name in config.auth.deprecated_admin_tokens() {
        tracing::warn!(
            token = name,
            "permission `admin` is deprecated: grant stats, migrate, backup and/or drop instead"
        );
    }
    let stack = tower::ServiceBuilder::new()
        // Outermost, so shutdown can wait for every call, whatever answered it.
        .layer(InFlightLayer::new(Arc::clone(&stats.in_flight)))
        // Outside the deadline and request limits, so calls they answer are counted.
        .layer(RpcMetricsLayer::new(rpc_metrics))
        // Before any waiting: a call without a valid token costs nothing.
        .layer(AuthLayer::new(Arc::clone(&auth)))
        // Answers what admission decided when the stream was accepted
        // (http2::serve), before any waiting (deadline, request memory).
        .layer(LoadShedLayer::new(Arc::clone(&stats.call_limit)))
        // Inside shedding (a shed call builds no reply); counts each reply
        // from when it is encoded until it is written, and refuses calls
        // while replies waiting for slow clients fill the budget.
        .layer(ResponseBudgetLayer::new(Arc::clone(&stats.response_budget)))
        .layer(DeadlineLayer::new(config.request_timeout()))
        // Inside the deadline, so waiting for request memory counts against it.
        .layer(RequestLimitLayer::new(Arc::clone(&stats.budget)))
        .service(routes.routes().prepare());
    let settings = http2::Http2Settings {
        // A ping every 30 s finds dead peers (and keeps NAT and proxy state
        // alive); no answer in 20 s closes the connection.
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_timeout: Duration::from_secs(20),
        // Advertised in SETTINGS_MAX_CONCURRENT_STREAMS.
        max_concurrent_streams: config.max_concurrent_streams,
        // Rapid-reset protection: a client that resets (or makes us reset)
        // more streams than this before we accept them gets GOAWAY.
        max_pending_accept_reset_streams: MAX_PENDING_RESET_STREAMS,
        max_local_error_reset_streams: MAX_LOCAL_ERROR_RESET_STREAMS,
        max_header_list_size: MAX_HEADER_LIST_BYTES,
        // GOAWAY after this long, so long-lived clients reconnect and spread
        // over new pods behind a Kubernetes Service; calls in flight finish
        // within the grace period.
        max_connection_age: config.max_connection_age(),
        max_connection_age_grace: config.max_connection_age_grace(),
    };
    let tls = tls::acceptor(&config.tls)
        .map_err(ServerError::Tls)?
        .map(tls::SharedAcceptor::new);
    let _reloading = reload.map(|reload| {
        AbortOnDrop(tokio::spawn(reload.run(reload::Targets {
            auth: Arc::clone(&auth),
            tls: tls.clone(),
        })))
    });
    let incoming = connections::incoming(listener, Arc::clone(&stats.connections), tls);
    let serving = http2::serve(
        incoming,
        stack,
        Arc::clone(&stats.call_limit),
        rpc_span,
        settings,
        async {
            let _ = drain_rx.await;
        },
    );
    tokio::pin!(serving);
    if !config.listens_on_loopback_only() && !config.authenticates_clients() {
        // Only with allow_unauthenticated = true: validation refuses it otherwise.
        tracing::warn!(
            addr = %local_addr,
            "serving without authentication on an address other hosts can reach \
             (allow_unauthenticated = true): whatever reaches the port may read, write and drop every key"
        );
    }
    tracing::info!(
        addr = %local_addr,
        metrics_addr = %metrics_addr,
        data_dir = %config.data_dir.display(),
        max_connections = config.max_connections,
        max_concurrent_streams = config.max_concurrent_streams,
        request_memory_mb = config.request_memory_mb,
        response_memory_mb = config.response_memory_mb,
        tls = config.tls.enabled(),
        auth_tokens = config.auth.tokens.len(),
        mutual_tls = config.tls.client_ca_file.is_some(),
        "serving"
    );
    stats.readiness.set(true);

    // Every reason to stop is one arm here; the drain below is the same for all.
    let reason = tokio::select! {
        () = &mut serving => {
            set_health(&health_reporter, &service_names, ServingStatus::NotServing).await;
            return Ok(());
        }
        () = shutdown => StopReason::Requested,
        reason = engine.failed() => {
            tracing::error!(%reason, "the storage engine failed; stopping");
            StopReason::EngineFailed(reason)
        }
    };

    set_health(&health_reporter, &service_names, ServingStatus::NotServing).await;
    stats.readiness.set(false);
    // Batch migrations stop at their next batch, so they do not hold the drain.
    migrator.shut_down();
    tracing::info!(
        ?reason,
        delay_ms = config.shutdown_delay_ms,
        grace_ms = config.shutdown_grace_ms,
        "shutting down: health is NOT_SERVING; still serving during the delay"
    );
    tokio::select! {
        () = &mut serving => return Ok(()),
        () = tokio::time::sleep(config.shutdown_delay()) => {}
    }

    tracing::info!(
        calls_in_flight = stats.in_flight.count(),
        open_connections = stats.connections.counts().open,
        "refusing new calls; draining in-flight calls"
    );
    let _ = drain_tx.send(());
    match tokio::time::timeout(config.shutdown_grace(), &mut serving).await {
        Ok(()) => {}
        Err(_) => {
            let closed = stats.connections.close_all();
            tracing::warn!(
                grace_ms = config.shutdown_grace_ms,
                closed_connections = closed,
                calls_in_flight = stats.in_flight.count(),
                "grace period over; closed the remaining connections"
            );
            // Closed sockets end their connections' tasks, which drops their
            // calls; wait (briefly, in case a handler is stuck) for that.
            let settled = async {
                let _ = (&mut serving).await;
                stats.in_flight.idle().await;
            };
            if tokio::time::timeout(FORCED_CLOSE_WAIT, settled)
                .await
                .is_err()
            {
                tracing::error!(
                    calls_in_flight = stats.in_flight.count(),
                    "calls still running after their connections were closed"
                );
            }
        }
    }
    if let StopReason::EngineFailed(reason) = reason {
        return Err(ServerError::EngineFailed(reason));
    }
    Ok(())
}

async fn set_health(
    reporter: &tonic_health::server::HealthReporter,
    service_names: &[&'static str],
    status: ServingStatus,
) {
    for name in service_names {
        reporter.set_service_status(*name, status).await;
    }
    reporter.set_service_status("", status).await;
}

/// Checks `config` as the server will use it: everything
/// [`Config::validate`] checks, and that the TLS files load (which takes the
/// server's rustls code, so the configuration module cannot check it).
pub fn validate(config: &Config) -> Result<(), ConfigError> {
    config.validate()?;
    tls::validate(&config.tls).map_err(ConfigError::Invalid)
}

/// A server running in the background, for tests and embedding.
pub struct RunningServer {
    /// The address it listens on.
    pub addr: SocketAddr,
    /// Where its metrics and probes are served, unless `metrics_listen` is off.
    pub metrics_addr: Option<SocketAddr>,
    /// The engine it serves.
    pub engine: RocksEngine,
    /// Its live counters.
    pub stats: ServerStats,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// Starts a server for `config` (its `listen` may use port 0).
    pub async fn start(config: Config, clock: SharedClock) -> Result<Self, ServerError> {
        validate(&config)?;
        let (engine, listeners) = open_and_bind(&config, Arc::clone(&clock)).await?;
        let addr = listeners
            .grpc
            .local_addr()
            .map_err(|source| ServerError::Bind {
                addr: config.listen,
                source,
            })?;
        let metrics_addr = listeners
            .metrics
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());
        let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
        let served: Arc<dyn Engine> = Arc::new(engine.clone());
        let stats = ServerStats::new(&config);
        let task = tokio::spawn(serve_with_stats(
            config,
            served,
            clock,
            listeners,
            async {
                let _ = shutdown_rx.await;
            },
            stats.clone(),
        ));
        Ok(Self {
            addr,
            metrics_addr,
            engine,
            stats,
            shutdown: Some(shutdown_tx),
            task,
        })
    }

    /// The `http://` endpoint clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Shuts down gracefully and waits until the store is flushed.
    pub async fn stop(mut self) -> Result<(), ServerError> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.task)
            .await
            .map_err(|error| EngineError::Storage(format!("server task failed: {error}")))?
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
///
/// The handlers are registered when this is called, not when the future is
/// first polled: the server is polled only once it serves, and a SIGTERM
/// arriving in between would otherwise kill the process without a drain.
/// Must be called inside a tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = signal(SignalKind::terminate())
            .and_then(|terminate| Ok((terminate, signal(SignalKind::interrupt())?)));
        async move {
            match handlers {
                Ok((mut terminate, mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                Err(error) => {
                    tracing::error!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async move {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
