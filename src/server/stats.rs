//! The server's live counters and the Prometheus collectors that export
//! them, with the services' and the lazy migrator's figures.

use super::connections::{ConnectionCounts, ConnectionLimits, Connections};
use super::in_flight::InFlight;
use super::load_shed::CallLimit;
use super::metrics_http::Readiness;
use super::request_limits::{BudgetCounts, RequestBudget};
use super::response_budget::{ResponseBudget, ResponseBudgetCounts};
use super::TCP_KEEPALIVE;
use crate::cache::{CacheCounts, CacheStats};
use crate::config::Config;
use crate::metrics::FigureWriter;
use crate::migrate::{LazyMigrator, Migrator};
use crate::session::SessionService;
use std::sync::Arc;

/// Live counters of a running server: connections, request memory, calls.
#[derive(Debug, Clone)]
pub struct ServerStats {
    pub(super) connections: Arc<Connections>,
    pub(super) budget: Arc<RequestBudget>,
    pub(super) response_budget: Arc<ResponseBudget>,
    pub(super) in_flight: Arc<InFlight>,
    pub(super) readiness: Arc<Readiness>,
    pub(super) call_limit: Arc<CallLimit>,
    pub(super) cache: Arc<CacheStats>,
    pub(super) fallbacks: Arc<crate::kv::fallback::FallbackCounters>,
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
pub(super) struct ServiceFigures {
    pub(super) sessions: SessionService,
    pub(super) migrator: Arc<Migrator>,
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
pub(super) struct LazyMigrationFigures(pub(super) Arc<LazyMigrator>);

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

/// `KvService.Watch`'s figures, read at every scrape.
#[derive(Debug)]
pub(super) struct WatchFigures(pub(super) crate::watch::WatchService);

/// Labels of the reason a watch stream ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, prometheus_client::encoding::EncodeLabelSet)]
struct EndLabels {
    reason: String,
}

impl prometheus_client::collector::Collector for WatchFigures {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let counts = self.0.counts();
        let mut out = FigureWriter::new(&mut encoder);
        out.gauge(
            "watchers",
            "KvService.Watch streams open now",
            counts.watchers as i64,
        )?;
        out.counter(
            "watch_events_sent",
            "Events sent to Watch clients",
            counts.events_sent,
        )?;
        out.gauge(
            "watch_lag_max_sequences",
            "How far the slowest open watcher is behind the latest commit, in commit sequences",
            i64::try_from(counts.max_lag).unwrap_or(i64::MAX),
        )?;
        let ended: Vec<(EndLabels, u64)> = counts
            .ended
            .into_iter()
            .map(|(reason, count)| {
                (
                    EndLabels {
                        reason: reason.to_string(),
                    },
                    count,
                )
            })
            .collect();
        out.counter_family(
            "watch_streams_ended",
            "Watch streams ended (or refused), by reason: client, invalid, compacted, \
             other_history, too_many_watchers, slow_consumer, shutdown, engine",
            &ended,
        )
    }
}
