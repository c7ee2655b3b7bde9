//! `tierkv-overload-bench`: what load shedding buys under a burst.
//!
//! Starts the real `tierkv` binary on `127.0.0.1:0` over a fresh RocksDB
//! directory (removed at the end) with `max_calls_in_flight = L`, pinned to
//! its own CPU, loads keys, and drives `KvService/Get` over TCP with the
//! generated client from a one-thread runtime pinned to another CPU,
//! closed-loop (every client sends its next call when the last one answers):
//!
//! 1. **Within capacity**: `L` calls in flight. This is the baseline: the
//!    server's throughput at its limit and the latency calls see there.
//! 2. **Burst**: `burst × L` clients (several times what the server
//!    sustains), with shedding. Calls over the limit are answered
//!    RESOURCE_EXHAUSTED at once; their clients wait the RetryInfo delay the
//!    server sends, as gRPC clients should (`--ignore-retry-info`: they retry
//!    at once, spinning). Admitted calls' p99 is compared with the baseline
//!    p99; shed calls' latency is reported.
//! 3. **Burst without shedding** (`max_calls_in_flight = 0`, another server):
//!    the same burst queues instead, for comparison.
//!
//! ```text
//! cargo run --release --locked --bin tierkv-overload-bench -- --limit 32 --burst 8
//! ```

#![warn(missing_docs)]

use std::error::Error;
use std::time::{Duration, Instant};

use clap::Parser;
use tierkv::proto::v1 as pb;
use tierkv::proto::v1::kv_service_client::KvServiceClient;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Code;
use tonic_types::StatusExt;

type BoxError = Box<dyn Error + Send + Sync>;

/// Command-line options.
#[derive(Debug, Parser)]
struct Options {
    /// `max_calls_in_flight` of the server under test.
    #[arg(long, default_value_t = 32)]
    limit: usize,
    /// Calls in flight during the burst, as a multiple of the limit.
    #[arg(long, default_value_t = 8)]
    burst: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Keys loaded and read.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// The server binary (default: `tierkv` beside this one).
    #[arg(long)]
    server_bin: Option<std::path::PathBuf>,
    /// CPUs the server runs on.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    server_cpus: Vec<usize>,
    /// CPUs the load generator runs on.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    client_cpus: Vec<usize>,
    /// Retry a shed call at once instead of after the server's RetryInfo
    /// delay (a client ignoring the pushback, spinning on the server).
    #[arg(long)]
    ignore_retry_info: bool,
}

/// Latencies of the calls of one phase, by outcome.
#[derive(Debug, Default)]
struct Outcomes {
    admitted: Vec<Duration>,
    shed: Vec<Duration>,
    failed: usize,
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A data directory removed when dropped.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The server under test: the real binary in its own process, so its
/// threads never share a run queue with the load generator's.
struct Server {
    child: std::process::Child,
    endpoint: String,
    _dir: ScratchDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pins the calling thread (and threads it spawns later) to `cpus`.
fn pin_to(cpus: &[usize]) {
    // SAFETY: sched_setaffinity reads the set we built, for this thread (0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for cpu in cpus {
            libc::CPU_SET(*cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn start(options: &Options, limit: usize) -> Result<Server, BoxError> {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    let dir = ScratchDir(std::env::temp_dir().join(format!(
        "tierkv-overload-bench-{}-{nanos}",
        std::process::id()
    )));
    let binary = match &options.server_bin {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("tierkv"),
    };
    let server_cpus = options.server_cpus.clone();
    let mut command = std::process::Command::new(&binary);
    command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(&dir.0)
        .env("TIERKV_MAX_CALLS_IN_FLIGHT", limit.to_string())
        .env("TIERKV_SHUTDOWN_DELAY_MS", "0")
        .env("TIERKV_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: only sched_setaffinity between fork and exec.
    unsafe {
        command.pre_exec(move || {
            pin_to(&server_cpus);
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|error| format!("{}: {error}", binary.display()))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = std::io::BufReader::new(stderr).lines();
    let addr = loop {
        let line = lines.next().ok_or("the server exited before serving")??;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "serving" {
            break json["addr"].as_str().ok_or("no addr")?.to_string();
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        child,
        endpoint: format!("http://{addr}"),
        _dir: dir,
    })
}

async fn load(endpoint: &str, keys: usize) -> Result<(), BoxError> {
    let mut client = KvServiceClient::connect(endpoint.to_string()).await?;
    for start in (0..keys).step_by(500) {
        let mutations = (start..(start + 500).min(keys))
            .map(|n| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(pb::PutRequest {
                    key: format!("user:{n:06}"),
                    value: Some(pb::put_request::Value::Text(format!("value of {n}"))),
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

/// `in_flight` closed-loop clients over `in_flight / 32` connections (at
/// least one) for `seconds`.
async fn drive(
    endpoint: &str,
    in_flight: usize,
    seconds: u64,
    keys: usize,
    honour_retry_info: bool,
) -> Result<Outcomes, BoxError> {
    let connections = in_flight.div_ceil(32).max(1);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(
            Channel::from_shared(endpoint.to_string())?
                .connect()
                .await?,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut clients = JoinSet::new();
    for client_index in 0..in_flight {
        let mut client = KvServiceClient::new(channels[client_index % connections].clone());
        clients.spawn(async move {
            let mut outcomes = Outcomes::default();
            let mut n = client_index * 7919;
            while Instant::now() < deadline {
                n = (n + 1) % keys;
                let started = Instant::now();
                let result = client
                    .get(pb::GetRequest {
                        key: format!("user:{n:06}"),
                        ..Default::default()
                    })
                    .await;
                let took = started.elapsed();
                match result {
                    Ok(_) => outcomes.admitted.push(took),
                    Err(status) if status.code() == Code::ResourceExhausted => {
                        outcomes.shed.push(took);
                        // A well-behaved client waits as the server asks.
                        if honour_retry_info {
                            let delay = status
                                .get_error_details()
                                .retry_info()
                                .and_then(|info| info.retry_delay)
                                .unwrap_or(Duration::from_millis(50));
                            tokio::time::sleep(delay).await;
                        }
                    }
                    Err(_) => outcomes.failed += 1,
                }
            }
            outcomes
        });
    }
    let mut all = Outcomes::default();
    while let Some(outcomes) = clients.join_next().await {
        let mut outcomes = outcomes?;
        all.admitted.append(&mut outcomes.admitted);
        all.shed.append(&mut outcomes.shed);
        all.failed += outcomes.failed;
    }
    all.admitted.sort();
    all.shed.sort();
    Ok(all)
}

fn report(name: &str, outcomes: &Outcomes, seconds: u64) {
    let rate = |count: usize| count as f64 / seconds as f64;
    println!(
        "{name:<34} admitted {:>9.0}/s  p50 {:>7.3} ms  p99 {:>7.3} ms | shed {:>9.0}/s  p50 {:>6.3} ms  p99 {:>6.3} ms  max {:>6.3} ms | failed {}",
        rate(outcomes.admitted.len()),
        ms(percentile(&outcomes.admitted, 0.50)),
        ms(percentile(&outcomes.admitted, 0.99)),
        rate(outcomes.shed.len()),
        ms(percentile(&outcomes.shed, 0.50)),
        ms(percentile(&outcomes.shed, 0.99)),
        ms(outcomes.shed.last().copied().unwrap_or_default()),
        outcomes.failed,
    );
}

fn main() -> Result<(), BoxError> {
    let options = Options::parse();
    // The generator on its own CPUs, one thread: it never steals the server's.
    pin_to(&options.client_cpus);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

async fn run(options: Options) -> Result<(), BoxError> {
    let burst = options.limit * options.burst;
    println!(
        "limit {} calls in flight; burst {} clients ({}x); {} s per phase; {} keys; server on CPUs {:?}, load generator on {:?}",
        options.limit, burst, options.burst, options.seconds, options.keys, options.server_cpus, options.client_cpus
    );
    let honour = !options.ignore_retry_info;

    let server = start(&options, options.limit)?;
    load(&server.endpoint, options.keys).await?;
    // Warm up connections, caches and the allocator.
    drive(&server.endpoint, options.limit, 1, options.keys, true).await?;
    let baseline = drive(
        &server.endpoint,
        options.limit,
        options.seconds,
        options.keys,
        true,
    )
    .await?;
    report(
        "within capacity (limit in flight)",
        &baseline,
        options.seconds,
    );
    let shedding = drive(
        &server.endpoint,
        burst,
        options.seconds,
        options.keys,
        honour,
    )
    .await?;
    report("burst, shedding", &shedding, options.seconds);
    drop(server);

    let unbounded = start(&options, 0)?;
    load(&unbounded.endpoint, options.keys).await?;
    drive(&unbounded.endpoint, options.limit, 1, options.keys, true).await?;
    let queueing = drive(
        &unbounded.endpoint,
        burst,
        options.seconds,
        options.keys,
        honour,
    )
    .await?;
    report("burst, no limit (queueing)", &queueing, options.seconds);
    drop(unbounded);

    let baseline_p99 = percentile(&baseline.admitted, 0.99);
    println!();
    println!(
        "admitted p99 under the burst / p99 within capacity: {:.2}x (target <= 2x); without shedding: {:.2}x",
        ms(percentile(&shedding.admitted, 0.99)) / ms(baseline_p99),
        ms(percentile(&queueing.admitted, 0.99)) / ms(baseline_p99),
    );
    println!(
        "shed calls answered in p99 {:.3} ms (target < 1 ms), as seen by the client",
        ms(percentile(&shedding.shed, 0.99))
    );
    Ok(())
}
