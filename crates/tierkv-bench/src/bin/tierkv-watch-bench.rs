//! `tierkv-watch-bench`: what `KvService.Watch` costs writers, how fast it
//! delivers, and how fast it replays history.
//!
//! # What it measures
//!
//! It starts the real server in this process (`127.0.0.1:0`, a fresh RocksDB
//! directory under the system temp dir) and talks to it over TCP with the
//! generated client, like `tierkv-bench`.
//!
//! 1. **Put throughput with 0, 10 and 100 watchers** on the written prefix
//!    (`--watchers`), as ratios to 0 watchers. Each run writes `--ops` Puts of
//!    100-byte text values to unique keys under a prefix of its own, with
//!    `--concurrency` in flight on one connection; the watchers (8 per
//!    connection, the server's default stream limit per connection) watch
//!    that prefix without values and must each receive every event. Runs
//!    interleave over `--rounds` rounds (0, 10, 100, 0, 10, 100, …) so slow
//!    drifts of the machine hit every count alike; the median per count is
//!    reported. Watchers are clients in the same process: their reading
//!    shares the machine's cores with the server and the writers. To keep
//!    that cost honest but small, a watcher does not decode responses into
//!    the generated types: it walks the protobuf wire format of each
//!    response (`walk_events`) and reads only each event's key and version.
//!    It still checks that every event arrives **exactly once**: each Put's
//!    key is marked when its event arrives, and a second event of a key, or
//!    one of an unknown key, fails the run (a run ends when every key was
//!    seen, so none is missing).
//! 2. **Delivery latency**, p50 and p99, from the moment the writer sent the
//!    Put to the moment a watcher received its event (so it includes the
//!    Put's own way to the commit; the Put's p50 is printed beside it), over
//!    every event of every watcher of the runs above.
//! 3. **Replay speed from history**: `--replay` events written in
//!    BatchWrites of 1000, then one watcher resumes from the position a List
//!    reported before them and receives them all, without and with values;
//!    events per second.
//!
//! # How to run it
//!
//! ```text
//! cargo run --release --locked -p tierkv-bench --bin tierkv-watch-bench
//! cargo run --release --locked -p tierkv-bench --bin tierkv-watch-bench -- --ops 5000 --rounds 1
//! SCENARIO=watch scripts/bench-h2load.sh   # writers through h2load, watchers held by --attach
//! ```

#![warn(missing_docs)]

use std::error::Error;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tierkv::clock::{SharedClock, SystemClock};
use tierkv::config::Config;
use tierkv::server::message_limits::MAX_MESSAGE_BYTES;
use tierkv::server::RunningServer;
use tierkv_client::proto::v1 as pb;
use tierkv_client::proto::v1::kv_service_client::KvServiceClient;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn Error + Send + Sync>;

/// Watch streams per connection (the server's default limit).
const WATCHERS_PER_CONNECTION: usize = 8;
/// Puts per BatchWrite when filling the history for the replay.
const REPLAY_BATCH: u64 = 1000;
/// Longest a run may take before the benchmark gives up.
const RUN_DEADLINE: Duration = Duration::from_secs(300);

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "Watch benchmark: Put throughput with watchers, delivery latency, replay speed")]
struct Args {
    /// Puts per run.
    #[arg(long, default_value_t = 20_000)]
    ops: u64,
    /// Puts in flight.
    #[arg(long, default_value_t = 32)]
    concurrency: u64,
    /// Watcher counts to compare (the first is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "0,10,100")]
    watchers: Vec<usize>,
    /// Interleaved rounds over the watcher counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Events written, then replayed from history.
    #[arg(long, default_value_t = 200_000)]
    replay: u64,
    /// Open the store with `sync_writes`.
    #[arg(long)]
    sync_writes: bool,
    /// Instead of benchmarking: hold `--hold` watchers on `--prefix` against
    /// a running server at this endpoint (`http://127.0.0.1:PORT`), print
    /// `watching N` once every stream is open, count their events, and print
    /// `received E events` at SIGTERM or Ctrl-C (scripts/bench-h2load.sh
    /// SCENARIO=watch).
    #[arg(long)]
    attach: Option<String>,
    /// Watchers to hold with `--attach`.
    #[arg(long, default_value_t = 10)]
    hold: usize,
    /// Prefix the held watchers watch.
    #[arg(long, default_value = "bench:")]
    prefix: String,
}

/// `--attach`: holds watchers and counts their events until told to stop.
async fn hold(endpoint: &str, watchers: usize, prefix: &str) -> Result<(), BoxError> {
    let received = Arc::new(AtomicU64::new(0));
    // Events whose version was not the previous event's + 1 (h2load writes
    // one key over and over: each stream must see each version once, in
    // order).
    let out_of_order = Arc::new(AtomicU64::new(0));
    let responses = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    let mut connection = None;
    for n in 0..watchers {
        if n % WATCHERS_PER_CONNECTION == 0 {
            connection = Some(connect_channel(endpoint).await?);
        }
        let channel = connection.clone().ok_or("no connection")?;
        streams.push(
            watch_raw(
                channel,
                pb::WatchRequest {
                    prefix: prefix.to_string(),
                    ..Default::default()
                },
            )
            .await?,
        );
    }
    println!("watching {watchers}");
    let mut tasks = JoinSet::new();
    for mut stream in streams {
        let received = Arc::clone(&received);
        let out_of_order = Arc::clone(&out_of_order);
        let responses = Arc::clone(&responses);
        tasks.spawn(async move {
            let mut last: std::collections::HashMap<Vec<u8>, u64> = Default::default();
            while let Ok(Some(response)) = stream.message().await {
                let mut count = 0;
                let walked = walk_events(&response, |key, version| {
                    count += 1;
                    // Allocates only for a key not seen before.
                    match last.get_mut(key) {
                        Some(previous) => {
                            if version != *previous + 1 {
                                out_of_order.fetch_add(1, Ordering::Relaxed);
                            }
                            *previous = version;
                        }
                        None => {
                            last.insert(key.to_vec(), version);
                        }
                    }
                });
                responses.fetch_add(1, Ordering::Relaxed);
                if walked.is_err() {
                    out_of_order.fetch_add(1, Ordering::Relaxed);
                }
                received.fetch_add(count, Ordering::Relaxed);
            }
        });
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        _ = async { while tasks.join_next().await.is_some() {} } => {
            println!("every watch stream ended");
        }
    }
    println!("received {} events", received.load(Ordering::Relaxed));
    println!("in {} responses", responses.load(Ordering::Relaxed));
    println!(
        "events out of order, repeated or missing between two received: {}",
        out_of_order.load(Ordering::Relaxed)
    );
    Ok(())
}

/// A connection for watch streams.
async fn connect_channel(endpoint: &str) -> Result<Channel, BoxError> {
    Ok(Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?)
}

/// Opens a Watch whose responses arrive as their encoded bytes (for
/// [`walk_events`]) instead of decoded messages.
async fn watch_raw(
    channel: Channel,
    request: pb::WatchRequest,
) -> Result<tonic::Streaming<bytes::Bytes>, BoxError> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    grpc.ready().await?;
    let path = http::uri::PathAndQuery::from_static("/tierkv.v1.KvService/Watch");
    Ok(grpc
        .server_streaming(tonic::Request::new(request), path, RawCodec)
        .await?
        .into_inner())
}

/// Encodes requests like the generated client; hands responses over as bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = pb::WatchRequest;
    type Decode = bytes::Bytes;
    type Encoder =
        <tierkv_client::codec::TierkvCodec<pb::WatchRequest, pb::WatchResponse> as Codec>::Encoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        tierkv_client::codec::TierkvCodec::<pb::WatchRequest, pb::WatchResponse>::default()
            .encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

/// A message's bytes, as they came.
#[derive(Debug, Clone, Copy, Default)]
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf as _;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// Reads a varint at the front of `buf`.
fn varint(buf: &mut &[u8]) -> Result<u64, BoxError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("truncated varint")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("overlong varint".into())
}

/// Splits off `len` bytes at the front of `buf`.
fn take<'a>(buf: &mut &'a [u8], len: u64) -> Result<&'a [u8], BoxError> {
    let len = usize::try_from(len)?;
    if len > buf.len() {
        return Err("truncated field".into());
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    Ok(head)
}

/// Walks the fields of one message: `field(number, wire type, body)` for
/// each length-delimited field and each varint (its value in `body`'s place
/// as `Err(value)`); other wire types are skipped.
fn fields<'a>(
    mut buf: &'a [u8],
    mut field: impl FnMut(u64, Result<&'a [u8], u64>) -> Result<(), BoxError>,
) -> Result<(), BoxError> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        match key & 7 {
            0 => field(key >> 3, Err(varint(&mut buf)?))?,
            1 => drop(take(&mut buf, 8)?),
            2 => {
                let len = varint(&mut buf)?;
                field(key >> 3, Ok(take(&mut buf, len)?))?;
            }
            5 => drop(take(&mut buf, 4)?),
            other => return Err(format!("wire type {other}").into()),
        }
    }
    Ok(())
}

/// Calls `each(key, version)` for every event of one encoded
/// `WatchResponse` (`events` = 1 → `WatchEvents.events` = 1 → `WatchEvent`
/// `key` = 1, `version` = 3), reading nothing else of it.
fn walk_events(response: &[u8], mut each: impl FnMut(&[u8], u64)) -> Result<(), BoxError> {
    fields(response, |number, body| {
        let (1, Ok(events)) = (number, body) else {
            return Ok(());
        };
        fields(events, |number, body| {
            let (1, Ok(event)) = (number, body) else {
                return Ok(());
            };
            let (mut key, mut version) = (&[][..], 0);
            fields(event, |number, body| {
                match (number, body) {
                    (1, Ok(bytes)) => key = bytes,
                    (3, Err(value)) => version = value,
                    _ => {}
                }
                Ok(())
            })?;
            each(key, version);
            Ok(())
        })
    })
}

async fn connect(endpoint: &str) -> Result<KvServiceClient<Channel>, BoxError> {
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(KvServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

fn put_request(key: String, text: String) -> pb::PutRequest {
    pb::PutRequest {
        key,
        value: Some(pb::put_request::Value::Text(text)),
        ..Default::default()
    }
}

/// What one run measured.
struct Run {
    puts_per_sec: f64,
    put_latencies_us: Vec<u64>,
    delivery_us: Vec<u64>,
}

/// Microseconds since `base`.
fn micros(base: Instant) -> u64 {
    base.elapsed().as_micros() as u64
}

/// One watcher: waits for the marker, reports ready, then counts `expected`
/// data events, recording each one's delay since its Put was sent.
async fn watch(
    channel: Channel,
    prefix: String,
    expected: u64,
    sent: Arc<Vec<AtomicU64>>,
    base: Instant,
    ready: mpsc::UnboundedSender<()>,
) -> Result<Vec<u64>, BoxError> {
    let mut stream = watch_raw(
        channel,
        pb::WatchRequest {
            prefix: prefix.clone(),
            ..Default::default()
        },
    )
    .await?;
    let mut delays = Vec::with_capacity(expected as usize);
    // Each key's event must arrive once: a repeat fails the run, and the
    // run ends only when every key arrived.
    let mut seen = vec![false; sent.len()];
    let mut is_ready = false;
    while (delays.len() as u64) < expected {
        let Some(response) = stream.message().await? else {
            return Err("the watch stream ended".into());
        };
        let now = micros(base);
        let mut failure = None;
        walk_events(&response, |key, _version| {
            let Some(suffix) = key.get(prefix.len()..) else {
                failure = Some("an event of another prefix".to_string());
                return;
            };
            if suffix.starts_with(b"marker") {
                if !is_ready {
                    is_ready = true;
                    let _ = ready.send(());
                }
                return;
            }
            let index = std::str::from_utf8(suffix)
                .ok()
                .and_then(|text| text.parse::<usize>().ok())
                .filter(|index| *index < seen.len());
            match index {
                Some(index) if !seen[index] => {
                    seen[index] = true;
                    delays.push(now.saturating_sub(sent[index].load(Ordering::Acquire)));
                }
                Some(index) => failure = Some(format!("event {index} arrived twice")),
                None => failure = Some(format!("an unexpected key {key:?}")),
            }
        })?;
        if let Some(failure) = failure {
            return Err(failure.into());
        }
    }
    Ok(delays)
}

/// One throughput run with `watchers` watchers on a fresh prefix.
async fn run(
    endpoint: &str,
    args: &Args,
    watchers: usize,
    prefix: String,
) -> Result<Run, BoxError> {
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..args.ops).map(|_| AtomicU64::new(0)).collect());
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel();
    let mut watching = JoinSet::new();
    let mut connection = None;
    for n in 0..watchers {
        if n % WATCHERS_PER_CONNECTION == 0 {
            connection = Some(connect_channel(endpoint).await?);
        }
        let channel = connection.clone().ok_or("no connection")?;
        watching.spawn(watch(
            channel,
            prefix.clone(),
            args.ops,
            Arc::clone(&sent),
            base,
            ready_tx.clone(),
        ));
    }
    let mut writer = connect(endpoint).await?;
    // Markers until every watcher has one: a stream counts from its start.
    let mut ready = 0;
    let mut marker = 0;
    while ready < watchers {
        writer
            .put(put_request(format!("{prefix}marker{marker}"), "m".into()))
            .await?;
        marker += 1;
        let wait = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                Some(()) = ready_rx.recv() => { ready += 1; if ready == watchers { break; } }
                _ = &mut wait => break,
            }
        }
    }

    let value = "v".repeat(100);
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut writers = JoinSet::new();
    for _ in 0..args.concurrency {
        let mut client = writer.clone();
        let (next, sent, prefix, value, ops) = (
            Arc::clone(&next),
            Arc::clone(&sent),
            prefix.clone(),
            value.clone(),
            args.ops,
        );
        writers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= ops {
                    return Ok::<_, BoxError>(latencies);
                }
                let request = put_request(format!("{prefix}{index:09}"), value.clone());
                sent[index as usize].store(micros(base), Ordering::Release);
                let start = Instant::now();
                client.put(request).await?;
                latencies.push(start.elapsed().as_micros() as u64);
            }
        });
    }
    let mut put_latencies_us = Vec::with_capacity(args.ops as usize);
    while let Some(done) = writers.join_next().await {
        put_latencies_us.extend(done??);
    }
    let elapsed = started.elapsed();
    let mut delivery_us = Vec::new();
    let deadline = tokio::time::Instant::now() + RUN_DEADLINE;
    while let Some(done) = tokio::time::timeout_at(deadline, watching.join_next())
        .await
        .map_err(|_| "watchers did not receive every event in time")?
    {
        delivery_us.extend(done??);
    }
    put_latencies_us.sort_unstable();
    delivery_us.sort_unstable();
    Ok(Run {
        puts_per_sec: args.ops as f64 / elapsed.as_secs_f64(),
        put_latencies_us,
        delivery_us,
    })
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Writes `events` events in BatchWrites, then replays them from history.
async fn replay(endpoint: &str, events: u64, include_values: bool) -> Result<f64, BoxError> {
    let mut client = connect(endpoint).await?;
    let prefix = format!("bench/replay/{include_values}/");
    let position = client
        .list(pb::ListRequest {
            prefix: prefix.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .position;
    let value = "r".repeat(100);
    for batch in 0..events.div_ceil(REPLAY_BATCH) {
        let mutations = (0..REPLAY_BATCH.min(events - batch * REPLAY_BATCH))
            .map(|n| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(put_request(
                    format!("{prefix}{:09}", batch * REPLAY_BATCH + n),
                    value.clone(),
                ))),
            })
            .collect();
        client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await?;
    }
    let started = Instant::now();
    let mut stream = client
        .watch(pb::WatchRequest {
            prefix,
            start_after: Some(position),
            include_values,
            progress_interval: None,
        })
        .await?
        .into_inner();
    let mut received = 0;
    while received < events {
        let Some(response) = stream.message().await? else {
            return Err("the replay stream ended".into());
        };
        if let Some(pb::watch_response::Kind::Events(batch)) = response.kind {
            if include_values && batch.events.iter().any(|event| event.value.is_none()) {
                return Err("a replayed event came without its value".into());
            }
            received += batch.events.len() as u64;
        }
    }
    Ok(events as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    if let Some(endpoint) = &args.attach {
        return hold(endpoint, args.hold, &args.prefix).await;
    }
    let scratch: PathBuf =
        std::env::temp_dir().join(format!("tierkv-watch-bench-{}", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: scratch.join("data"),
        shutdown_grace_ms: 2_000,
        sync_writes: args.sync_writes,
        metrics_listen: "127.0.0.1:0".to_string(),
        ..Default::default()
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let server = RunningServer::start(config, clock).await?;
    let endpoint = server.endpoint();
    println!(
        "tierkv-watch-bench: {} puts per run, {} in flight, watchers {:?}, {} rounds, {} replayed \
         events, sync_writes={}, {} CPUs",
        args.ops,
        args.concurrency,
        args.watchers,
        args.rounds,
        args.replay,
        args.sync_writes,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let outcome = async {
        let mut throughput: Vec<Vec<f64>> = vec![Vec::new(); args.watchers.len()];
        let mut put_us: Vec<Vec<u64>> = vec![Vec::new(); args.watchers.len()];
        let mut delivery: Vec<Vec<u64>> = vec![Vec::new(); args.watchers.len()];
        for round in 0..args.rounds {
            for (slot, watchers) in args.watchers.iter().enumerate() {
                let prefix = format!("bench/watch/{round}/{watchers}/");
                let result = run(&endpoint, &args, *watchers, prefix).await?;
                println!(
                    "round {round}: {watchers:>4} watchers: {:>8.0} puts/s, put p50 {} us, delivery \
                     p50 {} us p99 {} us",
                    result.puts_per_sec,
                    percentile(&result.put_latencies_us, 0.5),
                    percentile(&result.delivery_us, 0.5),
                    percentile(&result.delivery_us, 0.99),
                );
                throughput[slot].push(result.puts_per_sec);
                put_us[slot].extend(result.put_latencies_us);
                delivery[slot].extend(result.delivery_us);
            }
        }
        println!();
        println!(
            "{:>9} {:>10} {:>8} {:>12} {:>15} {:>15}",
            "watchers", "puts/s", "ratio", "put p50 us", "deliver p50 us", "deliver p99 us"
        );
        let baseline = median(&mut throughput[0].clone());
        for (slot, watchers) in args.watchers.iter().enumerate() {
            let puts = median(&mut throughput[slot]);
            put_us[slot].sort_unstable();
            delivery[slot].sort_unstable();
            let (p50, p99) = if *watchers == 0 {
                ("-".to_string(), "-".to_string())
            } else {
                (
                    percentile(&delivery[slot], 0.5).to_string(),
                    percentile(&delivery[slot], 0.99).to_string(),
                )
            };
            println!(
                "{watchers:>9} {puts:>10.0} {:>7.2}x {:>12} {p50:>15} {p99:>15}",
                puts / baseline,
                percentile(&put_us[slot], 0.5),
            );
        }
        println!();
        for include_values in [false, true] {
            let rate = replay(&endpoint, args.replay, include_values).await?;
            println!(
                "replay of {} events from history, include_values={include_values}: {rate:.0} events/s",
                args.replay
            );
        }
        Ok::<_, BoxError>(())
    }
    .await;
    let stopped = server.stop().await;
    let _ = std::fs::remove_dir_all(&scratch);
    outcome?;
    stopped?;
    Ok(())
}
