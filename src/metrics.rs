//! Prometheus metrics: one registry per server, filled at start by every part
//! that has something to count, and encoded on each scrape of `/metrics`.
//!
//! Hot-path figures (calls, latencies) are prometheus-client metrics updated
//! as they happen; figures a component already keeps (connection counters,
//! request memory, RocksDB properties, cache hits) are read at scrape time
//! through a [`prometheus_client::collector::Collector`], so nothing is
//! counted twice. Names follow Prometheus conventions: `tierkv_` prefix,
//! `_total` for counters, base units (`_seconds`, `_bytes`).

use std::collections::HashMap;
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

/// Labels of one RPC method. Shared strings, built once per method at start,
/// so labelling a call costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    /// Full service name, `tierkv.v1.KvService`; `unknown` for paths no service serves.
    pub service: Arc<str>,
    /// Method name, `Get`; `unknown` for paths no service serves.
    pub method: Arc<str>,
}

impl MethodLabels {
    fn new(service: &str, method: &str) -> Self {
        Self {
            service: service.into(),
            method: method.into(),
        }
    }
}

/// Labels of one RPC outcome.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Full service name.
    pub service: Arc<str>,
    /// Method name.
    pub method: Arc<str>,
    /// gRPC status code name, `OK`, `NOT_FOUND`...
    pub code: &'static str,
}

/// Per-RPC call counts by status code, and latencies.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    calls: Family<OutcomeLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    known: Arc<KnownMethods>,
}

/// The labels of each known path, `/package.Service/Method`, and the one
/// label of all other paths.
#[derive(Debug)]
struct KnownMethods {
    paths: HashMap<String, MethodLabels>,
    unknown: MethodLabels,
}

impl RpcMetrics {
    /// Labels for a request path `/package.Service/Method`. Paths of methods
    /// no service serves share one `unknown` label, so a client sending random
    /// paths cannot grow the label set without bound.
    pub fn labels(&self, path: &str) -> MethodLabels {
        let known = &*self.known;
        known.paths.get(path).unwrap_or(&known.unknown).clone()
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

/// Figures that take an async call to read (storage statistics run on the
/// blocking pool), refreshed before each scrape and cached for a collector.
#[async_trait::async_trait]
pub trait Refresh: Send + Sync + 'static {
    /// Reads the figures anew.
    async fn refresh(&self);
}

/// Collects the metrics of one server while it starts; [`MetricsBuilder::build`]
/// freezes them for scraping.
pub struct MetricsBuilder {
    registry: Registry,
    refreshers: Vec<Arc<dyn Refresh>>,
}

impl MetricsBuilder {
    /// An empty registry with the `tierkv` prefix.
    pub fn new() -> Self {
        Self {
            registry: Registry::with_prefix("tierkv"),
            refreshers: Vec::new(),
        }
    }

    /// Registers a collector whose figures are refreshed before each scrape.
    pub fn refreshed_collector<C: Collector + Refresh>(&mut self, collector: Arc<C>) {
        self.registry
            .register_collector(Box::new(Arc::clone(&collector)));
        self.refreshers.push(collector);
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
        let paths = known_paths
            .into_iter()
            .filter_map(|path| {
                let (service, method) = path.trim_start_matches('/').split_once('/')?;
                let labels = MethodLabels::new(service, method);
                Some((path, labels))
            })
            .collect();
        RpcMetrics {
            calls,
            latency: Family::clone(&latency),
            known: Arc::new(KnownMethods {
                paths,
                unknown: MethodLabels::new("unknown", "unknown"),
            }),
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
            refreshers: Arc::new(self.refreshers),
        }
    }
}

impl Default for MetricsBuilder {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics of one server, ready to scrape.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    refreshers: Arc<Vec<Arc<dyn Refresh>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Refreshes the figures that need it, then encodes every metric.
    pub async fn scrape(&self) -> String {
        for refresher in self.refreshers.iter() {
            refresher.refresh().await;
        }
        self.encode()
    }

    /// Every metric in the Prometheus text format (version 0.0.4), with the
    /// figures as last refreshed.
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

/// Labels of one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NamespaceLabels {
    /// The prefix (empty for the default namespace).
    namespace: String,
    /// Where the engine keeps it (the RocksDB column family).
    column_family: String,
}

/// Storage figures of the engine, per namespace and engine-wide.
pub struct EngineFigures {
    engine: Arc<dyn crate::engine::Engine>,
    last: std::sync::Mutex<(Vec<crate::engine::NamespaceStats>, Option<LocalFigures>)>,
}

/// The figures only an engine over local disk has.
#[derive(Debug, Clone, Default)]
struct LocalFigures {
    namespaces: Vec<crate::engine::LocalNamespaceStats>,
    summary: crate::engine::StorageSummary,
}

/// Reads the figures of a local engine.
async fn local_figures(
    local: &dyn crate::engine::LocalStorage,
) -> Result<LocalFigures, crate::engine::EngineError> {
    Ok(LocalFigures {
        namespaces: local.local_namespace_stats().await?,
        summary: local.storage_summary().await?,
    })
}

impl EngineFigures {
    /// Figures of `engine`.
    pub fn new(engine: Arc<dyn crate::engine::Engine>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            last: std::sync::Mutex::new(Default::default()),
        })
    }
}

impl std::fmt::Debug for EngineFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineFigures").finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl Refresh for EngineFigures {
    async fn refresh(&self) {
        let namespaces = self.engine.namespace_stats().await;
        let local = match self.engine.local() {
            Some(local) => local_figures(local).await.map(Some),
            None => Ok(None),
        };
        match (namespaces, local) {
            (Ok(namespaces), Ok(local)) => {
                *self.last.lock().unwrap_or_else(|p| p.into_inner()) = (namespaces, local);
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(error = %error.log_summary(), "reading storage statistics failed; serving the last ones");
            }
        }
    }
}

impl Collector for EngineFigures {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        let (namespaces, local) = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = FigureWriter::new(&mut encoder);
        let per_namespace =
            |pick: fn(&crate::engine::NamespaceStats) -> u64| -> Vec<(NamespaceLabels, i64)> {
                namespaces
                    .iter()
                    .map(|stats| {
                        (
                            NamespaceLabels {
                                namespace: stats.prefix.clone(),
                                column_family: stats.storage.clone(),
                            },
                            pick(stats) as i64,
                        )
                    })
                    .collect()
            };
        out.gauge_family(
            "namespace_estimated_keys",
            "Estimated keys per namespace (RocksDB estimate-num-keys; deleted and expired keys may count until compaction)",
            &per_namespace(|stats| stats.estimated_keys),
        )?;
        out.gauge_family(
            "namespace_live_data_bytes",
            "Estimated bytes of live data per namespace",
            &per_namespace(|stats| stats.estimated_live_bytes),
        )?;
        let Some(LocalFigures {
            namespaces: local_namespaces,
            summary,
        }) = local
        else {
            return Ok(());
        };
        // Labelled like the namespace figures above: the two lists come in
        // the same order, one entry per namespace.
        let per_local_namespace =
            |pick: fn(&crate::engine::LocalNamespaceStats) -> u64| -> Vec<(NamespaceLabels, i64)> {
                local_namespaces
                    .iter()
                    .map(|stats| {
                        let storage = namespaces
                            .iter()
                            .find(|named| named.prefix == stats.prefix)
                            .map_or_else(String::new, |named| named.storage.clone());
                        (
                            NamespaceLabels {
                                namespace: stats.prefix.clone(),
                                column_family: storage,
                            },
                            pick(stats) as i64,
                        )
                    })
                    .collect()
            };
        out.gauge_family(
            "namespace_table_files_bytes",
            "Bytes of table files on disk per namespace",
            &per_local_namespace(|stats| stats.table_files_bytes),
        )?;
        out.gauge_family(
            "namespace_memtable_bytes",
            "Bytes in unflushed write buffers per namespace",
            &per_local_namespace(|stats| stats.memtable_bytes),
        )?;
        out.gauge_family(
            "namespace_pending_compaction_bytes",
            "Estimated bytes compaction still has to rewrite, per namespace",
            &per_local_namespace(|stats| stats.pending_compaction_bytes),
        )?;
        out.gauge(
            "block_cache_used_bytes",
            "Bytes of the RocksDB block cache in use",
            summary.cache_used_bytes as i64,
        )?;
        out.gauge(
            "block_cache_capacity_bytes",
            "The RocksDB block cache's capacity (block_cache_mb)",
            summary.cache_capacity_bytes as i64,
        )?;
        out.gauge(
            "write_queue_bytes",
            "Bytes of writes queued for commit (write_queue_mb budget in use)",
            summary.queued_write_bytes as i64,
        )?;
        out.counter(
            "corrupt_records_found",
            "Times a read or a write's precondition check met a record that could not be decoded (answered DATA_LOSS)",
            summary.corrupt_records_found,
        )?;
        out.counter(
            "corrupt_records_removed",
            "Undecodable records removed by an unconditional Delete",
            summary.corrupt_records_removed,
        )?;
        Ok(())
    }
}

/// One sample of a scrape: a metric name, its labels and its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The full metric name, `tierkv_rpc_requests_total`.
    pub name: String,
    /// Label names and values, in order.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

/// The samples of a scrape in the Prometheus text format (comments skipped;
/// label values unescaped). Lines that do not parse are skipped.
pub fn parse_samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_sample)
        .collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        value => value.parse().ok()?,
    };
    let Some((name, rest)) = series.split_once('{') else {
        return Some(Sample {
            name: series.to_string(),
            labels: Vec::new(),
            value,
        });
    };
    let body = rest.strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    loop {
        let label: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if label.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            return None;
        }
        let mut label_value = String::new();
        loop {
            match chars.next()? {
                '\\' => match chars.next()? {
                    'n' => label_value.push('\n'),
                    other => label_value.push(other),
                },
                '"' => break,
                other => label_value.push(other),
            }
        }
        labels.push((label.trim_start_matches(',').to_string(), label_value));
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples parse with their labels, escaped values included.
    #[test]
    fn samples_parse() {
        let text = "# HELP x_total help\n# TYPE x_total counter\nx_total{a=\"1\",b=\"q\\\"uote\\\\\"} 3\nplain 4.5\nh_bucket{le=\"+Inf\"} 2\n";
        let samples = parse_samples(text);
        assert_eq!(samples.len(), 3, "{samples:?}");
        assert_eq!(samples[0].name, "x_total");
        assert_eq!(
            samples[0].labels,
            vec![
                ("a".to_string(), "1".to_string()),
                ("b".to_string(), "q\"uote\\".to_string())
            ]
        );
        assert_eq!(samples[0].value, 3.0);
        assert_eq!(samples[1].labels, vec![]);
        assert_eq!(samples[1].value, 4.5);
        assert_eq!(samples[2].labels[0].1, "+Inf");
    }
}
