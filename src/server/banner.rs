//! The few lines `tierkv serve` prints on stdout once its sockets are bound
//! and its store is open (`make run`'s "serving" banner): where to connect,
//! where the data lives, where metrics are, and three commands to paste.
//! Only with human logs: JSON logs mean a machine reads the output.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use crate::config::Config;

/// What the banner reports about the metrics listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsState {
    /// Serving on this address.
    On(SocketAddr),
    /// `metrics_listen = "off"`.
    Off,
    /// The default address was taken, so the server runs without metrics.
    Taken(SocketAddr),
}

/// The banner, ending with a blank line. `program` is how to invoke this
/// binary from the working directory (see [`program_for_banner`]).
pub fn banner(config: &Config, grpc: SocketAddr, metrics: MetricsState, program: &str) -> String {
    let tls = config.tls.enabled();
    // A wildcard listen address is reachable on loopback; clients cannot dial 0.0.0.0.
    let dial = match grpc.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(
            match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            },
            grpc.port(),
        ),
        _ => grpc,
    };
    let endpoint = format!("{}://{dial}", if tls { "https" } else { "http" });
    let data = config
        .data_dir
        .canonicalize()
        .unwrap_or_else(|_| config.data_dir.clone());
    let metrics = match metrics {
        MetricsState::On(addr) => format!("http://{addr}/metrics"),
        MetricsState::Off => "off (metrics_listen = \"off\")".to_string(),
        MetricsState::Taken(addr) => format!(
            "off: {addr} is taken (set metrics_listen, TIERKV_METRICS_LISTEN or --metrics-listen)"
        ),
    };
    // The client commands default to the default listen address (the CLI's
    // DEFAULT_ENDPOINT); name the endpoint only when it differs.
    let connect = if endpoint == format!("http://{}", Config::default().listen) {
        String::new()
    } else {
        format!(" --endpoint {endpoint}")
    };
    let program = shell_quote(program);
    let grpcurl_tls = if tls { "" } else { "-plaintext " };
    let mut out = format!(
        "tierkv is serving gRPC on {grpc} ({})\n  data:     {}\n  metrics:  {metrics}\nTry:\n",
        if tls { "TLS" } else { "plaintext" },
        data.display(),
    );
    out.push_str(&format!("    {program} kv put hello world{connect}\n"));
    out.push_str(&format!("    {program} kv get hello{connect}\n"));
    out.push_str(&format!("    grpcurl {grpcurl_tls}{dial} list\n"));
    if !config.auth.tokens.is_empty() {
        out.push_str(
            "  # tokens are required: export TIERKV_TOKEN=<token> first \
             (grpcurl: -H 'authorization: Bearer <token>')\n",
        );
    }
    if tls {
        out.push_str(
            "  # TLS: add --ca-file <ca.pem> (grpcurl: -cacert <ca.pem>) unless the system trusts the certificate\n",
        );
    }
    out.push_str(
        "  # grpcurl: `make setup-test` puts it in .venv/bin; Ctrl-C stops the server\n\n",
    );
    out
}

/// This executable as a command to type in `cwd`: relative when it lies
/// below (`target/release/tierkv` under `make run`), absolute otherwise.
pub fn program_for_banner(exe: &Path, cwd: &Path) -> String {
    match exe.strip_prefix(cwd) {
        Ok(relative) if relative.components().count() > 1 => relative.display().to_string(),
        Ok(relative) => format!("./{}", relative.display()),
        Err(_) => exe.display().to_string(),
    }
}

/// Quotes `word` for a POSIX shell when it holds anything but plain characters.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:@,=".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_address_needs_no_endpoint_and_wildcards_dial_loopback() {
        let config = Config::default();
        let text = banner(
            &config,
            addr("0.0.0.0:50051"),
            MetricsState::On(addr("127.0.0.1:50052")),
            "target/release/tierkv",
        );
        assert!(
            text.contains("    target/release/tierkv kv get hello\n"),
            "{text}"
        );
        assert!(
            text.contains("grpcurl -plaintext 127.0.0.1:50051 list"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:50052/metrics"), "{text}");
        assert!(text.ends_with("\n\n"), "{text}");
    }

    #[test]
    fn other_ports_name_the_endpoint_and_a_taken_metrics_port_names_the_setting() {
        let text = banner(
            &Config::default(),
            addr("127.0.0.1:7000"),
            MetricsState::Taken(addr("127.0.0.1:50052")),
            "/opt/my tierkv/tierkv",
        );
        assert!(
            text.contains(
                "'/opt/my tierkv/tierkv' kv put hello world --endpoint http://127.0.0.1:7000"
            ),
            "{text}"
        );
        assert!(text.contains("TIERKV_METRICS_LISTEN"), "{text}");
    }

    #[test]
    fn programs_below_the_working_directory_are_relative() {
        let cwd = Path::new("/src/tierkv");
        assert_eq!(
            program_for_banner(Path::new("/src/tierkv/target/release/tierkv"), cwd),
            "target/release/tierkv"
        );
        assert_eq!(
            program_for_banner(Path::new("/src/tierkv/tierkv"), cwd),
            "./tierkv"
        );
        assert_eq!(
            program_for_banner(Path::new("/usr/bin/tierkv"), cwd),
            "/usr/bin/tierkv"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
