//! `tierkv-bench`: the in-repo benchmark of the tierkv gRPC service.
//!
//! # What it measures
//!
//! It starts the real server in this process ([`RunningServer::start`] on
//! `127.0.0.1:0`, over a fresh RocksDB directory under the system temp dir,
//! removed at the end) and talks to it over TCP with the generated client, so
//! every number includes protobuf encoding, HTTP/2 over loopback, the tonic
//! stack, the domain logic and RocksDB.
//!
//! 1. **Throughput and latency per RPC.** A baseline first: the gRPC health
//!    `Check` RPC on the same connection, which exercises the transport and
//!    nothing else (no storage). Then `Put` (100-byte text values, unique
//!    keys), `Get` (hits on those keys), `BatchGet` of 100 keys, `BatchWrite`
//!    of 1000 small puts and `List` pages of 1000 keys. The Session service
//!    runs beside them: `SessionService/Create`, then `SessionService/Get` of
//!    those sessions interleaved with `KvService/Get` (get, session_get,
//!    session_get, get after a warm-up of each; the table prints the ratio
//!    of the two: validating a session is on every request of every user),
//!    and `Touch` within the touch interval (which must not write). The Cache
//!    service too: `CacheService/Get` answered from memory (keys written with
//!    `CacheService/Put`, memory TTL one hour) and answered from the store
//!    (keys written with a 1 ms memory TTL, so every read goes to RocksDB),
//!    interleaved between two health runs (health, memory, store, store,
//!    memory, health) and printed as ratios of their summed ops/s to the two
//!    health runs', and as ratios of process CPU time per RPC (the health
//!    check's over the cache's; server and client together, but far less
//!    moved by other processes than throughput); every response's tier is
//!    checked. Each runs a bounded
//!    number of RPCs with a fixed number in flight (tokio tasks sharing clones
//!    of one client), and the table shows ops/s, p50 and p99 latency, and the
//!    p50 and ops/s of each RPC relative to the health-check baseline
//!    (`1.8x` in the latency column means 1.8 times the baseline latency).
//!    Ratios are the numbers to compare across machines; absolute numbers
//!    depend on the machine.
//!    Then `List` of one page of 100 keys whose values are 1 MiB each, next to
//!    the same page with 10-byte values: a listing reads only the records'
//!    heads, so the two should cost the same (the ratio is printed).
//! 2. **Runtime stalls.** RocksDB calls block, so the engine runs them on
//!    tokio's blocking pool. To show that they do not stall the async workers,
//!    it measures health-check latency (one probe at a time, on a connection
//!    of its own so that it does not queue behind the puts' bytes) first idle,
//!    then while as many 1 MiB puts as the concurrency run continuously, and
//!    prints the ratio of the p99s. Server and client share the runtime's
//!    workers, so some of that ratio is plain CPU spent moving megabytes
//!    (encoding, HTTP/2, decoding). To separate the two, a control run sends
//!    1 MiB puts at the same rate with an empty key, which the server decodes
//!    and rejects before storage; the ratio of the stored-load p99 to the
//!    control's is what RocksDB adds (about 1x when it adds no stall). A
//!    RocksDB write blocking a worker would hold probes for a whole write; the
//!    1 MiB put latency is printed for scale.
//!
//! # How to run it
//!
//! ```text
//! make bench                          # cargo run --release --locked -p tierkv-bench --bin tierkv-bench
//! make bench ARGS="--quick"           # 2000 operations instead of 20000
//! make bench ARGS="--ops 50000 --concurrency 32"
//! make bench ARGS="--cache-only"      # health and CacheService/Get only
//! ```
//!
//! Always measure a release build: a debug build prints numbers too, but they
//! say nothing about the service. The batch benchmarks run a fraction of
//! `--ops` RPCs (each RPC carries 100 or 1000 keys); the exact counts are
//! printed at the top.

#![warn(missing_docs)]

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use tierkv::clock::{SharedClock, SystemClock};
use tierkv::config::Config;
use tierkv::server::message_limits::MAX_MESSAGE_BYTES;
use tierkv::server::RunningServer;
use tierkv_client::proto::v1 as pb;
use tierkv_client::proto::v1::cache_service_client::CacheServiceClient;
use tierkv_client::proto::v1::kv_service_client::KvServiceClient;
use tierkv_client::proto::v1::session_service_client::SessionServiceClient;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Any failure; the benchmark stops at the first one.
type BoxError = Box<dyn Error + Send + Sync>;

/// `--ops` under `--quick`.
const QUICK_OPS: u64 = 2_000;
/// Size of the small text values.
const SMALL_VALUE_BYTES: usize = 100;
/// Keys per `BatchGet`.
const BATCH_GET_KEYS: u64 = 100;
/// Puts per `BatchWrite`.
const BATCH_WRITE_PUTS: u64 = 1_000;
/// Keys per `List` page.
const LIST_PAGE_SIZE: i32 = 1_000;
/// How many full pages the listed prefix holds.
const LIST_PAGES: u64 = 10;
/// Size of the values written by the stall check's load.
const BIG_VALUE_BYTES: usize = 1024 * 1024;
/// Keys each stall-check writer cycles through (overwriting, to bound disk use).
const BIG_KEYS_PER_WRITER: u64 = 4;
/// The service the health checks ask about.
const HEALTH_SERVICE: &str = "tierkv.v1.KvService";
/// Key prefix of the `Put` benchmark (read back by `Get` and `BatchGet`).
const PUT_PREFIX: &str = "bench/put/";
/// Key prefix of the `BatchWrite` benchmark.
const BATCH_PREFIX: &str = "bench/batch/";
/// Key prefix the `List` benchmark pages through.
const LIST_PREFIX: &str = "bench/list/";
/// Keys per page in the value-size comparison of `List`.
const LIST_SIZED_KEYS: u64 = 100;
/// Key prefix of the listed keys with 1 MiB values.
const LIST_BIG_PREFIX: &str = "bench/listbig/";
/// Key prefix of the listed keys with 10-byte values.
const LIST_TINY_PREFIX: &str = "bench/listtiny/";
/// Key prefix of the keys `CacheService/Get` reads from memory.
const CACHE_MEMORY_PREFIX: &str = "cache:bench:memory:";
/// Key prefix of the keys `CacheService/Get` reads from the store.
const CACHE_STORE_PREFIX: &str = "cache:bench:store:";
/// Key prefix of the stall check's 1 MiB values.
const BIG_PREFIX: &str = "bench/big/";

/// Measures tierkv over gRPC against a health-check baseline.
#[derive(Debug, Parser)]
#[command(name = "tierkv-bench", version, about = "Measures tierkv over gRPC against a health-check baseline", long_about = None)]
struct Args {
    /// RPCs per single-key benchmark (health, Put, Get); the batch benchmarks
    /// run a fraction of it, printed at the top.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,
    /// Requests in flight (tokio tasks sharing one cloned client), and the
    /// number of concurrent 1 MiB writers in the stall check.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=4096))]
    concurrency: u64,
    /// A short run: `--ops 2000`.
    #[arg(long, conflicts_with = "ops")]
    quick: bool,
    /// Serve with `sync_writes = true` (fsync the write-ahead log before each
    /// acknowledgement), to measure the cost of power-loss durability.
    #[arg(long)]
    sync_writes: bool,
    /// Run only the health baseline and the CacheService/Get benchmarks.
    #[arg(long)]
    cache_only: bool,
    /// Instead of the gRPC benchmarks, measure the CPU cost of a small put
    /// below the RPC: a raw RocksDB `WriteBatch` + WAL append shaped like the
    /// engine's, and the engine's own write path (writer thread, versions,
    /// change feed) driven by 256 concurrent tasks.
    #[arg(long)]
    storage_floor: bool,
    /// Instead of the gRPC benchmarks, measure how long RocksDB's iterator
    /// takes to step over N deletion markers to the next live key (what a
    /// `List` after mass deletes pays), with and without the
    /// compact-on-deletion collector the engine configures.
    #[arg(long)]
    list_tombstones: bool,
}

/// The operation counts every benchmark runs, derived from the flags.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// RPCs per single-key benchmark.
    ops: u64,
    /// Requests in flight.
    concurrency: usize,
    /// Health checks run before the baseline, to warm the connection.
    warmup: u64,
    /// `BatchGet` RPCs.
    batch_gets: u64,
    /// `BatchWrite` RPCs.
    batch_writes: u64,
    /// `List` RPCs.
    lists: u64,
    /// Sequential health probes in each half of the stall check.
    probes: u64,
}

impl Plan {
    /// The plan for `args`.
    fn new(args: &Args) -> Self {
        let ops = if args.quick { QUICK_OPS } else { args.ops };
        Self {
            ops,
            // Bounded by the CLI range, so it fits in any usize.
            concurrency: usize::try_from(args.concurrency).unwrap_or(16),
            warmup: (ops / 10).clamp(100, 1_000),
            batch_gets: (ops / 10).max(1),
            batch_writes: (ops / 20).max(1),
            lists: (ops / 10).max(1),
            probes: (ops / 10).max(200),
        }
    }
}

/// The results of one benchmark.
struct Stats {
    /// What was measured.
    name: &'static str,
    /// RPCs completed.
    rpcs: u64,
    /// Keys read, written or listed.
    keys: u64,
    /// Wall time from the first request to the last response.
    wall: Duration,
    /// Every RPC's latency, sorted.
    latencies: Vec<Duration>,
    /// CPU time (user + system) the whole process, server and client, spent
    /// during the run: unlike wall time, other processes' load barely moves it.
    cpu: Duration,
}

impl Stats {
    /// RPCs per second.
    fn ops_per_sec(&self) -> f64 {
        self.rpcs as f64 / self.wall.as_secs_f64()
    }

    /// Keys per second.
    fn keys_per_sec(&self) -> f64 {
        self.keys as f64 / self.wall.as_secs_f64()
    }

    /// Process CPU time per RPC, in microseconds.
    fn cpu_us_per_rpc(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.rpcs.max(1) as f64
    }

    /// The 50th percentile latency, in microseconds.
    fn p50_us(&self) -> f64 {
        percentile_us(&self.latencies, 50.0)
    }

    /// The 99th percentile latency, in microseconds.
    fn p99_us(&self) -> f64 {
        percentile_us(&self.latencies, 99.0)
    }
}

/// The nearest-rank `pct` percentile of `sorted`, in microseconds.
fn percentile_us(sorted: &[Duration], pct: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    let index = rank.clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1e6
}

/// One kind of request, with the per-task state it needs; each task gets a
/// clone (tonic clients are cheap handles onto the shared connection).
#[derive(Clone)]
enum Workload {
    /// `grpc.health.v1.Health/Check`.
    Health(HealthClient<Channel>),
    /// `Put` of a small text value under a unique key.
    Put(KvServiceClient<Channel>),
    /// `Get` of a key the `Put` benchmark wrote.
    Get {
        /// The client.
        client: KvServiceClient<Channel>,
        /// How many keys the `Put` benchmark wrote.
        keyspace: u64,
    },
    /// `BatchGet` of [`BATCH_GET_KEYS`] keys the `Put` benchmark wrote.
    BatchGet {
        /// The client.
        client: KvServiceClient<Channel>,
        /// How many keys the `Put` benchmark wrote.
        keyspace: u64,
    },
    /// `BatchWrite` of [`BATCH_WRITE_PUTS`] small puts under unique keys.
    BatchWrite(KvServiceClient<Channel>),
    /// The first `List` page of [`LIST_SIZED_KEYS`] keys under a prefix.
    ListFirstPage {
        /// The client.
        client: KvServiceClient<Channel>,
        /// The listed prefix.
        prefix: &'static str,
    },
    /// One `List` page, continuing where this task's previous page ended.
    List {
        /// The client.
        client: KvServiceClient<Channel>,
        /// The token of the next page; empty to start over.
        page_token: String,
    },
    /// `SessionService/Create` with a little data; keeps the tokens.
    SessionCreate {
        /// The client.
        client: SessionServiceClient<Channel>,
        /// Tokens of the created sessions, for the benchmarks after it.
        tokens: Arc<std::sync::Mutex<Vec<String>>>,
    },
    /// `SessionService/Get` (or `Touch`) of a session `SessionCreate` made.
    SessionGet {
        /// The client.
        client: SessionServiceClient<Channel>,
        /// The tokens to cycle through.
        tokens: Arc<Vec<String>>,
        /// Call `Touch` instead of `Get`.
        touch: bool,
    },
    /// `CacheService/Get` of a key under `prefix`, which must come from `tier`.
    CacheGet {
        /// The client.
        client: CacheServiceClient<Channel>,
        /// The keys' prefix.
        prefix: &'static str,
        /// How many keys there are.
        keyspace: u64,
        /// The tier every answer must come from; `None` for any (warm-up).
        tier: Option<pb::CacheTier>,
    },
}

impl Workload {
    /// Sends the `index`th request and checks its answer; returns how many
    /// keys it read, wrote or listed.
    async fn call(&mut self, index: u64) -> Result<u64, BoxError> {
        match self {
            Workload::Health(client) => {
                health_check(client).await?;
                Ok(1)
            }
            Workload::Put(client) => {
                client.put(small_put(put_key(index))).await?;
                Ok(1)
            }
            Workload::Get { client, keyspace } => {
                let key = put_key(index % *keyspace);
                let response = client
                    .get(pb::GetRequest {
                        key: key.clone(),
                        r#type: 0,
                        fallback: None,
                    })
                    .await?
                    .into_inner();
                if !response.found {
                    return Err(format!("Get {key}: not found, but it was just written").into());
                }
                Ok(1)
            }
            Workload::BatchGet { client, keyspace } => {
                let first = index * BATCH_GET_KEYS;
                let keys = (0..BATCH_GET_KEYS)
                    .map(|offset| put_key((first + offset) % *keyspace))
                    .collect();
                let response = client
                    .batch_get(pb::BatchGetRequest {
                        keys,
                        r#type: 0,
                        fallback: None,
                    })
                    .await?
                    .into_inner();
                let found = response.results.iter().filter(|r| r.found).count() as u64;
                if found != BATCH_GET_KEYS {
                    return Err(format!(
                        "BatchGet found {found} of {BATCH_GET_KEYS} keys that were just written"
                    )
                    .into());
                }
                Ok(found)
            }
            Workload::BatchWrite(client) => {
                let mutations = (0..BATCH_WRITE_PUTS)
                    .map(|offset| pb::Mutation {
                        operation: Some(pb::mutation::Operation::Put(small_put(format!(
                            "{BATCH_PREFIX}{index:08}/{offset:04}"
                        )))),
                    })
                    .collect();
                let response = client
                    .batch_write(pb::BatchWriteRequest { mutations })
                    .await?
                    .into_inner();
                let written = response.results.len() as u64;
                if written != BATCH_WRITE_PUTS {
                    return Err(format!(
                        "BatchWrite answered {written} results for {BATCH_WRITE_PUTS} puts"
                    )
                    .into());
                }
                Ok(written)
            }
            Workload::ListFirstPage { client, prefix } => {
                let response = client
                    .list(pb::ListRequest {
                        prefix: prefix.to_string(),
                        page_size: LIST_SIZED_KEYS as i32,
                        page_token: String::new(),
                    })
                    .await?
                    .into_inner();
                let listed = response.keys.len() as u64;
                if listed != LIST_SIZED_KEYS {
                    return Err(format!(
                        "List of {prefix} returned {listed} keys, not {LIST_SIZED_KEYS}"
                    )
                    .into());
                }
                Ok(listed)
            }
            Workload::List { client, page_token } => {
                let response = client
                    .list(pb::ListRequest {
                        prefix: LIST_PREFIX.to_string(),
                        page_size: LIST_PAGE_SIZE,
                        page_token: std::mem::take(page_token),
                    })
                    .await?
                    .into_inner();
                let listed = response.keys.len() as u64;
                if listed != LIST_PAGE_SIZE as u64 {
                    return Err(format!(
                        "List returned {listed} keys; every page of {LIST_PREFIX} should be full"
                    )
                    .into());
                }
                *page_token = response.next_page_token;
                Ok(listed)
            }
            Workload::SessionCreate { client, tokens } => {
                let data = serde_json::json!({"role": "member", "cart_items": 3, "locale": "en"});
                let data = match tierkv_client::convert::json_to_proto(data).kind {
                    Some(prost_types::value::Kind::StructValue(data)) => Some(data),
                    _ => None,
                };
                let session = client
                    .create(pb::CreateSessionRequest {
                        user_id: format!("user{}", index % 1000),
                        data,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                // Poisoning needs a panic while holding the lock; there is none.
                if let Ok(mut tokens) = tokens.lock() {
                    tokens.push(session.token);
                }
                Ok(1)
            }
            Workload::SessionGet {
                client,
                tokens,
                touch,
            } => {
                let token = tokens[(index % tokens.len() as u64) as usize].clone();
                let session = if *touch {
                    client
                        .touch(pb::TouchSessionRequest { token })
                        .await?
                        .into_inner()
                } else {
                    client
                        .get(pb::GetSessionRequest {
                            token,
                            touch: false,
                        })
                        .await?
                        .into_inner()
                };
                if session.session_id.is_empty() {
                    return Err("a session came back without an id".into());
                }
                Ok(1)
            }
            Workload::CacheGet {
                client,
                prefix,
                keyspace,
                tier,
            } => {
                let key = format!("{prefix}{:08}", index % *keyspace);
                let response = client
                    .get(pb::CacheGetRequest { key, r#type: 0 })
                    .await?
                    .into_inner();
                let expected = tier.map_or(response.tier, |tier| tier as i32);
                if !response.found || response.tier != expected {
                    return Err(format!(
                        "CacheService/Get: found {}, tier {}; expected a value from {tier:?}",
                        response.found, response.tier
                    )
                    .into());
                }
                Ok(1)
            }
        }
    }
}

/// The key of the `index`th small put.
fn put_key(index: u64) -> String {
    format!("{PUT_PREFIX}{index:08}")
}

/// A put of a [`SMALL_VALUE_BYTES`]-byte text value.
fn small_put(key: String) -> pb::PutRequest {
    pb::PutRequest {
        key,
        value: Some(pb::put_request::Value::Text("v".repeat(SMALL_VALUE_BYTES))),
        ..Default::default()
    }
}

/// One health check, which must answer SERVING.
async fn health_check(client: &mut HealthClient<Channel>) -> Result<(), BoxError> {
    let status = client
        .check(HealthCheckRequest {
            service: HEALTH_SERVICE.to_string(),
        })
        .await?
        .into_inner()
        .status;
    if status != ServingStatus::Serving as i32 {
        return Err(format!("health check answered status {status}, not SERVING").into());
    }
    Ok(())
}

/// Runs `rpcs` requests of `workload` with `concurrency` in flight and
/// collects their latencies.
async fn run(
    name: &'static str,
    workload: &Workload,
    rpcs: u64,
    concurrency: usize,
) -> Result<Stats, BoxError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let cpu_before = process_cpu();
    let started = Instant::now();
    for _ in 0..concurrency {
        let mut workload = workload.clone();
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut keys = 0;
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= rpcs {
                    return Ok::<_, BoxError>((latencies, keys));
                }
                let sent = Instant::now();
                keys += workload.call(index).await?;
                latencies.push(sent.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(usize::try_from(rpcs).unwrap_or(0));
    let mut keys = 0;
    // A failure returns early; dropping the set aborts the other tasks.
    while let Some(joined) = tasks.join_next().await {
        let (task_latencies, task_keys) = joined??;
        latencies.extend(task_latencies);
        keys += task_keys;
    }
    let wall = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    latencies.sort_unstable();
    Ok(Stats {
        name,
        rpcs: latencies.len() as u64,
        keys,
        wall,
        latencies,
        cpu,
    })
}

/// The CPU time (user + system) this process has used so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let time = |value: libc::timeval| {
        Duration::from_secs(value.tv_sec as u64) + Duration::from_micros(value.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Sends `count` health checks one after the other; returns their sorted
/// latencies.
async fn probe(client: &mut HealthClient<Channel>, count: u64) -> Result<Vec<Duration>, BoxError> {
    let mut latencies = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for _ in 0..count {
        let sent = Instant::now();
        health_check(client).await?;
        latencies.push(sent.elapsed());
    }
    latencies.sort_unstable();
    Ok(latencies)
}

/// Opens a new HTTP/2 connection to `endpoint`.
async fn connect(endpoint: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// A KV client on `channel` that accepts the largest messages the server does.
fn kv_client(channel: Channel) -> KvServiceClient<Channel> {
    KvServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// What the stall check's writers do with their 1 MiB puts.
#[derive(Debug, Clone, Copy)]
enum Load {
    /// Store them: the server decodes each put and writes it to RocksDB.
    Store,
    /// Send them with an empty key, at `puts_per_sec` in total: the server
    /// decodes each put and rejects it (INVALID_ARGUMENT) before storage. The
    /// same bytes cross the transport, but RocksDB does nothing.
    Reject {
        /// The total rate to send at, matched to the [`Load::Store`] run.
        puts_per_sec: f64,
    },
}

/// Health probes measured under one [`Load`].
struct LoadedProbes {
    /// Probe latencies, sorted.
    latencies: Vec<Duration>,
    /// 1 MiB puts completed from the first to the last probe.
    puts_during_probes: u64,
    /// How long the probes took.
    probe_window: Duration,
    /// 1 MiB puts per second over the whole time the load ran.
    puts_per_sec: f64,
    /// Latencies of every 1 MiB put, sorted.
    put_latencies: Vec<Duration>,
}

impl LoadedProbes {
    /// MiB of puts per second while the probes ran.
    fn mib_per_sec(&self) -> f64 {
        let mib = self.puts_during_probes as f64 * BIG_VALUE_BYTES as f64 / (1024.0 * 1024.0);
        mib / self.probe_window.as_secs_f64()
    }
}

/// The outcome of the runtime stall check.
struct StallReport {
    /// Concurrent writers.
    writers: usize,
    /// Probe latencies with the server idle, sorted.
    idle: Vec<Duration>,
    /// Probes while the 1 MiB puts are stored.
    stored: LoadedProbes,
    /// Probes while 1 MiB puts at the same rate are rejected before storage.
    transport_only: LoadedProbes,
}

/// Measures health-check latency idle, under `writers` concurrent and
/// continuous 1 MiB puts, and under the same rate of 1 MiB puts that never
/// reach storage.
async fn stall_check(
    endpoint: &str,
    kv: &KvServiceClient<Channel>,
    writers: usize,
    probes: u64,
) -> Result<StallReport, BoxError> {
    // A connection of its own, so that probes do not wait behind the puts'
    // megabytes in the shared connection's flow-control window: what is left
    // is the server's (and runtime's) responsiveness.
    let mut prober = HealthClient::new(connect(endpoint).await?);
    probe(&mut prober, 100).await?;
    let idle = probe(&mut prober, probes).await?;
    let stored = probe_under_load(&mut prober, kv, writers, probes, Load::Store).await?;
    let puts_per_sec = stored.puts_per_sec;
    if !(puts_per_sec.is_finite() && puts_per_sec > 0.0) {
        return Err(format!("cannot match a put rate of {puts_per_sec} per second").into());
    }
    let transport_only = probe_under_load(
        &mut prober,
        kv,
        writers,
        probes,
        Load::Reject { puts_per_sec },
    )
    .await?;
    Ok(StallReport {
        writers,
        idle,
        stored,
        transport_only,
    })
}

/// Runs `writers` tasks sending 1 MiB puts as `load` says, and `probes`
/// health checks one at a time once they are going.
async fn probe_under_load(
    prober: &mut HealthClient<Channel>,
    kv: &KvServiceClient<Channel>,
    writers: usize,
    probes: u64,
    load: Load,
) -> Result<LoadedProbes, BoxError> {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let value = Arc::new(vec![0xA5_u8; BIG_VALUE_BYTES]);
    let mut tasks = JoinSet::new();
    let load_start = Instant::now();
    for writer in 0..writers {
        let mut client = kv.clone();
        let stop = Arc::clone(&stop);
        let done = Arc::clone(&done);
        let value = Arc::clone(&value);
        // Under `Reject`, each writer sends at its share of the rate, the
        // writers staggered evenly.
        let mut pacer = match load {
            Load::Store => None,
            Load::Reject { puts_per_sec } => {
                let period = Duration::from_secs_f64(writers as f64 / puts_per_sec);
                let offset = period.mul_f64(writer as f64 / writers as f64);
                let mut pacer =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                pacer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                Some(pacer)
            }
        };
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut round = 0_u64;
            loop {
                if let Some(pacer) = pacer.as_mut() {
                    pacer.tick().await;
                }
                if stop.load(Ordering::Relaxed) {
                    return Ok::<_, BoxError>(latencies);
                }
                let key = match load {
                    Load::Store => {
                        format!("{BIG_PREFIX}{writer:04}/{}", round % BIG_KEYS_PER_WRITER)
                    }
                    Load::Reject { .. } => String::new(),
                };
                let request = pb::PutRequest {
                    key,
                    value: Some(pb::put_request::Value::Bytes(value.as_ref().clone())),
                    ..Default::default()
                };
                let sent = Instant::now();
                let outcome = client.put(request).await;
                latencies.push(sent.elapsed());
                match (load, outcome) {
                    (Load::Store, Ok(_)) => {}
                    (Load::Reject { .. }, Err(status))
                        if status.code() == tonic::Code::InvalidArgument => {}
                    (Load::Reject { .. }, Ok(_)) => {
                        return Err("a put with an empty key was accepted".into());
                    }
                    (_, Err(status)) => return Err(status.into()),
                }
                done.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
        });
    }

    // Probe only once the load is running.
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.load(Ordering::Relaxed) < writers as u64 {
        if let Some(joined) = tasks.try_join_next() {
            joined??;
            return Err("a 1 MiB writer stopped before the probes started".into());
        }
        if Instant::now() > deadline {
            return Err("the 1 MiB writers did not complete a put each within 120 s".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let before = done.load(Ordering::Relaxed);
    let window_start = Instant::now();
    let latencies = probe(prober, probes).await;
    let probe_window = window_start.elapsed();
    let puts_during_probes = done.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);

    let mut put_latencies = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        put_latencies.extend(joined??);
    }
    let puts_per_sec = done.load(Ordering::Relaxed) as f64 / load_start.elapsed().as_secs_f64();
    put_latencies.sort_unstable();
    Ok(LoadedProbes {
        latencies: latencies?,
        puts_during_probes,
        probe_window,
        puts_per_sec,
        put_latencies,
    })
}

/// Writes the [`LIST_PAGES`] full pages of keys the `List` benchmark reads.
async fn seed_list_keys(client: &mut KvServiceClient<Channel>) -> Result<(), BoxError> {
    let page = LIST_PAGE_SIZE as u64;
    for batch in 0..LIST_PAGES {
        let mutations = (batch * page..(batch + 1) * page)
            .map(|index| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(small_put(format!(
                    "{LIST_PREFIX}{index:08}"
                )))),
            })
            .collect();
        client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await?;
    }
    Ok(())
}

/// `len` random (incompressible) bytes.
fn random_bytes(len: usize) -> Vec<u8> {
    use rand::Rng;
    let mut bytes = vec![0u8; len];
    rand::rng().fill(bytes.as_mut_slice());
    bytes
}

/// Writes [`LIST_SIZED_KEYS`] keys of `value_bytes` random bytes under `prefix`.
async fn seed_sized_keys(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
    value_bytes: usize,
) -> Result<(), BoxError> {
    // 25 keys per batch keeps 1 MiB values under the batch size limit.
    for chunk in 0..LIST_SIZED_KEYS / 25 {
        let mutations = (chunk * 25..(chunk + 1) * 25)
            .map(|index| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(pb::PutRequest {
                    key: format!("{prefix}{index:04}"),
                    value: Some(pb::put_request::Value::Bytes(random_bytes(value_bytes))),
                    ..Default::default()
                })),
            })
            .collect();
        client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await?;
    }
    Ok(())
}

/// Prints the parameters of the run.
fn print_parameters(plan: &Plan, args: &Args, server: &RunningServer, data_dir: &Path) {
    let build = if cfg!(debug_assertions) {
        "debug: these numbers say nothing about the service; use `make bench` (release)"
    } else {
        "release"
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ops_note = if args.quick { " (--quick)" } else { "" };
    let pages = LIST_PAGES * LIST_PAGE_SIZE as u64;
    println!("tierkv-bench {}", env!("CARGO_PKG_VERSION"));
    println!("parameters:");
    println!("  build         {build}");
    println!(
        "  server        in-process on {}, data in {}",
        server.addr,
        data_dir.display()
    );
    println!("  runtime       tokio multi-thread, {workers} workers, shared by server and client");
    println!(
        "  sync_writes   {} (fsync the WAL before each acknowledgement)",
        args.sync_writes
    );
    println!("  ops           {}{ops_note}", plan.ops);
    println!(
        "  concurrency   {} requests in flight (tasks sharing one cloned client, one connection)",
        plan.concurrency
    );
    println!(
        "  health        {} Check RPCs (service {HEALTH_SERVICE:?}) after {} warm-up",
        plan.ops, plan.warmup
    );
    println!(
        "  put           {} RPCs, {SMALL_VALUE_BYTES}-byte text values, unique keys",
        plan.ops
    );
    println!("  get           {} RPCs, hits on the put keys", plan.ops);
    println!(
        "  session_*     {} SessionService Create RPCs, then {} Get and {} Touch RPCs of those sessions (touch within its interval)",
        plan.ops, plan.ops, plan.ops
    );
    println!(
        "  cache_memory  {} CacheService/Get RPCs from memory, {} keys put with CacheService/Put (memory TTL 1 h)",
        plan.ops, plan.ops
    );
    println!(
        "  cache_store   {} CacheService/Get RPCs from the store, {} keys put with a 1 ms memory TTL",
        plan.ops, plan.ops
    );
    println!(
        "  batch_get     {} RPCs x {BATCH_GET_KEYS} keys (hits on the put keys)",
        plan.batch_gets
    );
    println!(
        "  batch_write   {} RPCs x {BATCH_WRITE_PUTS} puts of {SMALL_VALUE_BYTES}-byte text, unique keys",
        plan.batch_writes
    );
    println!(
        "  list          {} RPCs, pages of {LIST_PAGE_SIZE} keys, cycling through {pages} keys",
        plan.lists
    );
    println!(
        "  list sized    {} RPCs each, first page of {LIST_SIZED_KEYS} keys with 10-byte values, then 1 MiB values",
        plan.lists * 2
    );
    println!(
        "  stall check   {} sequential health probes on a separate connection, idle, under {} concurrent {} MiB puts, under the same rate of rejected puts",
        plan.probes,
        plan.concurrency,
        BIG_VALUE_BYTES / (1024 * 1024)
    );
    println!();
}

/// Prints the benchmark table, with ratios against `baseline`.
fn print_table(baseline: &Stats, results: &[Stats]) {
    println!(
        "{:<15} {:>7} {:>10} {:>11} {:>9} {:>9}  {:<24} ops/s vs health",
        "name", "rpcs", "ops/s", "keys/s", "p50 us", "p99 us", "p50 vs health"
    );
    for stats in std::iter::once(baseline).chain(results) {
        let (latency, throughput) = if std::ptr::eq(stats, baseline) {
            ("(baseline)".to_string(), "(baseline)".to_string())
        } else {
            (
                format!(
                    "{:.1}x baseline latency",
                    stats.p50_us() / baseline.p50_us()
                ),
                format!(
                    "{:.2}x baseline throughput",
                    stats.ops_per_sec() / baseline.ops_per_sec()
                ),
            )
        };
        println!(
            "{:<15} {:>7} {:>10.0} {:>11.0} {:>9.1} {:>9.1}  {:<24} {}",
            stats.name,
            stats.rpcs,
            stats.ops_per_sec(),
            stats.keys_per_sec(),
            stats.p50_us(),
            stats.p99_us(),
            latency,
            throughput
        );
    }
    println!();
}

/// Prints the stall check.
fn print_stall(report: &StallReport) {
    let idle_p99 = percentile_us(&report.idle, 99.0);
    let stored_p99 = percentile_us(&report.stored.latencies, 99.0);
    let transport_p99 = percentile_us(&report.transport_only.latencies, 99.0);
    println!("runtime stall check (health Check, one probe at a time, own connection):");
    println!(
        "  {:<48} p50 {:>9.1} us   p99 {:>9.1} us",
        "idle",
        percentile_us(&report.idle, 50.0),
        idle_p99
    );
    for (label, loaded) in [
        (
            format!("under {} x 1 MiB puts, stored", report.writers),
            &report.stored,
        ),
        (
            "same rate of 1 MiB puts rejected before storage".to_string(),
            &report.transport_only,
        ),
    ] {
        println!(
            "  {:<48} p50 {:>9.1} us   p99 {:>9.1} us   ({} puts, {:.0} MiB/s during the probes; put p50 {:.1} us)",
            label,
            percentile_us(&loaded.latencies, 50.0),
            percentile_us(&loaded.latencies, 99.0),
            loaded.puts_during_probes,
            loaded.mib_per_sec(),
            percentile_us(&loaded.put_latencies, 50.0),
        );
    }
    println!(
        "  {:<48} {:.1}x",
        "p99 under stored puts / idle p99",
        stored_p99 / idle_p99
    );
    println!(
        "  {:<48} {:.1}x   (about 1x: storage adds no stall beyond moving the bytes)",
        "p99 under stored puts / rejected puts",
        stored_p99 / transport_p99
    );
}

/// Writes `count` small values under `prefix` with CacheService/Put and
/// `memory_ttl`, `concurrency` at a time.
async fn seed_cache(
    client: &CacheServiceClient<Channel>,
    prefix: &'static str,
    count: u64,
    memory_ttl: Duration,
    concurrency: usize,
) -> Result<(), BoxError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let mut client = client.clone();
        let next = Arc::clone(&next);
        tasks.spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= count {
                    return Ok::<_, BoxError>(());
                }
                client
                    .put(pb::CachePutRequest {
                        key: format!("{prefix}{index:08}"),
                        value: Some(pb::cache_put_request::Value::Text(
                            "v".repeat(SMALL_VALUE_BYTES),
                        )),
                        memory_ttl: Some(prost_types::Duration {
                            seconds: memory_ttl.as_secs() as i64,
                            nanos: memory_ttl.subsec_nanos() as i32,
                        }),
                        ..Default::default()
                    })
                    .await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    Ok(())
}

/// How CacheService/Get compares with the health check in one run.
struct CacheRatios {
    /// Summed ops/s from memory over the health runs'.
    memory: f64,
    /// Summed ops/s from the store over the health runs'.
    store: f64,
    /// Health's process CPU per RPC over memory's (both runs summed).
    memory_cpu: f64,
    /// Health's process CPU per RPC over the store's.
    store_cpu: f64,
}

/// The CacheService/Get benchmarks: from memory and from the store, between
/// two health runs; returns their results and the ratios.
async fn cache_benchmarks(
    plan: &Plan,
    channel: &Channel,
    health: &Workload,
) -> Result<(Vec<Stats>, CacheRatios), BoxError> {
    let cache = CacheServiceClient::new(channel.clone());
    seed_cache(
        &cache,
        CACHE_MEMORY_PREFIX,
        plan.ops,
        Duration::from_secs(3600),
        plan.concurrency,
    )
    .await?;
    seed_cache(
        &cache,
        CACHE_STORE_PREFIX,
        plan.ops,
        Duration::from_millis(1),
        plan.concurrency,
    )
    .await?;
    let memory = Workload::CacheGet {
        client: cache.clone(),
        prefix: CACHE_MEMORY_PREFIX,
        keyspace: plan.ops,
        tier: Some(pb::CacheTier::Memory),
    };
    let store = Workload::CacheGet {
        client: cache,
        prefix: CACHE_STORE_PREFIX,
        keyspace: plan.ops,
        tier: Some(pb::CacheTier::Store),
    };
    // Every memory key read once first: a Put whose fill lost a race (see
    // `cache::memory`) left its key to the first read to fill.
    let fill = Workload::CacheGet {
        client: CacheServiceClient::new(channel.clone()),
        prefix: CACHE_MEMORY_PREFIX,
        keyspace: plan.ops,
        tier: None,
    };
    run("warm-up", &fill, plan.ops, plan.concurrency).await?;
    run("warm-up", &memory, plan.warmup, plan.concurrency).await?;
    run("warm-up", &store, plan.warmup, plan.concurrency).await?;
    let health_first = run("health", health, plan.ops, plan.concurrency).await?;
    let memory_first = run("cache_memory", &memory, plan.ops, plan.concurrency).await?;
    let store_first = run("cache_store", &store, plan.ops, plan.concurrency).await?;
    let store_second = run("cache_store", &store, plan.ops, plan.concurrency).await?;
    let memory_second = run("cache_memory", &memory, plan.ops, plan.concurrency).await?;
    let health_second = run("health", health, plan.ops, plan.concurrency).await?;
    let health_ops = health_first.ops_per_sec() + health_second.ops_per_sec();
    let cpu = |first: &Stats, second: &Stats| first.cpu_us_per_rpc() + second.cpu_us_per_rpc();
    let health_cpu = cpu(&health_first, &health_second);
    let ratios = CacheRatios {
        memory: (memory_first.ops_per_sec() + memory_second.ops_per_sec()) / health_ops,
        store: (store_first.ops_per_sec() + store_second.ops_per_sec()) / health_ops,
        memory_cpu: health_cpu / cpu(&memory_first, &memory_second),
        store_cpu: health_cpu / cpu(&store_first, &store_second),
    };
    Ok((
        vec![
            health_first,
            memory_first,
            store_first,
            store_second,
            memory_second,
            health_second,
        ],
        ratios,
    ))
}

fn print_cache_ratios(ratios: &CacheRatios) {
    println!(
        "CacheService/Get from memory vs health (ops/s, both runs summed): {:.2}x (target >= 0.90x); process CPU per RPC: {:.2}x",
        ratios.memory, ratios.memory_cpu
    );
    println!(
        "CacheService/Get from the store vs health (ops/s, both runs summed): {:.2}x (target >= 0.85x); process CPU per RPC: {:.2}x",
        ratios.store, ratios.store_cpu
    );
}

/// Runs every benchmark against `server` (only the cache ones with `cache_only`).
async fn benchmarks(plan: &Plan, server: &RunningServer, cache_only: bool) -> Result<(), BoxError> {
    let channel = connect(&server.endpoint()).await?;
    let kv_channel = channel.clone();
    let mut kv = kv_client(channel.clone());
    let cache_channel = channel.clone();
    let health = Workload::Health(HealthClient::new(channel));

    run("warm-up", &health, plan.warmup, plan.concurrency).await?;
    let baseline = run("health", &health, plan.ops, plan.concurrency).await?;
    if cache_only {
        let (cache_results, cache_ratios) = cache_benchmarks(plan, &cache_channel, &health).await?;
        print_table(&baseline, &cache_results);
        print_cache_ratios(&cache_ratios);
        return Ok(());
    }

    let mut results = Vec::new();
    let put = Workload::Put(kv.clone());
    results.push(run("put", &put, plan.ops, plan.concurrency).await?);
    let sessions = SessionServiceClient::new(kv_channel.clone());
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let create = Workload::SessionCreate {
        client: sessions.clone(),
        tokens: Arc::clone(&tokens),
    };
    results.push(run("session_create", &create, plan.ops, plan.concurrency).await?);
    let tokens: Arc<Vec<String>> = Arc::new(
        tokens
            .lock()
            .map(|mut tokens| std::mem::take(&mut *tokens))
            .unwrap_or_default(),
    );
    let get = Workload::Get {
        client: kv.clone(),
        keyspace: plan.ops,
    };
    let session_get = Workload::SessionGet {
        client: sessions.clone(),
        tokens: Arc::clone(&tokens),
        touch: false,
    };
    // Warmed up, then interleaved as get, session_get, session_get, get, so
    // that both see the same machine and a drift of its load (other
    // processes, RocksDB still flushing the writes above) weighs on both
    // alike rather than on whichever always runs first.
    run("warm-up", &get, plan.warmup, plan.concurrency).await?;
    run("warm-up", &session_get, plan.warmup, plan.concurrency).await?;
    let kv_first = run("get", &get, plan.ops, plan.concurrency).await?;
    let session_first = run("session_get", &session_get, plan.ops, plan.concurrency).await?;
    let session_second = run("session_get", &session_get, plan.ops, plan.concurrency).await?;
    let kv_second = run("get", &get, plan.ops, plan.concurrency).await?;
    let session_ratio = (session_first.ops_per_sec() + session_second.ops_per_sec())
        / (kv_first.ops_per_sec() + kv_second.ops_per_sec());
    results.push(kv_first);
    results.push(session_first);
    results.push(session_second);
    results.push(kv_second);
    let session_touch = Workload::SessionGet {
        client: sessions,
        tokens,
        touch: true,
    };
    results.push(run("session_touch", &session_touch, plan.ops, plan.concurrency).await?);
    let (cache_results, cache_ratios) = cache_benchmarks(plan, &cache_channel, &health).await?;
    results.extend(cache_results);
    let batch_get = Workload::BatchGet {
        client: kv.clone(),
        keyspace: plan.ops,
    };
    results.push(run("batch_get", &batch_get, plan.batch_gets, plan.concurrency).await?);
    // Seeded early, so that flushing the 100 MiB of big values is over
    // before the listings that compare them run.
    seed_sized_keys(&mut kv, LIST_BIG_PREFIX, BIG_VALUE_BYTES).await?;
    seed_sized_keys(&mut kv, LIST_TINY_PREFIX, 10).await?;
    let batch_write = Workload::BatchWrite(kv.clone());
    results.push(
        run(
            "batch_write",
            &batch_write,
            plan.batch_writes,
            plan.concurrency,
        )
        .await?,
    );
    seed_list_keys(&mut kv).await?;
    let list = Workload::List {
        client: kv.clone(),
        page_token: String::new(),
    };
    results.push(run("list", &list, plan.lists, plan.concurrency).await?);
    let sized_lists = plan.lists * 2;
    let list_tiny = Workload::ListFirstPage {
        client: kv.clone(),
        prefix: LIST_TINY_PREFIX,
    };
    let list_big = Workload::ListFirstPage {
        client: kv.clone(),
        prefix: LIST_BIG_PREFIX,
    };
    let tiny = run("list100_10B", &list_tiny, sized_lists, plan.concurrency).await?;
    let big = run("list100_1MiB", &list_big, sized_lists, plan.concurrency).await?;
    let list_ratio = big.p50_us() / tiny.p50_us();
    results.push(tiny);
    results.push(big);
    print_table(&baseline, &results);
    println!(
        "List of {LIST_SIZED_KEYS} keys with 1 MiB values vs 10-byte values: {list_ratio:.2}x the p50 latency"
    );
    println!(
        "SessionService/Get vs KvService/Get (ops/s, both runs summed): {session_ratio:.2}x (target >= 0.85x)"
    );
    print_cache_ratios(&cache_ratios);
    println!();

    let report = stall_check(&server.endpoint(), &kv, plan.concurrency, plan.probes).await?;
    print_stall(&report);
    Ok(())
}

/// A directory under the system temp dir, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Creates a directory with a name no other run uses.
    fn create() -> std::io::Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos());
        let path =
            std::env::temp_dir().join(format!("tierkv-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&path)?;
        Ok(Self(path))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(error) = std::fs::remove_dir_all(&self.0) {
            eprintln!(
                "tierkv-bench: could not remove {}: {error}",
                self.0.display()
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let plan = Plan::new(&args);
    let scratch = ScratchDir::create()?;
    if args.list_tombstones {
        return list_tombstones(&scratch.0);
    }
    if args.storage_floor {
        return storage_floor(&scratch.0, plan.ops.max(100_000)).await;
    }
    let data_dir = scratch.0.join("data");
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: data_dir.clone(),
        shutdown_grace_ms: 2_000,
        sync_writes: args.sync_writes,
        // Metrics stay on (their layer is part of every call's cost), on a
        // free port so that a running server's 9090 does not stop the bench.
        metrics_listen: "127.0.0.1:0".to_string(),
        ..Default::default()
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let started = Instant::now();
    let server = RunningServer::start(config, clock).await?;
    print_parameters(&plan, &args, &server, &data_dir);

    let outcome = benchmarks(&plan, &server, args.cache_only).await;
    // Stop (and flush) before the directory goes, whatever happened.
    let stopped = server.stop().await;
    outcome?;
    stopped?;
    println!();
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    drop(scratch);
    Ok(())
}

/// CPU time the calling thread has used (user + system).
fn thread_cpu() -> Duration {
    rusage_cpu(libc::RUSAGE_THREAD)
}

fn rusage_cpu(who: libc::c_int) -> Duration {
    // SAFETY: getrusage only writes into the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let micros = |tv: libc::timeval| tv.tv_sec as u64 * 1_000_000 + tv.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// The storage floor of a small put (`--storage-floor`): what a put costs in
/// CPU below gRPC, to set against the server's CPU per `Put` beyond a health
/// check. Prints CPU µs per put.
async fn storage_floor(dir: &Path, ops: u64) -> Result<(), BoxError> {
    use rocksdb::{ColumnFamilyDescriptor, Options, WriteBatch, WriteOptions, DB};
    use tierkv::engine::{Engine, Namespaces, Precondition, PutOp, RocksEngine, WriteOp};

    // 1. Raw RocksDB, shaped like one engine commit: per put a record head in
    // the namespace's column family and a delete in the values column family,
    // per group the version counter and the change sequence.
    let raw_dir = dir.join("raw");
    let mut options = Options::default();
    options.create_if_missing(true);
    options.create_missing_column_families(true);
    let families =
        ["ns", "values", "meta"].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&options, &raw_dir, families)?;
    let (ns, values, meta) = (
        db.cf_handle("ns").ok_or("no cf")?,
        db.cf_handle("values").ok_or("no cf")?,
        db.cf_handle("meta").ok_or("no cf")?,
    );
    let head = [7u8; 40];
    let write_options = WriteOptions::default();
    println!("storage floor: CPU µs per small put, {ops} puts");
    for group in [1u64, 16, 64] {
        let started = process_cpu();
        let started_thread = thread_cpu();
        let wall = Instant::now();
        let mut key = 0u64;
        while key < ops {
            let mut batch = WriteBatch::default();
            for _ in 0..group {
                let name = format!("bench:{}", key % 1000);
                batch.put_cf(&ns, name.as_bytes(), head);
                batch.delete_cf(&values, name.as_bytes());
                key += 1;
            }
            batch.put_cf(&meta, b"version", key.to_le_bytes());
            batch.put_cf(&meta, b"sequence", key.to_le_bytes());
            db.write_opt(batch, &write_options)?;
        }
        let cpu = process_cpu() - started;
        let foreground = thread_cpu() - started_thread;
        println!(
            "  raw WriteBatch + WAL, {group:>2} puts per batch: {:6.2} µs CPU/put, {:5.2} of it on the writing thread ({:.0} puts/s)",
            cpu.as_secs_f64() * 1e6 / ops as f64,
            foreground.as_secs_f64() * 1e6 / ops as f64,
            ops as f64 / wall.elapsed().as_secs_f64()
        );
    }
    drop(db);

    // 2. The engine, through `Engine::write`, 256 writers at once as in the
    // h2load runs (16 connections x 16 streams).
    let engine = RocksEngine::open(
        dir.join("engine"),
        Namespaces::new(Vec::<String>::new()),
        Default::default(),
        Arc::new(SystemClock),
    )?;
    let engine = Arc::new(engine);
    let writers = 256u64;
    let started = process_cpu();
    let wall = Instant::now();
    let mut tasks = JoinSet::new();
    for writer in 0..writers {
        let engine = Arc::clone(&engine);
        let per_writer = ops / writers;
        tasks.spawn(async move {
            for i in 0..per_writer {
                let op = WriteOp::Put(PutOp {
                    key: format!("bench:{}", (writer * 7 + i) % 1000),
                    kind: tierkv::engine::ValueKind::Json,
                    value: br#"{"user":"adam"}"#.to_vec(),
                    metadata: None,
                    expire_at_millis: None,
                    schema_version: 1,
                    precondition: Precondition::None,
                });
                engine.write(vec![op]).await?;
            }
            Ok::<_, tierkv::engine::EngineError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let done = (ops / writers) * writers;
    let cpu = process_cpu() - started;
    println!(
        "  Engine::write, {writers} concurrent writers: {:6.2} µs CPU/put ({:.0} puts/s)",
        cpu.as_secs_f64() * 1e6 / done as f64,
        done as f64 / wall.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--list-tombstones`: the time of one seek to the first live key behind N
/// deleted keys, in the memtable, right after a flush, and a few seconds
/// later (once the compact-on-deletion collector's compaction has had time
/// to run), with and without the collector.
fn list_tombstones(dir: &Path) -> Result<(), BoxError> {
    use rocksdb::{Options, ReadOptions, WriteBatch, DB};

    println!("seek over N deleted keys to the one live key behind them (ms)");
    println!(
        "{:>9} {:>10} {:>9} {:>12} {:>12}",
        "N", "collector", "memtable", "after flush", "after 5 s"
    );
    for deleted in [10_000u64, 100_000, 1_000_000] {
        for collector in [false, true] {
            let path = dir.join(format!("tomb-{deleted}-{collector}"));
            let mut options = Options::default();
            options.create_if_missing(true);
            if collector {
                options.add_compact_on_deletion_collector_factory(10_000, 5_000, 0.5);
            }
            let db = DB::open(&options, &path)?;
            for chunk in (0..deleted).collect::<Vec<_>>().chunks(10_000) {
                let mut batch = WriteBatch::default();
                for i in chunk {
                    batch.put(format!("t:{i:09}"), [1u8; 40]);
                }
                db.write(batch)?;
            }
            for chunk in (0..deleted).collect::<Vec<_>>().chunks(10_000) {
                let mut batch = WriteBatch::default();
                for i in chunk {
                    batch.delete(format!("t:{i:09}"));
                }
                db.write(batch)?;
            }
            db.put("t:zzz", [1u8; 40])?;
            let seek = |db: &DB| -> Result<f64, BoxError> {
                let started = Instant::now();
                let mut iter = db.raw_iterator_opt(ReadOptions::default());
                iter.seek(b"t:");
                iter.status()?;
                if iter.key() != Some(&b"t:zzz"[..]) {
                    return Err("the seek did not reach the live key".into());
                }
                Ok(started.elapsed().as_secs_f64() * 1e3)
            };
            let in_memtable = seek(&db)?;
            db.flush()?;
            let after_flush = seek(&db)?;
            std::thread::sleep(Duration::from_secs(5));
            let later = seek(&db)?;
            println!(
                "{deleted:>9} {:>10} {in_memtable:>9.2} {after_flush:>12.2} {later:>12.2}",
                if collector { "yes" } else { "no" }
            );
            drop(db);
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    Ok(())
}
