//! `tierkv kv put`, `delete` and `patch`: the single-key writes, and the
//! expiration options `put` shares with `bulk put`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use pb::kv_service_client::KvServiceClient;

use crate::api::convert::{json_from_proto, json_to_proto};
use crate::cli::error::CliError;
use crate::cli::CliChannel as Channel;
use crate::proto::v1 as pb;

pub(super) fn parse_json(what: &str, text: &str) -> Result<serde_json::Value, CliError> {
    serde_json::from_str(text)
        .map_err(|error| CliError::Usage(format!("{what} is not valid JSON: {error}")))
}

/// The value of `kv put`: the VALUE argument as text, or the bytes of
/// `--path FILE` or of stdin (`-`), as JSON with `--json`, decoded from
/// base64 with `--base64`.
pub(super) fn read_value(
    value: Option<String>,
    path: Option<&Path>,
    json: bool,
    base64: bool,
) -> Result<pb::put_request::Value, CliError> {
    let bytes = match (value, path) {
        (_, Some(path)) => std::fs::read(path)
            .map_err(|error| CliError::Usage(format!("--path {}: {error}", path.display())))?,
        (Some(value), None) if value == "-" => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .map_err(|error| {
                    CliError::Usage(format!("cannot read the value from stdin: {error}"))
                })?;
            bytes
        }
        (Some(value), None) if !json && !base64 => return Ok(pb::put_request::Value::Text(value)),
        (Some(value), None) => value.into_bytes(),
        (None, None) => {
            return Err(CliError::Usage(
                "give a VALUE, `-` for stdin, or --path FILE".into(),
            ))
        }
    };
    if base64 {
        // Line breaks (`base64` wraps at 76 columns) and the final newline
        // are not part of the encoding.
        let text: Vec<u8> = bytes
            .into_iter()
            .filter(|byte| !byte.is_ascii_whitespace())
            .collect();
        let decoded = BASE64
            .decode(&text)
            .map_err(|error| CliError::Usage(format!("the value is not valid base64: {error}")))?;
        return Ok(pb::put_request::Value::Bytes(decoded));
    }
    if json {
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|error| CliError::Usage(format!("VALUE is not valid JSON: {error}")))?;
        return Ok(pb::put_request::Value::Json(json_to_proto(value)));
    }
    Ok(pb::put_request::Value::Bytes(bytes))
}

pub(super) fn put_request(
    key: String,
    value: pb::put_request::Value,
    ttl: Option<u64>,
    expiration: Option<i64>,
    metadata: Option<String>,
) -> Result<pb::PutRequest, CliError> {
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
