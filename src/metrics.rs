//! Prometheus metrics: one registry per server, filled at start by every part
//! that has something to count, and encoded on each scrape of `/metrics`.
//!
//! Hot-path figures (calls, latencies) are prometheus-client metrics updated
//! as they happen; figures a component already keeps (connection counters,
//! request memory, RocksDB properties, cache hits) are read at scrape time
//! through a [`prometheus_client::collector::Collector`], so nothing is
//! counted twice. Names follow Prometheus conventions: `tierkv_` prefix,
//! `_total` for counters, base units (`_seconds`, `_bytes`).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of what [`Metrics::encode`] returns.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Latency buckets of RPC histograms, in seconds: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
];

/// Labels of one RPC method.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    /// Full service name, `tierkv.v1.KvService`; `unknown` for paths no service serves.
    pub service: String,
    /// Method name, `Get`; `unknown` for paths no service serves.
    pub method: String,
}

/// Labels of one RPC outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Full service name.
    pub service: String,
    /// Method name.
    pub method: String,
    /// gRPC status code name, `OK`, `NOT_FOUND`...
    pub code: &'static str,
}

/// Per-RPC call counts by status code, and latencies.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    calls: Family<OutcomeLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    known: Arc<HashSet<String>>,
}

impl RpcMetrics {
    /// Labels for a request path `/package.Service/Method`. Paths of methods
    /// no service serves share one `unknown` label, so a client sending random
    /// paths cannot grow the label set without bound.
    pub fn labels(&self, path: &str) -> MethodLabels {
        if self.known.contains(path) {
            if let Some((service, method)) = path.trim_start_matches('/').split_once('/') {
                return MethodLabels {
                    service: service.to_string(),
                    method: method.to_string(),
                };
            }
        }
        MethodLabels {
            service: "unknown".to_string(),
            method: "unknown".to_string(),
        }
    }

    /// Records one finished call.
    pub fn record(&self, labels: MethodLabels, code: &'static str, elapsed: Duration) {
        self.latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        self.calls
            .get_or_create(&OutcomeLabels {
                service: labels.service,
                method: labels.method,
                code,
            })
            .inc();
    }
}

/// The name gRPC gives a status code number (`grpc-status`).
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// Collects the metrics of one server while it starts; [`MetricsBuilder::build`]
/// freezes them for scraping.
#[derive(Debug)]
pub struct MetricsBuilder {
    registry: Registry,
}

impl MetricsBuilder {
    /// An empty registry with the `tierkv` prefix.
    pub fn new() -> Self {
        Self {
            registry: Registry::with_prefix("tierkv"),
        }
    }

    /// Registers the per-RPC families for the methods in `known_paths`
    /// (`/package.Service/Method`).
    pub fn rpc(&mut self, known_paths: impl IntoIterator<Item = String>) -> RpcMetrics {
        let calls = Family::<OutcomeLabels, Counter>::default();
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(LATENCY_BUCKETS)) as fn() -> Histogram,
        );
        self.registry.register(
            "rpc_requests",
            "gRPC calls handled, by service, method and status code",
            calls.clone(),
        );
        self.registry.register(
            "rpc_duration_seconds",
            "Time from a call's headers to its status, by service and method",
            latency.clone(),
        );
        RpcMetrics {
            calls,
            latency: Family::clone(&latency),
            known: Arc::new(known_paths.into_iter().collect()),
        }
    }

    /// Registers a collector read at every scrape.
    pub fn collector(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// The frozen registry.
    pub fn build(self) -> Metrics {
        Metrics {
            registry: Arc::new(self.registry),
        }
    }
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics of one server, ready to scrape.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
}

impl Metrics {
    /// Every metric in the Prometheus text format (version 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail; a collector that fails is skipped.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }
}

/// Writes figures a component keeps itself, inside a [`Collector`]. Names are
/// given without the `tierkv_` prefix and, for counters, without `_total`.
pub struct FigureWriter<'a, 'b> {
    encoder: &'a mut prometheus_client::encoding::DescriptorEncoder<'b>,
}

impl<'a, 'b> FigureWriter<'a, 'b> {
    /// Wraps the encoder a [`Collector`] is handed.
    pub fn new(encoder: &'a mut prometheus_client::encoding::DescriptorEncoder<'b>) -> Self {
        Self { encoder }
    }

    /// A counter with no labels.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(value);
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, counter.metric_type())?;
        counter.encode(metric)
    }

    /// A gauge with no labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
        let gauge = ConstGauge::new(value);
        let metric = self
            .encoder
            .encode_descriptor(name, help, None, gauge.metric_type())?;
        gauge.encode(metric)
    }

    /// A gauge family: one value per label set.
    pub fn gauge_family<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: &[(L, i64)],
    ) -> Result<(), std::fmt::Error> {
        let mut family = self.encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (labels, value) in values {
            let metric = family.encode_family(labels)?;
            ConstGauge::new(*value).encode(metric)?;
        }
        Ok(())
    }

    /// A counter family: one value per label set.
    pub fn counter_family<L: EncodeLabelSet>(
        &mut self,
        name: &str,
        help: &str,
        values: &[(L, u64)],
    ) -> Result<(), std::fmt::Error> {
        let mut family = self.encoder.encode_descriptor(
            name,
            help,
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (labels, value) in values {
            let metric = family.encode_family(labels)?;
            ConstCounter::new(*value).encode(metric)?;
        }
        Ok(())
    }
}
