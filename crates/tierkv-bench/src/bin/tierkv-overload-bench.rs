//! `tierkv-overload-bench`: what load shedding buys under a burst.
//!
//! Starts the real `tierkv` binary twice (one server with
//! `max_calls_in_flight = L`, one without a limit), each over a fresh RocksDB
//! directory removed at the end, pinned to its own CPU. The load generator
//! runs in this process on another CPU, one thread, and talks to them over TCP
//! with a raw HTTP/2 gRPC client (the `h2` crate): request bodies are encoded
//! once, and answers are judged by their `grpc-status` alone, never decoded.
//! The generated tonic client costs about 34 µs of generator CPU per call, so
//! one core could not release a burst of several times what the server
//! sustains, and the latencies measured were the generator's own queue. The
//! raw client costs about 7 µs per Get and 12–20 µs per BatchGet of 100 keys
//! (reading its 12 KB answer), half of it in the kernel's loopback TCP: one
//! core drives 4x the server's BatchGet rate, but only about 1.5x its Get
//! rate, so a Get burst beyond that measures the generator again (its CPU
//! and the rate it sent are printed). Then:
//!
//! 1. **Saturation sweep** (server without a limit): closed-loop clients at
//!    1, 2, 4 … 128 calls in flight. The best throughput is the *sustainable
//!    rate* `X`; the smallest concurrency reaching 90% of it is the knee, the
//!    limit `L` the shedding server gets (unless `--limit` says otherwise).
//!    The server's and the generator's CPU use are printed for every step, so
//!    a sweep limited by the generator rather than the server shows.
//! 2. **Unloaded** (shedding server): open-loop arrivals at
//!    `--unloaded-fraction × X`; their p99 is the baseline.
//! 3. **Burst, shedding**: open-loop arrivals at `--burst × X`. Arrivals do
//!    not wait for answers (a closed loop would slow down exactly when the
//!    server does, and hide the overload). Admitted calls' p99 is compared
//!    with the baseline; shed calls' latency is reported.
//! 4. **Burst, no limit**: the same arrivals against the server without a
//!    limit, for comparison.
//! 5. With `--h2load`: an independent load tool floods the shedding server
//!    (h2load, closed loop, as fast as the server answers) while this
//!    process measures a light open-loop probe; the server's own counts of
//!    admitted and shed calls come from its `/metrics`.
//!
//! Arrivals are released every millisecond (tokio's timer resolution) in
//! batches of `rate / 1000`, a burstier pattern than Poisson arrivals at these
//! rates. Latency is measured from release to the answer's `grpc-status`, as
//! the client sees it; the generator's CPU use and the rate it actually
//! released are printed so its own queueing can be judged. The server allows
//! 256 streams per HTTP/2 connection, and a call beyond that would wait in
//! the client for a stream slot, hidden from the server; so the open-loop
//! phases open enough connections for `--max-outstanding` calls
//! (`--max-outstanding / 256`, at least `--connections`), send each call on
//! the next connection with a free slot, and report calls that found none.
//!
//! ```text
//! cargo build --release --locked -p tierkv -p tierkv-bench --bin tierkv --bin tierkv-overload-bench
//! target/release/tierkv-overload-bench                      # BatchGet of 100 keys, burst 4x
//! target/release/tierkv-overload-bench --call get --burst 2
//! target/release/tierkv-overload-bench --h2load             # also the h2load flood
//! ```

#![warn(missing_docs)]

use std::error::Error;
use std::io::{BufRead, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use prost::Message;
use tierkv_client::proto::v1 as pb;
use tierkv_client::proto::v1::kv_service_client::KvServiceClient;
use tokio::sync::Notify;
use tonic::Code;

type BoxError = Box<dyn Error + Send + Sync>;

/// Which call the load is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum CallKind {
    /// `KvService/Get` of one key: the cheapest call, where refusing costs
    /// about as much as serving.
    Get,
    /// `KvService/BatchGet` of `--batch` keys.
    BatchGet,
}

/// Command-line options.
#[derive(Debug, Parser)]
struct Options {
    /// The call under load.
    #[arg(long, value_enum, default_value_t = CallKind::BatchGet)]
    call: CallKind,
    /// Keys per BatchGet (at most 100).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// `max_calls_in_flight` of the shedding server (default: the knee the
    /// sweep finds).
    #[arg(long)]
    limit: Option<usize>,
    /// Burst arrival rate, as a multiple of the sustainable rate.
    #[arg(long, default_value_t = 4.0)]
    burst: f64,
    /// Unloaded arrival rate, as a fraction of the sustainable rate.
    #[arg(long, default_value_t = 0.1)]
    unloaded_fraction: f64,
    /// Seconds per open-loop phase.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Seconds per step of the saturation sweep.
    #[arg(long, default_value_t = 1.5)]
    sweep_seconds: f64,
    /// HTTP/2 connections the generator spreads calls over (a sidecar
    /// multiplexes many callers onto a few). Open-loop phases open more if
    /// `--max-outstanding` calls would not fit in the server's streams per
    /// connection.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Calls the generator keeps outstanding at most; arrivals beyond are
    /// counted as not sent.
    #[arg(long, default_value_t = 8192)]
    max_outstanding: usize,
    /// Open-loop arrivals are released every this many microseconds.
    #[arg(long, default_value_t = 100)]
    tick_us: u64,
    /// Keys loaded.
    #[arg(long, default_value_t = 10_000)]
    keys: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Also flood the shedding server with h2load (needs `h2load`, Debian's
    /// nghttp2-client) while a light probe measures.
    #[arg(long)]
    h2load: bool,
    /// The server binary (default: `tierkv` beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// CPUs the servers run on.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    server_cpus: Vec<usize>,
    /// CPUs the load generator (and h2load) run on.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    client_cpus: Vec<usize>,
}

/// Nearest-rank percentile of sorted durations.
fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// A duration in milliseconds, for printing.
fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// A data directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh, not yet created directory under the system's temp dir.
fn scratch_dir(name: &str) -> Result<ScratchDir, BoxError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .subsec_nanos();
    Ok(ScratchDir(std::env::temp_dir().join(format!(
        "tierkv-overload-bench-{name}-{}-{nanos}",
        std::process::id()
    ))))
}

/// CPU seconds (user + system) used so far by process `pid`.
fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // The command name may contain spaces; the fields after it do not.
    let Some((_, fields)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = fields.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|index| fields.get(*index)?.parse::<u64>().ok())
        .sum();
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// Measures the CPU share the server and this generator used over a phase.
struct CpuMeter {
    server_pid: u32,
    started: Instant,
    server: f64,
    generator: f64,
}

impl CpuMeter {
    /// Starts measuring `server_pid` and this process from now.
    fn start(server_pid: u32) -> Self {
        Self {
            server_pid,
            started: Instant::now(),
            server: process_cpu_seconds(server_pid),
            generator: process_cpu_seconds(std::process::id()),
        }
    }

    /// (server, generator) CPU use since start, in cores.
    fn stop(&self) -> (f64, f64) {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        (
            (process_cpu_seconds(self.server_pid) - self.server) / wall,
            (process_cpu_seconds(std::process::id()) - self.generator) / wall,
        )
    }
}

/// The server under test: the real binary in its own process, so its
/// threads never share a run queue with the load generator's.
struct Server {
    child: std::process::Child,
    addr: String,
    metrics_addr: String,
    _dir: ScratchDir,
}

impl Server {
    /// The gRPC endpoint URL, for the generated client.
    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn scrape(&self) -> Result<String, BoxError> {
        let mut stream = std::net::TcpStream::connect(&self.metrics_addr)?;
        stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: bench\r\n\r\n")?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        Ok(text)
    }

    /// The cumulative buckets `(le, count)` of `tierkv_rpc_duration_seconds`
    /// for `method`: the server's own view, from reading a call's headers to
    /// its status.
    fn latency_buckets(&self, method: &str) -> Result<Vec<(f64, f64)>, BoxError> {
        let method_label = format!("method=\"{method}\"");
        Ok(self
            .scrape()?
            .lines()
            .filter(|line| line.starts_with("tierkv_rpc_duration_seconds_bucket{"))
            .filter(|line| line.contains(&method_label))
            .filter_map(|line| {
                let le = line.split("le=\"").nth(1)?.split('"').next()?;
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().ok()?
                };
                let count = line.rsplit(' ').next()?.parse().ok()?;
                Some((le, count))
            })
            .collect())
    }

    /// `tierkv_rpc_requests_total` of `method`, by gRPC code, from `/metrics`.
    fn calls_by_code(&self, method: &str) -> Result<Vec<(String, f64)>, BoxError> {
        let text = self.scrape()?;
        let method_label = format!("method=\"{method}\"");
        Ok(text
            .lines()
            .filter(|line| line.starts_with("tierkv_rpc_requests_total{"))
            .filter(|line| line.contains(&method_label))
            .filter_map(|line| {
                let code = line.split("code=\"").nth(1)?.split('"').next()?;
                let count = line.rsplit(' ').next()?.parse().ok()?;
                Some((code.to_string(), count))
            })
            .collect())
    }
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

/// `cpus` as `taskset -c` takes them.
fn cpu_list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts the server binary with `max_calls_in_flight = limit` (0: none)
/// on the server CPUs and waits until it serves.
fn start(options: &Options, name: &str, limit: usize) -> Result<Server, BoxError> {
    use std::os::unix::process::CommandExt;
    let dir = scratch_dir(name)?;
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
            "127.0.0.1:0",
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
    let (addr, metrics_addr) = loop {
        let line = lines.next().ok_or("the server exited before serving")??;
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if json["message"] == "serving" {
            let field = |name: &str| json[name].as_str().map(str::to_string);
            break (
                field("addr").ok_or("no addr")?,
                field("metrics_addr").ok_or("no metrics_addr")?,
            );
        }
    };
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok(Server {
        child,
        addr,
        metrics_addr,
        _dir: dir,
    })
}

/// Writes the `--keys` keys the workload reads, with the generated client
/// (not measured, so its cost does not matter).
async fn load(endpoint: &str, options: &Options) -> Result<(), BoxError> {
    let mut client = KvServiceClient::connect(endpoint.to_string()).await?;
    let filler = "x".repeat(options.value_bytes.saturating_sub(8));
    for start in (0..options.keys).step_by(500) {
        let mutations = (start..(start + 500).min(options.keys))
            .map(|n| pb::Mutation {
                operation: Some(pb::mutation::Operation::Put(pb::PutRequest {
                    key: format!("user:{n:06}"),
                    value: Some(pb::put_request::Value::Text(format!("{n:08}{filler}"))),
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

/// What the load is made of: which call, and which keys it asks for.
#[derive(Debug, Clone, Copy)]
struct Workload {
    kind: CallKind,
    batch: usize,
    keys: usize,
}

/// Distinct request bodies the generator cycles through: enough to spread
/// the calls over the keys, few enough to encode once up front.
const DISTINCT_REQUESTS: usize = 1024;

impl Workload {
    /// The `KvService` method called.
    fn method(&self) -> &'static str {
        match self.kind {
            CallKind::Get => "Get",
            CallKind::BatchGet => "BatchGet",
        }
    }

    /// The `n`th key (modulo `--keys`), as `load` wrote it.
    fn key(&self, n: usize) -> String {
        format!("user:{:06}", n % self.keys)
    }

    /// The `n`th BatchGet: `--batch` consecutive keys from a start spread
    /// over the key space.
    fn batch_get_request(&self, n: usize) -> pb::BatchGetRequest {
        pb::BatchGetRequest {
            keys: (0..self.batch)
                .map(|offset| self.key(n.wrapping_mul(7919) + offset))
                .collect(),
            ..Default::default()
        }
    }

    /// The gRPC-framed request body of the `n`th call (a zero compression
    /// flag, the big-endian length, the message), as h2load and the raw
    /// client send it.
    fn grpc_frame(&self, n: usize) -> Bytes {
        let message = match self.kind {
            CallKind::Get => pb::GetRequest {
                key: self.key(n.wrapping_mul(7919)),
                ..Default::default()
            }
            .encode_to_vec(),
            CallKind::BatchGet => self.batch_get_request(n).encode_to_vec(),
        };
        let mut frame = Vec::with_capacity(5 + message.len());
        frame.push(0u8);
        frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
        frame.extend_from_slice(&message);
        Bytes::from(frame)
    }

    /// [`DISTINCT_REQUESTS`] encoded bodies; a call clones one, which only
    /// bumps a reference count.
    fn bodies(&self) -> Arc<[Bytes]> {
        (0..DISTINCT_REQUESTS).map(|n| self.grpc_frame(n)).collect()
    }
}

/// The code a call that failed in HTTP/2 itself (connection lost, stream
/// reset) is counted under, as tonic's client would report it.
const TRANSPORT_FAILURE: Code = Code::Unavailable;

/// Why a raw call failed.
#[derive(Debug)]
enum Failure {
    /// The server answered with this `grpc-status`.
    Status(Code),
    /// HTTP/2 failed (counted as [`TRANSPORT_FAILURE`]).
    Transport(h2::Error),
}

impl From<h2::Error> for Failure {
    fn from(error: h2::Error) -> Self {
        Self::Transport(error)
    }
}

/// The outcome carried by a `grpc-status` header, if there is one.
fn grpc_status(headers: &http::HeaderMap) -> Option<Result<(), Failure>> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|text| text.parse::<i32>().ok())
        .map_or(Code::Unknown, Code::from_i32);
    Some(match code {
        Code::Ok => Ok(()),
        code => Err(Failure::Status(code)),
    })
}

/// One HTTP/2 connection of the raw gRPC client.
#[derive(Clone)]
struct H2Connection {
    send: h2::client::SendRequest<Bytes>,
    /// Open-loop calls sent on this connection and not yet answered, to keep
    /// within the server's streams per connection.
    open: Arc<AtomicUsize>,
}

impl H2Connection {
    /// Opens one HTTP/2 connection (prior knowledge, no TLS) and spawns the
    /// task that drives it.
    async fn connect(addr: &str) -> Result<Self, BoxError> {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        // Large windows: flow control must never be what holds a call back.
        let (send, connection) = h2::client::Builder::new()
            .initial_window_size(1 << 20)
            .initial_connection_window_size(16 << 20)
            .handshake::<_, Bytes>(tcp)
            .await?;
        tokio::spawn(async move {
            // A lost connection fails its calls, which count it.
            let _ = connection.await;
        });
        Ok(Self {
            send,
            open: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Makes one unary call of `uri` with the framed `body` and returns its
    /// outcome from `grpc-status`, without decoding the answer: decoding is
    /// what made the generated client too expensive to drive a burst.
    /// `handed_over` is set when the request is queued on the connection,
    /// so the generator's own delay before that can be told apart.
    async fn call(
        &self,
        uri: &http::Uri,
        body: Bytes,
        handed_over: &mut Option<Instant>,
    ) -> Result<(), Failure> {
        let mut send = self.send.clone().ready().await?;
        let mut request = http::Request::new(());
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        let (response, mut stream) = send.send_request(request, false)?;
        stream.send_data(body, true)?;
        *handed_over = Some(Instant::now());
        let response = response.await?;
        // A trailers-only answer (every error tonic sends) ends here.
        if let Some(outcome) = grpc_status(response.headers()) {
            return outcome;
        }
        let mut body = response.into_body();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
        }
        let trailers = body.trailers().await?;
        trailers
            .as_ref()
            .and_then(grpc_status)
            .unwrap_or(Err(Failure::Status(Code::Unknown)))
    }
}

/// The raw client's connections to one server, and what it calls there.
struct H2Client {
    connections: Vec<H2Connection>,
    uri: http::Uri,
    bodies: Arc<[Bytes]>,
    /// Streams the server allows per connection.
    streams_per_connection: usize,
}

impl H2Client {
    /// Opens at least `connections` connections to `addr`, and enough that
    /// `outstanding` calls fit in the server's streams per connection.
    async fn connect(
        addr: &str,
        workload: Workload,
        connections: usize,
        outstanding: usize,
    ) -> Result<Self, BoxError> {
        let uri: http::Uri =
            format!("http://{addr}/tierkv.v1.KvService/{}", workload.method()).parse()?;
        let bodies = workload.bodies();
        let first = H2Connection::connect(addr).await?;
        // The server's SETTINGS, with its stream limit, have arrived once a
        // call is answered.
        let _ = first.call(&uri, bodies[0].clone(), &mut None).await;
        let streams_per_connection = first.send.current_max_send_streams().max(1);
        let count = connections
            .max(outstanding.div_ceil(streams_per_connection))
            .max(1);
        let mut all = vec![first];
        while all.len() < count {
            all.push(H2Connection::connect(addr).await?);
        }
        Ok(Self {
            connections: all,
            uri,
            bodies,
            streams_per_connection,
        })
    }
}

/// What one phase saw.
#[derive(Debug, Default)]
struct Outcomes {
    admitted: Vec<Duration>,
    shed: Vec<Duration>,
    /// Other failures, by code ([`TRANSPORT_FAILURE`] for HTTP/2 errors).
    failed: Vec<Code>,
    /// Calls that failed in HTTP/2 itself.
    transport_failures: usize,
    /// The first HTTP/2 error, to tell what it was.
    first_transport_failure: Option<String>,
    /// Arrivals the pacer released (sent or not).
    released: u64,
    /// Arrivals not sent because `--max-outstanding` calls were outstanding.
    not_sent: u64,
    /// Calls sent when every connection already had as many streams open as
    /// the server allows, so they waited in the client for a stream slot.
    waited_for_stream: u64,
    /// Calls still unanswered 10 s after the phase.
    unanswered: usize,
    /// Open loop: from release to the request queued on its connection, the
    /// generator's own delay (the rest of a call's latency is the writing,
    /// the server, and reading the answer).
    send_lag: Vec<Duration>,
    seconds: f64,
    server_cores: f64,
    generator_cores: f64,
}

impl Outcomes {
    /// Counts one answered call that took `took`.
    fn record(&mut self, result: Result<(), Code>, took: Duration) {
        match result {
            Ok(()) => self.admitted.push(took),
            Err(Code::ResourceExhausted) => self.shed.push(took),
            Err(code) => self.failed.push(code),
        }
    }

    /// Counts one raw call that took `took`.
    fn record_raw(&mut self, result: Result<(), Failure>, took: Duration) {
        let result = result.map_err(|failure| match failure {
            Failure::Status(code) => code,
            Failure::Transport(error) => {
                self.transport_failures += 1;
                self.first_transport_failure
                    .get_or_insert_with(|| error.to_string());
                TRANSPORT_FAILURE
            }
        });
        self.record(result, took);
    }

    /// Adds what another task of the same phase saw.
    fn merge(&mut self, mut other: Outcomes) {
        self.admitted.append(&mut other.admitted);
        self.shed.append(&mut other.shed);
        self.failed.append(&mut other.failed);
        self.transport_failures += other.transport_failures;
        if self.first_transport_failure.is_none() {
            self.first_transport_failure = other.first_transport_failure;
        }
    }

    /// Sorts the latencies and stores the phase's length and CPU use.
    fn finish(mut self, seconds: f64, cpu: (f64, f64)) -> Self {
        self.admitted.sort();
        self.shed.sort();
        self.send_lag.sort();
        self.seconds = seconds;
        (self.server_cores, self.generator_cores) = cpu;
        self
    }

    /// Calls sent during the phase.
    fn sent(&self) -> u64 {
        self.released - self.not_sent
    }

    /// Calls answered (admitted, shed or failed).
    fn answered(&self) -> usize {
        self.admitted.len() + self.shed.len() + self.failed.len()
    }

    /// Admitted calls per second of the phase.
    fn admitted_rate(&self) -> f64 {
        self.admitted.len() as f64 / self.seconds
    }

    /// Admitted calls' p99 latency.
    fn p99(&self) -> Duration {
        percentile(&self.admitted, 0.99)
    }

    /// Shed calls' p99 latency.
    fn shed_p99(&self) -> Duration {
        percentile(&self.shed, 0.99)
    }

    /// Generator CPU per call sent during the phase, in µs.
    fn generator_us_per_call(&self) -> f64 {
        self.generator_cores * self.seconds * 1e6 / self.sent().max(1) as f64
    }

    /// Failures as "count code" pairs, most frequent first.
    fn failures(&self) -> String {
        let mut counts: Vec<(Code, usize)> = Vec::new();
        for code in &self.failed {
            match counts.iter_mut().find(|(seen, _)| seen == code) {
                Some((_, count)) => *count += 1,
                None => counts.push((*code, 1)),
            }
        }
        counts.sort_by_key(|entry| std::cmp::Reverse(entry.1));
        let mut text = counts
            .iter()
            .map(|(code, count)| format!("{count} {code:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        if let Some(first) = &self.first_transport_failure {
            text += &format!(
                "; {} of them HTTP/2 errors, first: {first}",
                self.transport_failures
            );
        }
        text
    }

    /// Prints the phase, with the rate it was asked for.
    fn print(&self, name: &str, requested_rate: f64) {
        let mut line = format!(
            "{name:<30} admitted {:>8.0}/s p50 {:>7.3} p99 {:>7.3} ms | shed {:>8.0}/s p50 {:>6.3} p99 {:>6.3} max {:>6.3} ms | CPU server {:.2} generator {:.2}",
            self.admitted_rate(),
            ms(percentile(&self.admitted, 0.50)),
            ms(self.p99()),
            self.shed.len() as f64 / self.seconds,
            ms(percentile(&self.shed, 0.50)),
            ms(self.shed_p99()),
            ms(self.shed.last().copied().unwrap_or_default()),
            self.server_cores,
            self.generator_cores,
        );
        if !self.failed.is_empty() {
            line += &format!(" | failed {} ({})", self.failed.len(), self.failures());
        }
        if self.not_sent > 0 {
            line += &format!(" | not sent {}", self.not_sent);
        }
        if self.waited_for_stream > 0 {
            line += &format!(" | waited for a stream {}", self.waited_for_stream);
        }
        if self.unanswered > 0 {
            line += &format!(" | unanswered {}", self.unanswered);
        }
        println!("{line}");
        println!(
            "{:<30} released {:>8.0}/s of {:.0}/s requested, sent {:.0}/s; {} released, {} sent, {} answered | generator {:.1} µs per call sent, release to send p50 {:.3} p99 {:.3} ms",
            "",
            self.released as f64 / self.seconds,
            requested_rate,
            self.sent() as f64 / self.seconds,
            self.released,
            self.sent(),
            self.answered(),
            self.generator_us_per_call(),
            ms(percentile(&self.send_lag, 0.5)),
            ms(percentile(&self.send_lag, 0.99)),
        );
    }
}

/// `in_flight` closed-loop clients for `seconds`: each sends its next call
/// when the last one answers.
async fn closed_loop(
    client: &H2Client,
    server_pid: u32,
    in_flight: usize,
    seconds: f64,
) -> Result<Outcomes, BoxError> {
    let cpu = CpuMeter::start(server_pid);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let mut clients = tokio::task::JoinSet::new();
    for client_index in 0..in_flight {
        let connection = client.connections[client_index % client.connections.len()].clone();
        let (uri, bodies) = (client.uri.clone(), Arc::clone(&client.bodies));
        clients.spawn(async move {
            let mut outcomes = Outcomes::default();
            let mut n = client_index * 7;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                let result = connection
                    .call(&uri, bodies[n % bodies.len()].clone(), &mut None)
                    .await;
                outcomes.record_raw(result, sent.elapsed());
            }
            outcomes
        });
    }
    let mut all = Outcomes::default();
    while let Some(outcomes) = clients.join_next().await {
        all.merge(outcomes?);
    }
    all.released = all.answered() as u64;
    Ok(all.finish(started.elapsed().as_secs_f64(), cpu.stop()))
}

/// Open-loop arrivals at `rate` per second for `seconds`: calls are sent on
/// schedule whether or not earlier ones have answered.
async fn open_loop(
    client: &H2Client,
    server_pid: u32,
    rate: f64,
    seconds: f64,
    max_outstanding: usize,
    tick_us: u64,
) -> Result<Outcomes, BoxError> {
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let all_answered = Arc::new(Notify::new());
    let total = (rate * seconds).round() as u64;
    let connections = &client.connections;
    let cpu = CpuMeter::start(server_pid);
    let started = Instant::now();
    let tick = Arc::new(Notify::new());
    let _pacer = Pacer::start(Duration::from_micros(tick_us), Arc::clone(&tick));
    let (mut released, mut not_sent, mut waited_for_stream) = (0u64, 0u64, 0u64);
    let mut next_connection = 0usize;
    while released < total {
        tick.notified().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as u64).min(total);
        while released < due {
            released += 1;
            if outstanding.load(Ordering::Relaxed) >= max_outstanding {
                not_sent += 1;
                continue;
            }
            outstanding.fetch_add(1, Ordering::Relaxed);
            // Round robin over the connections with a free stream.
            let free = (0..connections.len())
                .map(|offset| (next_connection + offset) % connections.len())
                .find(|index| {
                    connections[*index].open.load(Ordering::Relaxed) < client.streams_per_connection
                });
            let index = free.unwrap_or_else(|| {
                waited_for_stream += 1;
                next_connection % connections.len()
            });
            next_connection = index + 1;
            let connection = connections[index].clone();
            connection.open.fetch_add(1, Ordering::Relaxed);
            let (uri, body) = (
                client.uri.clone(),
                client.bodies[released as usize % client.bodies.len()].clone(),
            );
            let (outcomes, outstanding, all_answered) = (
                Arc::clone(&outcomes),
                Arc::clone(&outstanding),
                Arc::clone(&all_answered),
            );
            let sent = Instant::now();
            tokio::spawn(async move {
                let mut handed_over = None;
                let result = connection.call(&uri, body, &mut handed_over).await;
                let took = sent.elapsed();
                connection.open.fetch_sub(1, Ordering::Relaxed);
                let mut outcomes = outcomes
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                outcomes.record_raw(result, took);
                if let Some(handed_over) = handed_over {
                    outcomes.send_lag.push(handed_over - sent);
                }
                if outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
                    all_answered.notify_one();
                }
            });
        }
    }
    let phase_seconds = started.elapsed().as_secs_f64();
    let cpu = cpu.stop();
    // A wake-up may be left over from a moment during the phase when every
    // call had answered, so look again after each one.
    let give_up = tokio::time::Instant::now() + Duration::from_secs(10);
    while outstanding.load(Ordering::Acquire) > 0 {
        if tokio::time::timeout_at(give_up, all_answered.notified())
            .await
            .is_err()
        {
            break;
        }
    }
    let unanswered = outstanding.load(Ordering::Acquire);
    let mut outcomes = std::mem::take(
        &mut *outcomes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    outcomes.released = released;
    outcomes.not_sent = not_sent;
    outcomes.waited_for_stream = waited_for_stream;
    outcomes.unanswered = unanswered;
    Ok(outcomes.finish(phase_seconds, cpu))
}

/// Wakes the open loop every tick from a thread of its own. tokio's timer
/// has millisecond resolution, and releasing a millisecond's arrivals at the
/// same instant is a burst pattern of its own (52 calls at once at 52k/s):
/// it alone made calls wait for the rest of their batch.
struct Pacer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pacer {
    fn start(tick: Duration, wake: Arc<Notify>) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            // SAFETY: prctl only changes this thread's timer slack (default
            // 50 µs, which would round every sleep up to it).
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
            }
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                wake.notify_one();
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Prints the server's latency over a phase from two scrapes of its
/// histogram: the bucket bounds holding the median and the 99th percentile,
/// and the share answered within 1 ms. Shed and admitted calls together.
fn print_server_view(before: &[(f64, f64)], after: &[(f64, f64)]) {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = before
                .iter()
                .find(|(bound, _)| bound == le)
                .map_or(0.0, |(_, count)| *count);
            (*le, count - earlier)
        })
        .collect();
    let Some(&(_, total)) = delta.last() else {
        return;
    };
    if total <= 0.0 {
        return;
    }
    let bound = |fraction: f64| {
        delta
            .iter()
            .find(|(_, count)| *count >= fraction * total)
            .map_or(f64::INFINITY, |(le, _)| *le * 1000.0)
    };
    let within_1ms = delta
        .iter()
        .find(|(le, _)| (*le - 0.001).abs() < 1e-9)
        .map_or(0.0, |(_, count)| *count / total);
    println!(
        "{:<30} server side, all calls: p50 <= {} ms, p99 <= {} ms, {:.2}% within 1 ms",
        "",
        bound(0.5),
        bound(0.99),
        within_1ms * 100.0
    );
}

/// The sweep's result: the sustainable rate and the knee.
struct Saturation {
    rate: f64,
    knee: usize,
}

/// Closed-loop steps of growing concurrency against the server without a
/// limit: the best throughput is the sustainable rate.
async fn sweep(client: &H2Client, server_pid: u32, seconds: f64) -> Result<Saturation, BoxError> {
    println!("saturation sweep (closed loop, server without a limit):");
    let mut steps = Vec::new();
    for in_flight in [1, 2, 4, 8, 16, 32, 64, 128] {
        let outcomes = closed_loop(client, server_pid, in_flight, seconds).await?;
        let mut line = format!(
            "  {in_flight:>4} in flight: {:>8.0} calls/s  p50 {:>7.3} ms  p99 {:>7.3} ms  CPU server {:.2} generator {:.2} ({:.1} µs per call)",
            outcomes.admitted_rate(),
            ms(percentile(&outcomes.admitted, 0.5)),
            ms(outcomes.p99()),
            outcomes.server_cores,
            outcomes.generator_cores,
            outcomes.generator_us_per_call(),
        );
        if !outcomes.failed.is_empty() {
            line += &format!(
                "  failed {} ({})",
                outcomes.failed.len(),
                outcomes.failures()
            );
        }
        println!("{line}");
        steps.push((in_flight, outcomes));
    }
    let best = steps
        .iter()
        .max_by(|a, b| a.1.admitted_rate().total_cmp(&b.1.admitted_rate()))
        .ok_or("empty sweep")?;
    let rate = best.1.admitted_rate();
    if best.1.generator_cores > best.1.server_cores {
        println!(
            "  warning: at the best step the generator used more CPU ({:.2}) than the server ({:.2}); the sustainable rate may be the generator's",
            best.1.generator_cores, best.1.server_cores
        );
    }
    let knee = steps
        .iter()
        .find(|(_, outcomes)| outcomes.admitted_rate() >= 0.9 * rate)
        .map_or(best.0, |(in_flight, _)| *in_flight);
    println!("  sustainable rate {rate:.0} calls/s; 90% of it from {knee} in flight");
    Ok(Saturation { rate, knee })
}

/// Floods `server` with h2load (closed loop, niced, on the generator's CPUs)
/// while a light open-loop probe measures; prints both views.
async fn h2load_flood(
    options: &Options,
    server: &Server,
    workload: Workload,
    probe_rate: f64,
    unloaded_p99: Duration,
) -> Result<(), BoxError> {
    let dir = scratch_dir("h2load")?;
    std::fs::create_dir_all(&dir.0)?;
    let body = dir.0.join("request.bin");
    std::fs::write(&body, workload.grpc_frame(0))?;
    let url = format!(
        "http://{}/tierkv.v1.KvService/{}",
        server.addr,
        workload.method()
    );
    let seconds = options.seconds.ceil() as u64 + 1;
    let before = server.calls_by_code(workload.method())?;
    let flood = tokio::process::Command::new("taskset")
        .args(["-c", &cpu_list(&options.client_cpus)])
        .args([
            "nice", "-n", "19", "h2load", "-t", "1", "-c", "4", "-m", "64",
        ])
        .args(["-D", &seconds.to_string()])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("h2load: {error} (install nghttp2-client)"))?;
    // Let the flood build before the probe starts measuring.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = H2Client::connect(&server.addr, workload, 1, 0).await?;
    let probe = open_loop(
        &client,
        server.child.id(),
        probe_rate,
        options.seconds - 0.5,
        options.max_outstanding,
        options.tick_us,
    )
    .await?;
    let output = flood.wait_with_output().await?;
    let after = server.calls_by_code(workload.method())?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!();
    println!("h2load flood (-c 4 -m 64, closed loop, nice 19) plus a probe at {probe_rate:.0}/s:");
    for line in stdout.lines().filter(|line| {
        line.starts_with("finished in")
            || line.starts_with("requests:")
            || line.starts_with("time for request:")
    }) {
        println!("  h2load: {line}");
    }
    let delta = |code: &str| {
        let count = |list: &[(String, f64)]| {
            list.iter()
                .find(|(name, _)| name == code)
                .map_or(0.0, |(_, count)| *count)
        };
        (count(&after) - count(&before)) / seconds as f64
    };
    println!(
        "  server's /metrics over the flood: OK {:.0}/s, RESOURCE_EXHAUSTED {:.0}/s",
        delta("OK"),
        delta("RESOURCE_EXHAUSTED")
    );
    probe.print("  probe during the flood", probe_rate);
    println!(
        "  probe: admitted p99 / unloaded p99 = {:.2}x; shed p99 {:.3} ms",
        ms(probe.p99()) / ms(unloaded_p99),
        ms(probe.shed_p99())
    );
    Ok(())
}

/// Parses the options and runs the bench on a one-thread runtime pinned to
/// the client CPUs.
fn main() -> Result<(), BoxError> {
    let options = Options::parse();
    if options.batch == 0 || options.batch > 100 {
        return Err("--batch must be 1 to 100".into());
    }
    // The generator on its own CPUs, one thread: it never steals the server's.
    pin_to(&options.client_cpus);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(options))
}

/// The whole bench: sweep, then the open-loop phases, then the optional
/// h2load flood.
async fn run(options: Options) -> Result<(), BoxError> {
    let workload = Workload {
        kind: options.call,
        batch: options.batch,
        keys: options.keys,
    };
    let call_name = match options.call {
        CallKind::Get => "Get".to_string(),
        CallKind::BatchGet => format!("BatchGet of {} keys", options.batch),
    };
    // Open-loop phases get enough connections for every outstanding call
    // to have a stream; the closed-loop sweep never has more than 128.
    let unbounded = start(&options, "unbounded", 0)?;
    load(&unbounded.endpoint(), &options).await?;
    let sweep_client = H2Client::connect(&unbounded.addr, workload, options.connections, 0).await?;
    let unbounded_client = H2Client::connect(
        &unbounded.addr,
        workload,
        options.connections,
        options.max_outstanding,
    )
    .await?;
    println!(
        "{call_name}, {}-byte values, {} keys; servers on CPUs {:?}, generator on {:?}; raw HTTP/2 client, {} connections for the sweep, {} for open loops ({} streams each)",
        options.value_bytes,
        options.keys,
        options.server_cpus,
        options.client_cpus,
        sweep_client.connections.len(),
        unbounded_client.connections.len(),
        unbounded_client.streams_per_connection,
    );
    // Warm up connections, caches and the allocator.
    closed_loop(&sweep_client, unbounded.child.id(), 8, 1.0).await?;
    let saturation = sweep(&sweep_client, unbounded.child.id(), options.sweep_seconds).await?;
    drop(sweep_client);

    let limit = options.limit.unwrap_or(saturation.knee);
    let shedding = start(&options, "shedding", limit)?;
    load(&shedding.endpoint(), &options).await?;
    let client = H2Client::connect(
        &shedding.addr,
        workload,
        options.connections,
        options.max_outstanding,
    )
    .await?;
    closed_loop(&client, shedding.child.id(), limit, 1.0).await?;
    let rate = saturation.rate;
    println!();
    println!(
        "open loop, {} s per phase; shedding server max_calls_in_flight = {limit}",
        options.seconds
    );
    let (seconds, max_outstanding) = (options.seconds, options.max_outstanding);
    let unloaded_rate = options.unloaded_fraction * rate;
    let method = workload.method();
    let before = shedding.latency_buckets(method)?;
    let unloaded = open_loop(
        &client,
        shedding.child.id(),
        unloaded_rate,
        seconds,
        max_outstanding,
        options.tick_us,
    )
    .await?;
    unloaded.print(&format!("unloaded, {unloaded_rate:.0}/s"), unloaded_rate);
    let after = shedding.latency_buckets(method)?;
    print_server_view(&before, &after);
    let burst_rate = options.burst * rate;
    let burst = open_loop(
        &client,
        shedding.child.id(),
        burst_rate,
        seconds,
        max_outstanding,
        options.tick_us,
    )
    .await?;
    burst.print(
        &format!("burst {}x, {burst_rate:.0}/s, shedding", options.burst),
        burst_rate,
    );
    print_server_view(&after, &shedding.latency_buckets(method)?);
    let before = unbounded.latency_buckets(method)?;
    let queueing = open_loop(
        &unbounded_client,
        unbounded.child.id(),
        burst_rate,
        seconds,
        max_outstanding,
        options.tick_us,
    )
    .await?;
    queueing.print(&format!("burst {}x, no limit", options.burst), burst_rate);
    print_server_view(&before, &unbounded.latency_buckets(method)?);

    println!();
    println!(
        "admitted p99 under the burst / unloaded p99: {:.2}x (target <= 2x); without a limit: {:.2}x",
        ms(burst.p99()) / ms(unloaded.p99()),
        ms(queueing.p99()) / ms(unloaded.p99()),
    );
    println!(
        "shed calls answered in p99 {:.3} ms (target < 1 ms); goodput under the burst {:.0}/s = {:.2}x of the sustainable rate",
        ms(burst.shed_p99()),
        burst.admitted_rate(),
        burst.admitted_rate() / rate,
    );
    if options.h2load {
        h2load_flood(&options, &shedding, workload, unloaded_rate, unloaded.p99()).await?;
    }
    Ok(())
}
