//! `tierkv-replica-bench`: the cross-replica invalidation delay of two
//! tierkv servers over one etcd cluster.
//!
//! # What it measures
//!
//! How long replica B's cache memory tier keeps serving a value after a
//! `CacheService.Put` of the same key through replica A replaced it: the
//! invalidation itself, as a client of B sees it, not a proxy for it. Each
//! sample:
//! 1. writes the old value through B and reads it back from B until B
//!    answers it from its memory tier (`CacheTier::Memory`), so B holds the
//!    copy that must be dropped;
//! 2. starts a poller that sends `CacheService.Get` of the key to B back to
//!    back on its own connection, and lets it read the old value once;
//! 3. sends the new value's Put through A, noting when it was sent and when
//!    A acknowledged it;
//! 4. the poller stops at the first Get that does not answer the old value;
//!    the moment that Get was **sent** is when B had stopped serving the old
//!    value (the Get before it was answered with the old value just before:
//!    the measure is exact to one Get round trip, printed beside it).
//!
//! It reports p50, p90, p99 and the maximum of the delay from A's
//! acknowledgement (how long after a write returned a stale read of B was
//! still possible; negative when B dropped the copy before the writer saw
//! A's answer) and from the Put's sending (which includes the Put's commit
//! in etcd), and the Put's own latency for scale. Any answer from B other
//! than the old or the new value fails the benchmark.
//!
//! B learns of A's write only through its engine's change feed (an etcd
//! watch on the feed record): so this is the feed's delay from etcd's
//! commit to B's memory tier, plus A's acknowledgement path.
//!
//! # How to run it
//!
//! ```text
//! SCENARIO=etcd scripts/bench-h2load.sh     # starts etcd, two servers, and runs this after h2load
//! tierkv-replica-bench --a http://127.0.0.1:PORT_A --b http://127.0.0.1:PORT_B --samples 500
//! ```

#![warn(missing_docs)]

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tierkv_client::proto::v1 as pb;
use tierkv_client::proto::v1::cache_service_client::CacheServiceClient;
use tonic::transport::{Channel, Endpoint};

type BoxError = Box<dyn Error + Send + Sync>;

/// Longest one sample may wait for B to drop the old value before the
/// benchmark fails (the feed is broken, not slow, past this).
const SAMPLE_DEADLINE: Duration = Duration::from_secs(30);

/// Command-line arguments.
#[derive(Parser, Debug)]
#[command(about = "Cross-replica cache invalidation delay: a Put through A, polled on B")]
struct Args {
    /// Replica A (`http://127.0.0.1:PORT`), which takes the writes.
    #[arg(long)]
    a: String,
    /// Replica B (`http://127.0.0.1:PORT`), whose memory tier is polled.
    #[arg(long)]
    b: String,
    /// Samples (one write through A each).
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// The cache key written and polled.
    #[arg(long, default_value = "cache:bench:invalidation")]
    key: String,
    /// Pause between samples, in milliseconds (so that samples do not run
    /// in lockstep with the feed).
    #[arg(long, default_value_t = 5)]
    pause_ms: u64,
}

async fn connect(endpoint: &str) -> Result<CacheServiceClient<Channel>, BoxError> {
    let channel = Endpoint::from_shared(endpoint.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(CacheServiceClient::new(channel))
}

fn put(key: &str, text: &str) -> pb::CachePutRequest {
    pb::CachePutRequest {
        key: key.to_string(),
        value: Some(pb::cache_put_request::Value::Text(text.to_string())),
        // Far longer than a run: only the feed can drop B's copy.
        memory_ttl: Some(prost_types::Duration {
            seconds: 3600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The text and tier of a Get of `key`.
async fn get(
    client: &mut CacheServiceClient<Channel>,
    key: &str,
) -> Result<(Option<String>, i32), BoxError> {
    let reply = client
        .get(pb::CacheGetRequest {
            key: key.to_string(),
            r#type: 0,
        })
        .await?
        .into_inner();
    let text = match reply.value {
        Some(pb::cache_get_response::Value::Text(text)) => Some(text),
        _ => None,
    };
    Ok((text, reply.tier))
}

/// What the poller saw: when the first fresh Get was sent, how many Gets
/// answered the old value, and the round trips of those Gets.
struct Polled {
    fresh_sent: Instant,
    stale_reads: usize,
    round_trips_us: Vec<u64>,
}

/// Sends Gets of `key` to B back to back until one does not answer `old`;
/// `started` is set once a Get answered `old` (the poller is running).
async fn poll(
    mut client: CacheServiceClient<Channel>,
    key: String,
    old: String,
    new: String,
    started: Arc<AtomicBool>,
) -> Result<Polled, BoxError> {
    let deadline = Instant::now() + SAMPLE_DEADLINE;
    let mut stale_reads = 0;
    let mut round_trips_us = Vec::new();
    loop {
        let sent = Instant::now();
        let (text, _) = get(&mut client, &key).await?;
        round_trips_us.push(sent.elapsed().as_micros() as u64);
        match text {
            Some(text) if text == old => {
                stale_reads += 1;
                started.store(true, Ordering::Release);
            }
            Some(text) if text == new => {
                if stale_reads == 0 {
                    return Err("the poller's first Get already answered the new value".into());
                }
                return Ok(Polled {
                    fresh_sent: sent,
                    stale_reads,
                    round_trips_us,
                });
            }
            other => {
                return Err(format!("B answered {other:?}, neither {old:?} nor {new:?}").into())
            }
        }
        if Instant::now() > deadline {
            return Err(format!("B still served the old value after {SAMPLE_DEADLINE:?}").into());
        }
    }
}

/// The value at quantile `q` of sorted `values`.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}

fn summary(name: &str, values: &mut [i64]) {
    values.sort_unstable();
    println!(
        "{name:<44} p50 {:>7} us  p90 {:>7} us  p99 {:>7} us  max {:>7} us",
        quantile(values, 0.5),
        quantile(values, 0.9),
        quantile(values, 0.99),
        values.last().copied().unwrap_or(0)
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let mut on_a = connect(&args.a).await?;
    let mut on_b = connect(&args.b).await?;
    let mut from_ack = Vec::with_capacity(args.samples);
    let mut from_send = Vec::with_capacity(args.samples);
    let mut put_latency = Vec::with_capacity(args.samples);
    let mut round_trips = Vec::new();
    let mut stale_after_ack = 0usize;
    let run = Instant::now();
    for sample in 0..args.samples {
        let old = format!("old-{sample}");
        let new = format!("new-{sample}");
        on_b.put(put(&args.key, &old)).await?;
        let deadline = Instant::now() + SAMPLE_DEADLINE;
        // B's own write is read back at once; wait until it is a memory hit.
        loop {
            let (text, tier) = get(&mut on_b, &args.key).await?;
            if text.as_deref() == Some(old.as_str()) && tier == pb::CacheTier::Memory as i32 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("B never served {old:?} from memory (last {text:?})").into());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The poller runs on a connection of its own, so that its Gets never
        // wait behind the Put.
        let poller_client = connect(&args.b).await?;
        let started = Arc::new(AtomicBool::new(false));
        let poller = tokio::spawn(poll(
            poller_client,
            args.key.clone(),
            old.clone(),
            new.clone(),
            Arc::clone(&started),
        ));
        while !started.load(Ordering::Acquire) {
            if poller.is_finished() {
                break;
            }
            tokio::task::yield_now().await;
        }
        let sent = Instant::now();
        on_a.put(put(&args.key, &new)).await?;
        let acknowledged = Instant::now();
        let polled = poller.await??;
        let signed_micros = |from: Instant| -> i64 {
            if polled.fresh_sent >= from {
                polled.fresh_sent.duration_since(from).as_micros() as i64
            } else {
                -(from.duration_since(polled.fresh_sent).as_micros() as i64)
            }
        };
        let after_ack = signed_micros(acknowledged);
        if after_ack > 0 {
            stale_after_ack += 1;
        }
        from_ack.push(after_ack);
        from_send.push(signed_micros(sent));
        put_latency.push(acknowledged.duration_since(sent).as_micros() as i64);
        round_trips.extend(polled.round_trips_us.iter().map(|us| *us as i64));
        let _ = polled.stale_reads;
        tokio::time::sleep(Duration::from_millis(args.pause_ms)).await;
    }
    println!(
        "{} samples in {:.1} s: a CacheService.Put through A ({}), B ({}) polled with back-to-back \
         CacheService.Get until it stops answering the old value",
        args.samples,
        run.elapsed().as_secs_f64(),
        args.a,
        args.b
    );
    summary(
        "invalidation delay after A's acknowledgement",
        &mut from_ack,
    );
    summary("invalidation delay after the Put was sent", &mut from_send);
    summary("Put latency through A (for scale)", &mut put_latency);
    summary(
        "Get round trip on B (the measure's resolution)",
        &mut round_trips,
    );
    println!(
        "samples where B still served the old value after A acknowledged: {stale_after_ack} of {}",
        args.samples
    );
    Ok(())
}
