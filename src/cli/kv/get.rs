//! `tierkv kv get`: a key's value as it is, or with `--output json` a JSON
//! object of the value, metadata, expiration and versions; `kv get-many`:
//! several keys in one BatchGet.

use std::io::Write;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use pb::kv_service_client::KvServiceClient;

use super::TypeArg;
use crate::api::convert::json_from_proto;
use crate::cli::error::{CliError, EXIT_NOT_FOUND};
use crate::cli::output::{print_rows, OutputFormat};
use crate::cli::CliChannel as Channel;
use crate::proto::v1 as pb;

fn value_type(value_type: Option<TypeArg>) -> pb::ValueType {
    match value_type {
        None => pb::ValueType::Unspecified,
        Some(TypeArg::Text) => pb::ValueType::Text,
        Some(TypeArg::Json) => pb::ValueType::Json,
        Some(TypeArg::Bytes) => pb::ValueType::Bytes,
    }
}

/// `kv get`: the value as it is, or (`json`) the object of [`result_json`].
pub(super) async fn get(
    client: &mut KvServiceClient<Channel>,
    key: String,
    value_type: Option<TypeArg>,
    json: bool,
) -> Result<ExitCode, CliError> {
    let response = client
        .get(pb::GetRequest {
            key: key.clone(),
            r#type: self::value_type(value_type) as i32,
            fallback: None,
        })
        .await?
        .into_inner();
    if !response.found {
        eprintln!("{key:?} not found");
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    let mut stdout = std::io::stdout().lock();
    let write_error = CliError::Output;
    if json {
        let mut object = result_json(response)?;
        // `kv get` has always printed these members, and no `found`.
        if let Some(object) = object.as_object_mut() {
            object.remove("found");
            object.remove("key");
        }
        writeln!(stdout, "{object}").map_err(write_error)?;
        return Ok(ExitCode::SUCCESS);
    }
    match response.value {
        Some(pb::get_response::Value::Text(text)) => stdout.write_all(text.as_bytes()),
        Some(pb::get_response::Value::Bytes(bytes)) => stdout.write_all(&bytes),
        Some(pb::get_response::Value::Json(json)) => {
            let json = json_from_proto(json).map_err(CliError::Usage)?;
            writeln!(stdout, "{json}")
        }
        None => Ok(()),
    }
    .map_err(write_error)?;
    Ok(ExitCode::SUCCESS)
}

/// `kv get-many`: one BatchGet, printed as `format`; exit code 1 when any
/// key is missing.
pub(super) async fn get_many(
    client: &mut KvServiceClient<Channel>,
    keys: Vec<String>,
    value_type: Option<TypeArg>,
    format: OutputFormat,
) -> Result<ExitCode, CliError> {
    let response = client
        .batch_get(pb::BatchGetRequest {
            keys,
            r#type: self::value_type(value_type) as i32,
            fallback: None,
        })
        .await?
        .into_inner();
    let mut missing = 0;
    let mut rows = Vec::with_capacity(response.results.len());
    for result in response.results {
        missing += usize::from(!result.found);
        rows.push(result_json(result)?);
    }
    print_rows(
        format,
        &["key", "found", "version", "expiration", "value"],
        &rows,
    )?;
    if missing > 0 {
        eprintln!("{missing} of {} keys not found", rows.len());
        return Ok(ExitCode::from(EXIT_NOT_FOUND));
    }
    Ok(ExitCode::SUCCESS)
}

/// A read's result as a JSON object: key, found, value (bytes that are not
/// UTF-8 as base64, with `"base64": true`), metadata, expiration (seconds
/// since the epoch), version and schema version.
pub(super) fn result_json(response: pb::GetResponse) -> Result<serde_json::Value, CliError> {
    let (value, is_base64) = match response.value {
        Some(pb::get_response::Value::Text(text)) => (serde_json::Value::String(text), false),
        Some(pb::get_response::Value::Json(json)) => {
            (json_from_proto(json).map_err(CliError::Usage)?, false)
        }
        Some(pb::get_response::Value::Bytes(bytes)) => match String::from_utf8(bytes) {
            Ok(text) => (serde_json::Value::String(text), false),
            Err(error) => (
                serde_json::Value::String(BASE64.encode(error.into_bytes())),
                true,
            ),
        },
        None => (serde_json::Value::Null, false),
    };
    let mut object = serde_json::Map::new();
    object.insert("key".into(), response.key.into());
    object.insert("found".into(), response.found.into());
    object.insert("value".into(), value);
    if is_base64 {
        object.insert("base64".into(), true.into());
    }
    object.insert(
        "metadata".into(),
        response
            .metadata
            .map(json_from_proto)
            .transpose()
            .map_err(CliError::Usage)?
            .unwrap_or(serde_json::Value::Null),
    );
    object.insert(
        "expiration".into(),
        response
            .expire_time
            .map_or(serde_json::Value::Null, |at| at.seconds.into()),
    );
    object.insert("version".into(), response.version.into());
    object.insert("schema_version".into(), response.schema_version.into());
    Ok(serde_json::Value::Object(object))
}
