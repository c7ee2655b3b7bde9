//! `tierkv kv list`: the keys with a prefix, printed as wrangler prints a
//! listing, each page as it arrives (the output of a million keys never sits
//! in memory); or one page (`--limit`, `--cursor`) and the cursor of the next.

use std::io::Write;
use std::process::ExitCode;

use pb::kv_service_client::KvServiceClient;

use crate::api::convert::json_from_proto;
use crate::cli::error::CliError;
use crate::cli::CliChannel as Channel;
use crate::proto::v1 as pb;

/// A key as `tierkv kv list` prints it (wrangler's shape).
#[derive(Debug, serde::Serialize)]
pub(super) struct ListedKeyOutput {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    expiration: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<serde_json::Value>,
}

/// Which pages `kv list` prints.
#[derive(Debug)]
pub(super) struct Paging {
    /// Keys per page (the server's default when unset).
    pub limit: Option<u32>,
    /// Where the first page starts; empty for the beginning.
    pub cursor: String,
    /// Print one page and its next cursor, instead of every page.
    pub one_page: bool,
}

/// Lists the keys with `prefix` and prints them: a JSON array written page by
/// page (still one valid array), or with `keys_only` one name per line. With
/// `paging.one_page`, the next page's cursor goes to stderr as
/// `next cursor: C` (nothing when it was the last page).
pub(super) async fn list(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
    paging: Paging,
    keys_only: bool,
) -> Result<ExitCode, CliError> {
    // clap keeps --limit within 1 to 1000; 0 asks for the server's default.
    let page_size = paging
        .limit
        .map_or(Ok(0), i32::try_from)
        .map_err(|_| CliError::Usage("--limit is above 1000".into()))?;
    let mut stdout = std::io::stdout().lock();
    let output = CliError::Output;
    let mut page_token = paging.cursor;
    let mut first = true;
    if !keys_only {
        stdout.write_all(b"[").map_err(output)?;
    }
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for key in page.keys {
            if keys_only {
                writeln!(stdout, "{}", key.name).map_err(output)?;
                continue;
            }
            let listed = ListedKeyOutput {
                name: key.name,
                expiration: key.expire_time.map(|at| at.seconds),
                metadata: key
                    .metadata
                    .map(json_from_proto)
                    .transpose()
                    .map_err(CliError::Usage)?,
            };
            let separator: &[u8] = if first { b"\n  " } else { b",\n  " };
            first = false;
            stdout.write_all(separator).map_err(output)?;
            serde_json::to_writer(&mut stdout, &listed)
                .map_err(|error| CliError::Output(error.into()))?;
        }
        // The page goes out before the next is asked for.
        stdout.flush().map_err(output)?;
        if paging.one_page {
            if !page.next_page_token.is_empty() {
                eprintln!("next cursor: {}", page.next_page_token);
            }
            break;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    if !keys_only {
        let end: &[u8] = if first { b"]\n" } else { b"\n]\n" };
        stdout.write_all(end).map_err(output)?;
    }
    Ok(ExitCode::SUCCESS)
}
