//! The configuration reference: every key of the file, its default and what
//! it does. It is the one source of `tierkv config example` (a complete,
//! commented file), of `tierkv config check`'s list of known keys, and of the
//! table in docs/configuration.md (`tierkv config reference` prints it; a test
//! fails when the document drifts). The tests below fail when a field of the
//! configuration structs has no entry here, and when an entry's default is
//! not the default the server applies.

use super::env;

/// What a key is when the file does not set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// This value, as TOML.
    Value(&'static str),
    /// Unset: what that means ("unset (backups off)", "required"), and an
    /// example value, as TOML, that `config example` shows commented out.
    Unset {
        /// What leaving it out means.
        meaning: &'static str,
        /// A value to show.
        example: &'static str,
    },
}

/// One key of the configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The key, dotted from its table (`listen`, `session.prefix`); `[]`
    /// marks an array of tables (`cache.origins[].url` is `url` in a
    /// `[[cache.origins]]` table).
    pub key: &'static str,
    /// Its default.
    pub default: Default,
    /// What it does, in Markdown (one paragraph; backticks and nothing else).
    pub doc: &'static str,
}

impl Setting {
    /// The table the key lives in (`""` for the top level, `cache.origins[]`),
    /// and its name there.
    pub fn table_and_name(&self) -> (&'static str, &'static str) {
        match self.key.rfind('.') {
            Some(dot) => (&self.key[..dot], &self.key[dot + 1..]),
            None => ("", self.key),
        }
    }

    /// The `TIERKV_*` variable that overrides it, if one does.
    pub fn env(&self) -> Option<&'static str> {
        env::variable_for(self.key)
    }
}

const fn set(key: &'static str, value: &'static str, doc: &'static str) -> Setting {
    Setting {
        key,
        default: Default::Value(value),
        doc,
    }
}

const fn unset(
    key: &'static str,
    meaning: &'static str,
    example: &'static str,
    doc: &'static str,
) -> Setting {
    Setting {
        key,
        default: Default::Unset { meaning, example },
        doc,
    }
}

/// Every key, in the order `config example` prints them: the top level,
/// then each table; a table's keys together.
pub const SETTINGS: &[Setting] = &[
    set("listen", "\"127.0.0.1:50051\"",
        "address to serve gRPC on; any address but loopback needs authentication (see Authentication and Exposure)"),
    set("allow_unauthenticated", "false",
        "serve without authentication (no `[[auth.tokens]]`, no `tls.client_ca_file`) on an address other than loopback; without it such a server refuses to start. Set it only when something else (a mesh policy, a firewall) guards the port; the server warns at start"),
    set("metrics_listen", "\"127.0.0.1:50052\"",
        "HTTP listener for `/metrics` (Prometheus), `/healthz` and `/readyz`; `off` disables it. Left at the default, a taken port turns metrics off with a warning and the server starts; any other address must bind or the server does not start (docs/setup.md)"),
    set("data_dir", "\"./data\"",
        "RocksDB directory"),
    unset("backup_dir", "unset (backups off)", "\"/var/lib/tierkv/backups\"",
        "where `AdminService.Backup` writes backups, one directory each; not inside `data_dir`; on the same file system, table files are hard-linked"),
    set("namespaces", "[\"user:\", \"session:\", \"cache:\", \"feature:\"]",
        "prefixes with a column family of their own (at most 256); keys matching none go to `default`"),
    set("sync_writes", "false",
        "fsync the write-ahead log before acknowledging each write"),
    set("block_cache_mb", "128",
        "RocksDB block cache shared by all namespaces"),
    set("expiry_grace_secs", "3600",
        "compaction removes an expired record from disk only once it has been expired this long; protects data from a clock stepped forward by less (reads hide expired records at once regardless)"),
    set("write_queue_mb", "256",
        "most MiB of writes waiting for or being committed by the writer thread; further writers wait. At least 100 (the largest `BatchWrite`)"),
    set("request_timeout_ms", "30000",
        "longest a request may run (0: only the client's deadline)"),
    set("shutdown_delay_ms", "5000",
        "on shutdown, how long calls are still served after health turns `NOT_SERVING`, so load balancers stop routing here first"),
    set("shutdown_grace_ms", "10000",
        "then how long in-flight calls get to finish before their connections are closed"),
    set("max_connections", "10000",
        "most client connections at once; more are closed as soon as accepted (logged at most every 10 s)"),
    set("handshake_timeout_ms", "10000",
        "a new connection that has not sent the HTTP/2 preface by then is closed"),
    set("max_concurrent_streams", "256",
        "most concurrent calls per connection, advertised in HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`"),
    set("max_calls_in_flight", "2048",
        "most calls in progress across all connections, each counted from when its headers are read until its response message is encoded (a stream: its first message); more are refused at once with RESOURCE_EXHAUSTED (health checks exempt; health `Watch` and reflection streams count like calls); `0` disables. see Overload for sizing"),
    set("max_watch_streams_per_connection", "8",
        "most long streams (`KvService.Watch`, health `Watch` and reflection) open at once on one connection (at least 1); more are refused with RESOURCE_EXHAUSTED (`ErrorInfo` reason `TOO_MANY_WATCH_STREAMS`). Anyone may open them and keep them open, so this bounds them by `max_connections`"),
    set("max_connection_age_secs", "0",
        "end connections gracefully (GOAWAY) at this age, so clients rebalance across pods (never)"),
    set("max_connection_age_grace_secs", "30",
        "how long calls may run on a connection past its maximum age"),
    set("request_memory_mb", "1024",
        "bytes of request messages held at once across all calls (at least 104, the largest message)"),
    set("request_memory_wait_ms", "1000",
        "how long a request waits for room in `request_memory_mb` before `RESOURCE_EXHAUSTED`"),
    set("response_memory_mb", "512",
        "bytes of reply messages produced and not yet written to their clients, across all calls (at least 104, the largest message). While it is spent, new calls are refused with `RESOURCE_EXHAUSTED` (`ErrorInfo` `RESPONSE_MEMORY_FULL`, `RetryInfo`); a reply that does not fit when it is produced is dropped and its call answered the same way"),
    set("response_send_timeout_ms", "30000",
        "how long a reply message over 16 KiB may take to be written once produced; a slower one is dropped and its stream reset (`RST_STREAM` `CANCEL`: clients see `CANCELLED`). Smaller replies count against `response_memory_mb` until written, without a timeout"),
    set("log_format", "\"human\"",
        "`human` or `json` (one object per line)"),
    set("log_level", "\"info\"",
        "`tracing` filter, e.g. `info,tierkv=debug`; `RUST_LOG` wins"),
    set("session.prefix", "\"session:\"",
        "the session namespace; must be one of `namespaces`; owned by the SessionService"),
    set("session.default_ttl_secs", "86400",
        "lifetime of a session created without `ttl`"),
    set("session.max_ttl_secs", "2592000",
        "longest `ttl` or `idle_timeout` (30 days)"),
    set("session.default_idle_timeout_secs", "0",
        "idle timeout of a session created without one (none)"),
    set("session.touch_interval_secs", "60",
        "a touch writes at most once per interval (and at least once per half idle timeout)"),
    set("session.max_user_id_bytes", "128",
        "longest `user_id` (at most 256)"),
    set("session.max_data_bytes", "65536",
        "largest `data`, serialized JSON (at most 1 MiB)"),
    set("session.max_metadata_bytes", "4096",
        "largest `metadata`, serialized JSON (at most 64 KiB)"),
    unset("tls.cert_file", "none", "\"/etc/tierkv/tls/tls.crt\"",
        "PEM certificate chain (leaf first); with `tls.key_file`, the gRPC port speaks TLS only"),
    unset("tls.key_file", "none", "\"/etc/tierkv/tls/tls.key\"",
        "PEM private key of the certificate (PKCS#8, PKCS#1 or SEC1)"),
    unset("tls.client_ca_file", "none", "\"/etc/tierkv/tls/ca.crt\"",
        "PEM CA certificate(s); when set, every client must present a certificate one of them signed (mutual TLS)"),
    set("tls.reload_interval_secs", "30",
        "how often, at most, the certificate files are checked; changed files are served to new connections without a restart"),
    unset("auth.tokens[].name", "required", "\"orders-service\"",
        "a name for logs and messages (never the token). Tokens are reloaded on SIGHUP; see Authentication"),
    unset("auth.tokens[].token_sha256", "one of the two", "\"…64 hex digits…\"",
        "SHA-256 of the token, 64 hex digits (`tierkv auth new-token` makes a token and its hash, `tierkv auth hash-token` hashes one)"),
    unset("auth.tokens[].token_sha256_file", "one of the two", "\"/etc/tierkv-secrets/orders.sha256\"",
        "a file holding `token_sha256` instead (a mounted Kubernetes Secret), so the configuration carries no credential material; read whenever the tokens are loaded"),
    unset("auth.tokens[].prefixes", "`[]` (no keys)", "[\"orders:\", \"session:\"]",
        "key prefixes the token may read and/or write; `\"\"` is every key"),
    unset("auth.tokens[].permissions", "required", "[\"read\", \"write\"]",
        "what it may do there: `read`, `write`; and AdminService calls: `stats`, `migrate`, `backup`, `drop` (`admin`, deprecated, is the last four)"),
    unset("migrations[].prefix", "required", "\"user:\"",
        "keys starting with it (the longest matching prefix wins); it must lie inside a configured namespace not owned by a service"),
    unset("migrations[].from", "required", "1",
        "the schema version the step applies to (at least 1)"),
    unset("migrations[].to", "required", "2",
        "`from + 1`; a prefix's steps form one contiguous chain, and the last `to` is its target version"),
    unset("migrations[].patch", "required", "'[{\"op\": \"copy\", \"from\": \"/name\", \"path\": \"/userName\"}]'",
        "an RFC 6902 JSON Patch document, as a string (TOML literal strings `'…'` keep JSON quotes readable)"),
    set("cache.memory_mb", "64",
        "bound of the cache's memory tier (L1), MiB of keys and values (1 to 1048576)"),
    set("cache.max_concurrent_fetches", "256",
        "most origin requests in flight at once, all origins together (1 to 65536); beyond it a read that needs an origin is refused `RESOURCE_EXHAUSTED` (docs/cache.md, origin load)"),
    unset("cache.origins[].prefix", "required", "\"cache:api:\"",
        "keys starting with it read through this origin; it must lie inside one configured namespace (not `session:`, not spanning a nested namespace); unique; the longest matching prefix wins"),
    unset("cache.origins[].url", "required", "\"https://api.example.com/{key}\"",
        "`http://` or `https://` URL template with exactly one `{key}`, in the path; no credentials, no fragment"),
    set("cache.origins[].memory_ttl", "\"60s\"",
        "how long a value stays in memory (L1); `\"0\"` keeps it out; at most `store_ttl`"),
    set("cache.origins[].store_ttl", "\"300s\"",
        "how long a value is stored (L2, an ordinary record); at least `1s`"),
    set("cache.origins[].timeout", "\"10s\"",
        "longest an origin request may take, connection, headers and body together; the caller's shorter deadline wins"),
    set("cache.origins[].stale_while_revalidate", "\"0\"",
        "past expiry, serve the old value at once for this long while one background request refreshes it"),
    set("cache.origins[].stale_if_error", "\"0\"",
        "past expiry, serve the old value for this long when the origin fails or times out"),
    set("cache.origins[].negative_ttl", "\"30s\"",
        "how long a 404 or 410 is remembered; `\"0\"` asks every time; otherwise at least `1s`"),
    set("cache.origins[].max_body_bytes", "26214400",
        "largest body accepted from the origin (at most the 25 MiB value limit) (25 MiB)"),
    set("cache.origins[].honor_cache_control", "true",
        "obey the origin's `Cache-Control`: `no-store`/`private` are not stored, `no-cache` revalidates, `s-maxage`/`max-age` (else `Expires` − `Date`; less `Age`) cap the TTLs, `must-revalidate` forbids stale serving, `stale-while-revalidate`/`stale-if-error` narrow the windows"),
    set("cache.origins[].headers", "{}",
        "extra request headers, e.g. `{ Authorization = \"Bearer …\" }`; values are never logged; `Host`, framing, `Range` and conditional headers are refused"),
    unset("cache.origins[].ca_file", "none", "\"/etc/tierkv/origin-ca.pem\"",
        "PEM file of extra root certificates for this origin, on top of the system and webpki roots"),
    set("cache.origins[].max_concurrent_fetches", "32",
        "most requests to this origin in flight at once (1 to 65536), background refreshes and fills whose callers gave up included; beyond it `RESOURCE_EXHAUSTED` with a retry delay (docs/cache.md, origin load)"),
    set("cache.origins[].max_store_entries", "100000",
        "most records the cache keeps stored from this origin's answers; beyond it answers are served but not stored (nothing is evicted; client-written records are not counted)"),
    set("cache.origins[].max_store_bytes", "1073741824",
        "most bytes (key, value and cache metadata) of those records; beyond it, as for `max_store_entries` (1 GiB)"),
    set("engine.kind", "\"rocksdb\"",
        "`rocksdb` (embedded, in `data_dir`) or `etcd` (`[engine.etcd]`: several stateless replicas over one etcd cluster; `data_dir`, `sync_writes`, `block_cache_mb`, `write_queue_mb` and `backup_dir` do not apply; docs/replicas.md)"),
    set("engine.etcd.endpoints", "[\"http://127.0.0.1:2379\"]",
        "the etcd members' client URLs (the variable takes them comma-separated); `https://` with TLS"),
    set("engine.etcd.prefix", "\"tierkv/\"",
        "key prefix isolating this tierkv cluster in etcd; every replica of one cluster uses the same"),
    set("engine.etcd.dial_timeout_ms", "5000",
        "longest connection attempt to a member"),
    set("engine.etcd.request_timeout_ms", "10000",
        "longest etcd request; past it the call answers `UNAVAILABLE` (retryable)"),
    unset("engine.etcd.ca_file", "none", "\"/etc/tierkv/etcd-ca.pem\"",
        "PEM CA of etcd's server certificates (TLS towards etcd)"),
    unset("engine.etcd.cert_file", "none", "\"/etc/tierkv/etcd-client.pem\"",
        "PEM client certificate, for etcd's `--client-cert-auth`"),
    unset("engine.etcd.key_file", "none", "\"/etc/tierkv/etcd-client-key.pem\"",
        "PEM key of `cert_file`"),
    unset("engine.etcd.user", "none", "\"tierkv\"",
        "etcd user (etcd authentication)"),
    unset("engine.etcd.password", "none", "\"secret\"",
        "etcd password of `user`; never logged"),
    set("engine.etcd.max_txn_ops", "128",
        "the cluster's `--max-txn-ops`; a batch needing more etcd operations is refused `INVALID_ARGUMENT` naming the flag"),
    set("engine.etcd.max_request_bytes", "1572864",
        "the cluster's `--max-request-bytes`; a larger batch or value is refused `INVALID_ARGUMENT` naming the flag"),
    set("watch.max_watchers", "1024",
        "most `KvService.Watch` streams open at once on this server; more are refused with RESOURCE_EXHAUSTED. Each holds a task and up to `buffer_bytes` (docs/watch.md)"),
    set("watch.buffer_bytes", "4194304",
        "most bytes of events one watcher holds for a client that does not read them (at least 65536); past it the watcher is ended with RESOURCE_EXHAUSTED and the last position it sent, and the client resumes from history"),
    set("watch.history_events", "1000000",
        "most events the history keeps for resuming; older ones are trimmed in the background; 0: no bound by count"),
    set("watch.history_age_secs", "86400",
        "longest the history keeps an event, in seconds; 0: no bound by age (not both 0)"),
];

/// The settings of one table, in order.
fn tables() -> Vec<(&'static str, Vec<&'static Setting>)> {
    let mut tables: Vec<(&'static str, Vec<&'static Setting>)> = Vec::new();
    for setting in SETTINGS {
        let (table, _) = setting.table_and_name();
        match tables.iter_mut().find(|(name, _)| *name == table) {
            Some((_, settings)) => settings.push(setting),
            None => tables.push((table, vec![setting])),
        }
    }
    tables
}

/// `text` as `#` comment lines of at most `width` columns.
fn comment(text: &str, width: usize, out: &mut String) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > width && line.len() > 1 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
}

/// A complete configuration file: every key with its default (keys unset by
/// default, and arrays of tables, commented out with an example), each
/// under a comment saying what it does and which variable overrides it.
/// Parsed as it is, it configures exactly the defaults.
pub fn example() -> String {
    let mut out = String::new();
    comment(
        "tierkv configuration: every key with its default. `tierkv serve --config FILE` reads it \
         (or TIERKV_CONFIG); TIERKV_* variables override the file, and --listen, --data-dir and \
         --metrics-listen override both. Unknown keys stop the server; `tierkv config check FILE` \
         names each unknown or wrong key with its line. Keys commented out are unset by default. \
         docs/configuration.md explains each setting at length.",
        98,
        &mut out,
    );
    for (table, settings) in tables() {
        let array = table.strip_suffix("[]");
        out.push('\n');
        match array {
            Some(name) => out.push_str(&format!("# [[{name}]]   (none by default)\n")),
            None if !table.is_empty() => out.push_str(&format!("[{table}]\n")),
            None => {}
        }
        for (index, setting) in settings.into_iter().enumerate() {
            if index > 0 {
                out.push('\n');
            }
            let (_, name) = setting.table_and_name();
            let mut doc = setting.doc.to_string();
            if let Some(env) = setting.env() {
                doc.push_str(&format!(" (env {env})"));
            }
            if let Default::Unset { meaning, .. } = setting.default {
                doc.push_str(&format!(" [{meaning}]"));
            }
            comment(&doc, 98, &mut out);
            match (setting.default, array) {
                (Default::Value(value), None) => out.push_str(&format!("{name} = {value}\n")),
                (Default::Value(value), Some(_)) => out.push_str(&format!("# {name} = {value}\n")),
                (Default::Unset { example, .. }, _) => {
                    out.push_str(&format!("# {name} = {example}\n"))
                }
            }
        }
    }
    out
}

/// The line docs/configuration.md has before the generated table.
pub const BEGIN_MARKER: &str =
    "<!-- generated by `tierkv config reference` (src/config/reference.rs); do not edit by hand -->";
/// The line after it.
pub const END_MARKER: &str = "<!-- end of the generated reference -->";

/// The reference table of docs/configuration.md.
pub fn markdown() -> String {
    let mut out = String::from("| key | env | default | meaning |\n|---|---|---|---|\n");
    for setting in SETTINGS {
        let key = setting.key;
        let env = setting
            .env()
            .map(|env| format!("`{env}`"))
            .unwrap_or_else(|| "(file only)".to_string());
        let default = match setting.default {
            Default::Value(value) => format!("`{value}`"),
            Default::Unset { meaning, .. } => meaning.to_string(),
        };
        out.push_str(&format!(
            "| `{key}` | {env} | {default} | {} |\n",
            setting.doc.replace('|', "\\|")
        ));
    }
    out
}

/// Whether `key` (dotted, `[]` after an array of tables) is a key of the
/// file, or lies inside one whose value is a free-form table (`headers`).
pub fn is_known(key: &str) -> bool {
    SETTINGS.iter().any(|setting| {
        setting.key == key
            || (matches!(setting.default, Default::Value("{}"))
                && key.starts_with(setting.key)
                && key[setting.key.len()..].starts_with('.'))
    })
}

#[cfg(test)]
mod tests;
