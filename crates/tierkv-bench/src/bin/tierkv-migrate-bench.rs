//! `tierkv-migrate-bench`: what record migrations cost.
//!
//! Starts the real server in this process on `127.0.0.1:0` over a fresh
//! RocksDB directory (removed at the end) with the seed's migration
//! (`user:` 1 → 2, a JSON Patch `copy` of `/name` to `/userName`) and talks
//! to it over TCP with the generated client:
//!
//! 1. `Get` of records already at the target version (nothing to migrate),
//!    then the first `Get` of as many v1 records (each is migrated on the
//!    read and written back in the background), then `Get` of those again
//!    once written back. Each key is read once per phase, with a fixed number
//!    of calls in flight; the table shows ops/s, p50 and p99.
//! 2. How many write-backs landed, and how long the last one took to land.
//! 3. `AdminService.Migrate` of fresh v1 records: records per second, and
//!    the p50/p99 of `Get`s of current records issued while it runs, next to
//!    the same `Get`s with the server idle.
//!
//! ```text
//! cargo run --release --locked -p tierkv-bench --bin tierkv-migrate-bench -- --records 20000
//! ```

#![warn(missing_docs)]

use std::error::Error;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use tierkv::clock::{SharedClock, SystemClock};
use tierkv::config::Config;
use tierkv::migrate::MigrationStep;
use tierkv::server::RunningServer;
use tierkv_client::convert::json_to_proto;
use tierkv_client::proto::v1 as pb;
use tierkv_client::proto::v1::admin_service_client::AdminServiceClient;
use tierkv_client::proto::v1::kv_service_client::KvServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;

type BoxError = Box<dyn Error + Send + Sync>;

/// Command-line options.
#[derive(Debug, Parser)]
struct Options {
    /// Records per phase.
    #[arg(long, default_value_t = 20_000)]
    records: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Records per batch of the batch migration.
    #[arg(long, default_value_t = 500)]
    batch_size: u32,
}

fn user(n: usize, name: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: format!("{name}{n:07}"),
        value: Some(pb::put_request::Value::Json(json_to_proto(
            serde_json::json!({"name": format!("user {n}"), "email": format!("u{n}@example.com"), "plan": "free"}),
        ))),
        schema_version: if name.contains(":cur:") { 2 } else { 1 },
        ..Default::default()
    }
}

async fn load(
    client: &mut KvServiceClient<Channel>,
    name: &str,
    records: usize,
) -> Result<(), BoxError> {
    for start in (0..records).step_by(1000) {
        let mutations = (start..(start + 1000).min(records))
            .map(|n| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(user(n, name))),
            })
            .collect();
        client
            .batch_write(pb::BatchWriteRequest { mutations })
            .await?;
    }
    Ok(())
}

/// Reads every key `name{n}` once with `concurrency` calls in flight;
/// returns (ops/s, sorted latencies).
async fn read_all(
    client: &KvServiceClient<Channel>,
    name: &str,
    records: usize,
    concurrency: usize,
) -> Result<(f64, Vec<Duration>), BoxError> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let mut client = client.clone();
        let name = name.to_string();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for n in (worker..records).step_by(concurrency) {
                let begin = Instant::now();
                let response = client
                    .get(pb::GetRequest {
                        key: format!("{name}{n:07}"),
                        r#type: 0,
                        fallback: None,
                    })
                    .await?
                    .into_inner();
                latencies.push(begin.elapsed());
                if response.schema_version != 2 {
                    return Err::<_, BoxError>("a read was not migrated".into());
                }
            }
            Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(records);
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    Ok((records as f64 / elapsed, latencies))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn row(label: &str, ops: f64, latencies: &[Duration]) {
    println!(
        "{label:<44} {ops:>9.0} ops/s  p50 {:>8.1} µs  p99 {:>8.1} µs",
        percentile(latencies, 0.5).as_secs_f64() * 1e6,
        percentile(latencies, 0.99).as_secs_f64() * 1e6
    );
}

/// Stored records under `prefix` at schema version 2.
async fn stored_at_target(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
) -> Result<usize, BoxError> {
    let mut count = 0;
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size: 1000,
                page_token,
            })
            .await?
            .into_inner();
        count += page
            .keys
            .iter()
            .filter(|key| key.schema_version == 2)
            .count();
        if page.next_page_token.is_empty() {
            return Ok(count);
        }
        page_token = page.next_page_token;
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let options = Options::parse();
    let dir = std::env::temp_dir().join(format!("tierkv-migrate-bench-{}", std::process::id()));
    let config = Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.clone(),
        shutdown_delay_ms: 0,
        migrations: vec![MigrationStep {
            prefix: "user:".into(),
            from: 1,
            to: 2,
            patch: r#"[{"op": "copy", "from": "/name", "path": "/userName"}]"#.into(),
        }],
        ..Config::default()
    };
    let clock: SharedClock = Arc::new(SystemClock);
    let server = RunningServer::start(config, clock).await?;
    let endpoint = server.endpoint();
    let result = run(&endpoint, &options).await;
    server.stop().await?;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(endpoint: &str, options: &Options) -> Result<(), BoxError> {
    let mut client = KvServiceClient::connect(endpoint.to_string()).await?;
    let mut admin = AdminServiceClient::connect(endpoint.to_string()).await?;
    let records = options.records;
    println!(
        "records per phase: {records}, concurrency: {}, batch size: {}",
        options.concurrency, options.batch_size
    );
    load(&mut client, "user:cur:", records).await?;
    load(&mut client, "user:old:", records).await?;
    // Warm-up: the same number of reads as a phase, of current records.
    read_all(&client, "user:cur:", records, options.concurrency).await?;

    let (ops, latencies) = read_all(&client, "user:cur:", records, options.concurrency).await?;
    row(
        "Get, record at target (nothing to migrate)",
        ops,
        &latencies,
    );
    let before_write_backs = Instant::now();
    let (ops, latencies) = read_all(&client, "user:old:", records, options.concurrency).await?;
    row("Get, first read of a v1 record (migrates)", ops, &latencies);
    let mut landed = stored_at_target(&mut client, "user:old:").await?;
    while landed < records && before_write_backs.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        landed = stored_at_target(&mut client, "user:old:").await?;
    }
    println!(
        "write-backs landed: {landed} of {records} within {:.2} s of the first migrating read",
        before_write_backs.elapsed().as_secs_f64()
    );
    let (ops, latencies) = read_all(&client, "user:old:", records, options.concurrency).await?;
    row("Get, same records again (written back)", ops, &latencies);
    let (ops, latencies) = read_all(&client, "user:cur:", records, options.concurrency).await?;
    row("Get, record at target (again)", ops, &latencies);

    // What an inline write-back would add to a migrating read: one write
    // through the writer thread, measured as Puts of the same records.
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for worker in 0..options.concurrency {
        let mut client = client.clone();
        let concurrency = options.concurrency;
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            for n in (worker..records).step_by(concurrency) {
                let begin = Instant::now();
                client.put(user(n, "user:put:")).await?;
                latencies.push(begin.elapsed());
            }
            Ok::<_, BoxError>(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(records);
    while let Some(result) = tasks.join_next().await {
        latencies.extend(result??);
    }
    latencies.sort();
    row(
        "Put of the same records (an inline write-back)",
        records as f64 / started.elapsed().as_secs_f64(),
        &latencies,
    );

    // Batch migration, with and without reads alongside.
    load(&mut client, "user:batch:", records).await?;
    let started = Instant::now();
    let mut stream = admin
        .migrate(pb::MigrateRequest {
            prefix: "user:batch:".into(),
            batch_size: options.batch_size,
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut migrated = 0;
    while let Some(message) = stream.message().await? {
        if let Some(state) = message.state {
            migrated = state.migrated;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>9.0} records/s ({migrated} records in {elapsed:.2} s)",
        "Migrate, alone",
        migrated as f64 / elapsed
    );

    load(&mut client, "user:batch2:", records).await?;
    let done = Arc::new(AtomicBool::new(false));
    let migration = {
        let mut admin = admin.clone();
        let done = Arc::clone(&done);
        let batch_size = options.batch_size;
        tokio::spawn(async move {
            let started = Instant::now();
            let mut stream = admin
                .migrate(pb::MigrateRequest {
                    prefix: "user:batch2:".into(),
                    batch_size,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut migrated = 0;
            while let Some(message) = stream.message().await? {
                if let Some(state) = message.state {
                    migrated = state.migrated;
                }
            }
            done.store(true, Ordering::SeqCst);
            Ok::<_, BoxError>((migrated, started.elapsed().as_secs_f64()))
        })
    };
    let mut latencies = Vec::new();
    let mut reads = 0usize;
    let started = Instant::now();
    while !done.load(Ordering::SeqCst) {
        let (_, mut round) =
            read_all(&client, "user:cur:", records.min(2000), options.concurrency).await?;
        reads += round.len();
        latencies.append(&mut round);
    }
    latencies.sort();
    let (migrated, elapsed) = migration.await??;
    println!(
        "{:<44} {:>9.0} records/s ({migrated} records in {elapsed:.2} s)",
        "Migrate, with Gets alongside",
        migrated as f64 / elapsed
    );
    row(
        "Get, record at target, during Migrate",
        reads as f64 / started.elapsed().as_secs_f64(),
        &latencies,
    );
    Ok(())
}
