//! `tierkv kv get`: a key's value as it is, or with `--with-metadata` a JSON
//! object of the value, metadata, expiration and versions.

use std::io::Write;
use std::process::ExitCode;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use pb::kv_service_client::KvServiceClient;

use super::{CliError, TypeArg};
use crate::api::convert::json_from_proto;
use crate::cli::CliChannel as Channel;
use crate::proto::v1 as pb;

pub(super) async fn get(
    client: &mut KvServiceClient<Channel>,
    key: String,
    value_type: Option<TypeArg>,
    with_metadata: bool,
) -> Result<ExitCode, CliError> {
    let value_type = match value_type {
        None => pb::ValueType::Unspecified,
        Some(TypeArg::Text) => pb::ValueType::Text,
        Some(TypeArg::Json) => pb::ValueType::Json,
        Some(TypeArg::Bytes) => pb::ValueType::Bytes,
    };
    let response = client
        .get(pb::GetRequest {
            key: key.clone(),
            r#type: value_type as i32,
            fallback: None,
        })
        .await?
        .into_inner();
    if !response.found {
        eprintln!("{key:?} not found");
        return Ok(ExitCode::from(1));
    }
    let mut stdout = std::io::stdout().lock();
    let write_error =
        |error: std::io::Error| CliError::Usage(format!("cannot write output: {error}"));
    if with_metadata {
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
        writeln!(stdout, "{}", serde_json::Value::Object(object)).map_err(write_error)?;
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
