//! `tierkv kv put`, `delete` and `patch`: the single-key writes, and the
//! expiration options `put` shares with `bulk put`.

use std::process::ExitCode;

use pb::kv_service_client::KvServiceClient;

use super::CliError;
use crate::api::convert::{json_from_proto, json_to_proto};
use crate::cli::CliChannel as Channel;
use crate::proto::v1 as pb;

pub(super) fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(text)
        .map_err(|error| CliError::Usage(format!("{what} is not valid JSON: {error}")))
}

pub(super) fn put_request(
    key: String,
    value: String,
    json: bool,
    ttl: Option<u64>,
    expiration: Option<i64>,
    metadata: Option<String>,
) -> Result<pb::PutRequest, CliError> {
    let value = if json {
        pb::put_request::Value::Json(json_to_proto(parse_json("VALUE", &value)?))
    } else {
        pb::put_request::Value::Text(value)
    };
    Ok(pb::PutRequest {
        key,
        value: Some(value),
        metadata: metadata
            .map(|text| parse_json("--metadata", &text).map(json_to_proto))
            .transpose()?,
        expiration: expiration_from(ttl, expiration)?,
        ..Default::default()
    })
}

pub(super) fn expiration_from(
    ttl: Option<u64>,
    expiration: Option<i64>,
) -> Result<Option<pb::put_request::Expiration>, CliError> {
    match (ttl, expiration) {
        (Some(_), Some(_)) => Err(CliError::Usage(
            "give either an expiration or a ttl, not both".into(),
        )),
        (Some(seconds), None) => Ok(Some(pb::put_request::Expiration::Ttl(
            prost_types::Duration {
                seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                nanos: 0,
            },
        ))),
        (None, Some(seconds)) => Ok(Some(pb::put_request::Expiration::ExpireTime(
            prost_types::Timestamp { seconds, nanos: 0 },
        ))),
        (None, None) => Ok(None),
    }
}

/// `put`: writes the request's key and reports its new version.
pub(super) async fn put(
    client: &mut KvServiceClient<Channel>,
    key: String,
    request: pb::PutRequest,
) -> Result<ExitCode, CliError> {
    let response = client.put(request).await?.into_inner();
    eprintln!("wrote {key:?} (version {})", response.version);
    Ok(ExitCode::SUCCESS)
}

/// `delete`: deletes a key, saying whether it existed.
pub(super) async fn delete(
    client: &mut KvServiceClient<Channel>,
    key: String,
) -> Result<ExitCode, CliError> {
    let response = client
        .delete(pb::DeleteRequest {
            key: key.clone(),
            if_version: None,
        })
        .await?
        .into_inner();
    if response.existed {
        eprintln!("deleted {key:?}");
    } else {
        eprintln!("{key:?} did not exist");
    }
    Ok(ExitCode::SUCCESS)
}

/// `patch`: applies a merge patch on the server and prints the value it
/// leaves.
pub(super) async fn patch(
    client: &mut KvServiceClient<Channel>,
    key: String,
    patch: &str,
    if_version: Option<u64>,
    create: bool,
) -> Result<ExitCode, CliError> {
    let request = pb::PatchRequest {
        key: key.clone(),
        merge_patch: Some(json_to_proto(parse_json("PATCH", patch)?)),
        if_version,
        create_if_missing: create,
        ..Default::default()
    };
    let response = client.patch(request).await?.into_inner();
    let value = response.value.map(json_from_proto).transpose();
    let value = value
        .map_err(|reason| CliError::Usage(format!("the server's answer: {reason}")))?
        .unwrap_or_default();
    println!("{value}");
    let what = if response.created {
        "created"
    } else {
        "patched"
    };
    eprintln!("{what} {key:?} (version {})", response.version);
    Ok(ExitCode::SUCCESS)
}
