//! A real etcd cluster for tests: members of `/usr/bin/etcd` (Debian's
//! `etcd-server`; `make setup-test` installs it) on free loopback ports with
//! data in a temporary directory (on /dev/shm when there is one, so that
//! etcd's fsyncs cost little), stopped on drop.
//!
//! Every member runs in a process group of its own and is killed with its
//! group on drop; it also gets SIGKILL if the thread that started it ends
//! (`PR_SET_PDEATHSIG`), so a test binary that exits or crashes leaves no
//! etcd behind. [`shared`] is one cluster per test binary, started from a
//! thread that lives as long as the binary; tests isolate themselves on it
//! by key prefix.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// etcd flags of every test member: the limits the KV limits need (10,000
/// mutations per batch, 25 MiB values) and quick elections, so that a
/// killed leader is replaced within a second or two.
pub const TEST_FLAGS: &[&str] = &[
    "--max-txn-ops",
    "10240",
    "--max-request-bytes",
    "33554432",
    "--heartbeat-interval",
    "50",
    "--election-timeout",
    "500",
    "--snapshot-count",
    "10000",
    "--logger",
    "zap",
    "--log-outputs",
    "stderr",
    "--log-level",
    "warn",
];

/// The `--max-txn-ops` of the test members.
pub const TEST_MAX_TXN_OPS: usize = 10240;
/// The `--max-request-bytes` of the test members.
pub const TEST_MAX_REQUEST_BYTES: usize = 33_554_432;

/// The etcd binary: `TEST_ETCD_BINARY`, else `etcd` on the PATH or in /usr/bin.
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEST_ETCD_BINARY") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from("/usr/bin/etcd")])
        .find(|path| path.is_file());
    on_path.unwrap_or_else(|| {
        panic!(
            "etcd is not installed: the etcd engine's tests run a real etcd cluster. \
             Run `make setup-test` (scripts/setup.sh --with-test-tools installs Debian's \
             etcd-server), or point TEST_ETCD_BINARY at an etcd 3.4+ binary"
        )
    })
}

/// One member of a cluster.
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    child: Option<Child>,
}

/// A running etcd cluster.
pub struct EtcdCluster {
    members: Vec<Member>,
    initial_cluster: String,
    dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// What a cluster's directory starts with.
const DIR_PREFIX: &str = "tierkv-etcd-";
/// The file in a cluster's directory naming the test process that owns it.
const OWNER_FILE: &str = "owner.pid";

/// A directory for a cluster's data, named for its owner process. On
/// /dev/shm the data is memory, so directories of owners that died without
/// cleaning up (a test binary killed by a signal) are removed first.
fn temp_dir() -> TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        remove_orphaned_dirs(shm);
        tempfile::Builder::new().prefix(DIR_PREFIX).tempdir_in(shm)
    } else {
        tempfile::Builder::new().prefix(DIR_PREFIX).tempdir()
    }
    .expect("temp dir for etcd");
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())
        .expect("write the owner of the etcd dir");
    dir
}

/// Removes the cluster directories under `parent` whose owner process is
/// gone (their members died with it: `PR_SET_PDEATHSIG`).
fn remove_orphaned_dirs(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
            continue;
        }
        let owner = std::fs::read_to_string(entry.path().join(OWNER_FILE));
        let alive = match owner.ok().and_then(|pid| pid.trim().parse::<u32>().ok()) {
            Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
            // Being created right now, or from before owners were written:
            // leave it unless it is old.
            None => entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_none_or(|age| age < Duration::from_secs(3600)),
        };
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy. A
    /// port chosen free can be taken by another test before etcd binds it
    /// (seen once in CI): a member that exits at once is started again, with
    /// the whole cluster, on new ports.
    pub fn start(size: usize) -> Self {
        const ATTEMPTS: usize = 4;
        for attempt in 1..=ATTEMPTS {
            let mut cluster = Self::spawn_all(size);
            if attempt == ATTEMPTS || !cluster.a_member_exits_within(Duration::from_secs(2)) {
                cluster.wait_healthy(&(0..size).collect::<Vec<_>>());
                return cluster;
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Whether a member process ends within `wait` of its start.
    fn a_member_exits_within(&mut self, wait: Duration) -> bool {
        let settled = Instant::now() + wait;
        while Instant::now() < settled {
            let exited = self.members.iter_mut().any(|member| {
                member
                    .child
                    .as_mut()
                    .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))))
            });
            if exited {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Spawns `size` members of a new cluster on free ports.
    fn spawn_all(size: usize) -> Self {
        let dir = temp_dir();
        let members: Vec<Member> = (0..size)
            .map(|n| Member {
                name: format!("m{n}"),
                client_port: free_port(),
                peer_port: free_port(),
                data_dir: dir.path().join(format!("m{n}")),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|member| format!("{}=http://127.0.0.1:{}", member.name, member.peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            dir,
        };
        for n in 0..size {
            cluster.spawn(n);
        }
        cluster
    }

    fn spawn(&mut self, n: usize) {
        let binary = etcd_binary();
        let member = &mut self.members[n];
        let client = format!("http://127.0.0.1:{}", member.client_port);
        let peer = format!("http://127.0.0.1:{}", member.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", member.name)))
            .expect("member log");
        let mut command = Command::new(binary);
        command
            .args(["--name", &member.name])
            .arg("--data-dir")
            .arg(&member.data_dir)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "tierkv-test"])
            .args(TEST_FLAGS)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setpgid(0, 0);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        member.child = Some(command.spawn().expect("etcd starts"));
    }

    /// The client URLs of every member.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|member| format!("http://127.0.0.1:{}", member.client_port))
            .collect()
    }

    /// Whether member `n` answers its health check with a leader.
    pub fn healthy(&self, n: usize) -> bool {
        let port = self.members[n].client_port;
        let attempt = || -> std::io::Result<String> {
            let mut stream = TcpStream::connect_timeout(
                &format!("127.0.0.1:{port}").parse().unwrap(),
                Duration::from_secs(1),
            )?;
            stream.set_read_timeout(Some(Duration::from_secs(3)))?;
            stream.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
            let mut reply = String::new();
            stream.read_to_string(&mut reply)?;
            Ok(reply)
        };
        attempt().is_ok_and(|reply| reply.contains("\"health\":\"true\""))
    }

    /// Waits (up to two minutes: a loaded machine starts etcd slowly) until
    /// the members `which` are healthy.
    pub fn wait_healthy(&self, which: &[usize]) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !which.iter().all(|n| self.healthy(*n)) {
            assert!(
                Instant::now() < deadline,
                "etcd members {which:?} not healthy within 2 minutes; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|member| {
                let path = self.dir.path().join(format!("{}.log", member.name));
                format!(
                    "--- {} ---\n{}",
                    member.name,
                    std::fs::read_to_string(path).unwrap_or_default()
                )
            })
            .collect()
    }

    /// Kills member `n` with SIGKILL (its whole process group) and reaps it.
    pub fn kill(&mut self, n: usize) {
        if let Some(mut child) = self.members[n].child.take() {
            // SAFETY: a plain syscall on the group this member leads.
            unsafe {
                libc::killpg(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts member `n` again over its data (after [`EtcdCluster::kill`]).
    pub fn restart(&mut self, n: usize) {
        assert!(self.members[n].child.is_none(), "member {n} is running");
        self.spawn(n);
    }

    /// How many members the cluster has.
    pub fn size(&self) -> usize {
        self.members.len()
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for n in 0..self.members.len() {
            self.kill(n);
        }
    }
}

/// The shared cluster: a static, so never dropped; [`stop_shared`] stops it
/// and removes its data when the test binary exits.
static SHARED: OnceLock<EtcdCluster> = OnceLock::new();

/// Run by `exit` (libtest ends every test binary with it): kills the shared
/// cluster's members and removes their data, which on /dev/shm is memory
/// that would otherwise outlive the binary.
extern "C" fn stop_shared() {
    let Some(cluster) = SHARED.get() else {
        return;
    };
    for member in &cluster.members {
        if let Some(child) = &member.child {
            let pid = child.id() as i32;
            // SAFETY: plain syscalls on the group this member leads and on
            // our own child.
            unsafe {
                libc::killpg(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
    let _ = std::fs::remove_dir_all(cluster.dir.path());
}

/// One three-member cluster for the whole test binary, started on first use.
pub fn shared() -> &'static EtcdCluster {
    SHARED.get_or_init(|| {
        // SAFETY: registers a function without arguments that touches only
        // statics; it runs once, at exit.
        unsafe {
            libc::atexit(stop_shared);
        }
        // Started from a thread that never ends, so the members' death
        // signal fires only when the test binary itself exits.
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sender
                .send(EtcdCluster::start(3))
                .expect("hand over the cluster");
            loop {
                std::thread::park();
            }
        });
        receiver.recv().expect("the etcd cluster starts")
    })
}

/// A key prefix no other test of this run uses.
pub fn unique_prefix(name: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "test-{}-{}-{name}/",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `tierkv serve` (see [`super::process::server_command`]) over the etcd
/// cluster at `endpoints`, its keys under `prefix`; `data_dir` is unused by
/// the etcd engine but keeps the command's shape.
pub fn server_command(endpoints: &[String], prefix: &str, data_dir: &Path) -> Command {
    let mut command = super::process::server_command(data_dir);
    command
        .env("TIERKV_ENGINE_KIND", "etcd")
        .env("TIERKV_ENGINE_ETCD_ENDPOINTS", endpoints.join(","))
        .env("TIERKV_ENGINE_ETCD_PREFIX", prefix)
        .env(
            "TIERKV_ENGINE_ETCD_MAX_TXN_OPS",
            TEST_MAX_TXN_OPS.to_string(),
        )
        .env(
            "TIERKV_ENGINE_ETCD_MAX_REQUEST_BYTES",
            TEST_MAX_REQUEST_BYTES.to_string(),
        );
    command
}

impl EtcdCluster {
    /// The index of the member that leads now, asked of the members that
    /// answer; `None` while there is no leader.
    pub async fn leader(&self) -> Option<usize> {
        let endpoints = self.endpoints();
        for endpoint in &endpoints {
            let options = etcd_client::ConnectOptions::new()
                .with_connect_timeout(Duration::from_secs(1))
                .with_timeout(Duration::from_secs(2));
            let Ok(mut client) = etcd_client::Client::connect([endpoint], Some(options)).await
            else {
                continue;
            };
            let Ok(status) = client.status().await else {
                continue;
            };
            let leader = status.leader();
            for (n, other) in endpoints.iter().enumerate() {
                let Ok(mut client) = etcd_client::Client::connect([other], None).await else {
                    continue;
                };
                if let Ok(Ok(status)) =
                    tokio::time::timeout(Duration::from_secs(2), client.status()).await
                {
                    if status.header().map(|header| header.member_id()) == Some(leader) {
                        return Some(n);
                    }
                }
            }
        }
        None
    }
}

/// A `tierkv serve` process that is killed when dropped, so that a failing
/// test leaves no server behind (an etcd-backed one whose cluster is gone
/// would otherwise wait out its drain).
pub struct Served(pub super::process::ServerProcess);

impl std::ops::Deref for Served {
    type Target = super::process::ServerProcess;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Served {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

/// Starts `command` (see [`server_command`]) and waits until it serves.
pub fn spawn(command: Command) -> Served {
    Served(super::process::spawn_server(command))
}
