//! `tierkv kv list`: every key with a prefix, paged through, printed as
//! wrangler prints a listing.

use pb::kv_service_client::KvServiceClient;

use super::CliError;
use crate::api::convert::json_from_proto;
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

pub(super) async fn list_all(
    client: &mut KvServiceClient<Channel>,
    prefix: &str,
) -> Result<Vec<ListedKeyOutput>, CliError> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                prefix: prefix.to_string(),
                page_size: 0,
                page_token: page_token.clone(),
            })
            .await?
            .into_inner();
        for key in page.keys {
            keys.push(ListedKeyOutput {
                name: key.name,
                expiration: key.expire_time.map(|at| at.seconds),
                metadata: key
                    .metadata
                    .map(json_from_proto)
                    .transpose()
                    .map_err(CliError::Usage)?,
            });
        }
        if page.next_page_token.is_empty() {
            return Ok(keys);
        }
        page_token = page.next_page_token;
    }
}
