//! The real `tierkv` binary as a child process: started on 127.0.0.1:0 with
//! JSON logs, its announced address read from stderr, every log line kept.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The binary under test.
pub const BINARY: &str = env!("CARGO_BIN_EXE_tierkv");

/// A server process and the address it announced.
pub struct ServerProcess {
    /// The process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Every line it wrote to stderr so far.
    pub stderr: Arc<Mutex<Vec<String>>>,
}

impl ServerProcess {
    /// The `http://` endpoint clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its log so far, one line per entry.
    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// `tierkv serve` on port 0 over `data_dir`, logging JSON, with no shutdown
/// delay (tests that need one set `TIERKV_SHUTDOWN_DELAY_MS`).
pub fn server_command(data_dir: &Path) -> Command {
    let mut command = Command::new(BINARY);
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .env("TIERKV_LOG_FORMAT", "json")
        .env("TIERKV_SHUTDOWN_DELAY_MS", "0")
        // Tests run in parallel: every server gets its own metrics port.
        .env("TIERKV_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Starts the binary and waits for its "serving" log line.
pub fn spawn_server(mut command: Command) -> ServerProcess {
    let mut child = command.spawn().expect("spawn tierkv");
    let stderr = child.stderr.take().expect("stderr");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = mpsc::channel();
    let collected = Arc::clone(&lines);
    // Keep draining stderr for the life of the process so it never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let serving = serde_json::from_str::<serde_json::Value>(&line)
                .ok()
                .filter(|json| json["message"] == "serving")
                .and_then(|json| json["addr"].as_str()?.parse::<SocketAddr>().ok());
            // Kept before the address is announced, so that the logs a test
            // reads once spawn_server returns hold the "serving" line.
            collected.lock().unwrap().push(line);
            if let Some(addr) = serving {
                let _ = addr_tx.send(addr);
            }
        }
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "server did not announce its address: {:?}",
                lines.lock().unwrap()
            )
        });
    ServerProcess {
        child,
        addr,
        stderr: lines,
    }
}

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`...).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// User plus system CPU time of a process, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    // Fields after the command name (which may hold spaces) in parentheses.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Open descriptors of a process.
pub fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("proc fd")
        .count()
}
