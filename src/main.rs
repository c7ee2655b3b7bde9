//! The `tierkv` binary: server and command-line client.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    tierkv::cli::main().await
}
