//! `tierkv session …`: a client for the Session service of a running server.
//!
//! Every command prints JSON on stdout: a session object (with `token` only
//! after `create` and `rotate`), an array of them for `list`, or a count.
//! A TOKEN argument of `-` is read from standard input, so that tokens need
//! not appear in the process list or the shell history.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use super::CliChannel as Channel;
use clap::{Args, Subcommand};
use serde_json::{json, Map, Value};

use super::error::CliError;
use super::output::{print_rows, OutputFormat};
use super::ConnectArgs;
use crate::api::convert::{json_from_proto, json_to_proto};
use crate::proto::v1 as pb;
use pb::session_service_client::SessionServiceClient;

/// Arguments of `tierkv session`.
#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: SessionCommand,
}

#[derive(Debug, Subcommand)]
enum SessionCommand {
    /// Create a session and print it, token included.
    Create {
        /// The user the session belongs to.
        user_id: String,
        /// Absolute lifetime in seconds (default: the server's, 24 h unless configured).
        #[arg(long)]
        ttl: Option<i64>,
        /// End the session after this many seconds without a touch.
        #[arg(long)]
        idle: Option<i64>,
        /// Application data, a JSON object.
        #[arg(long)]
        data: Option<String>,
        /// Metadata (device, IP, user agent…), a JSON object.
        #[arg(long)]
        metadata: Option<String>,
    },
    /// Print the session a token belongs to (exit code 1 when there is none).
    Get {
        /// The token, or `-` to read it from stdin.
        // A token may start with `-` (base64url): a value, not an option.
        #[arg(allow_hyphen_values = true)]
        token: String,
        /// Also touch the session.
        #[arg(long)]
        touch: bool,
    },
    /// Slide the session's idle expiry forward.
    Touch {
        /// The token, or `-` to read it from stdin.
        // A token may start with `-` (base64url): a value, not an option.
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
    /// Apply a JSON merge patch (RFC 7396) to the session's data.
    Update {
        /// The token, or `-` to read it from stdin.
        // A token may start with `-` (base64url): a value, not an option.
        #[arg(allow_hyphen_values = true)]
        token: String,
        /// The patch, a JSON object.
        patch: String,
        /// Apply only if the session's version equals this.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// Replace the session's token; prints the session with the new one.
    Rotate {
        /// The token, or `-` to read it from stdin.
        // A token may start with `-` (base64url): a value, not an option.
        #[arg(allow_hyphen_values = true)]
        token: String,
    },
    /// End a session by token (or by id with --id).
    Revoke {
        /// The token (`-` reads it from stdin), or the session id with --id.
        // A token may start with `-` (base64url): a value, not an option.
        #[arg(allow_hyphen_values = true)]
        token: String,
        /// The argument is a session id, not a token.
        #[arg(long)]
        id: bool,
    },
    /// Print a user's live sessions as a JSON array (no tokens), or a table.
    List {
        /// The user.
        user_id: String,
        /// `json` (the default) or `table`.
        #[arg(long, value_enum, default_value_t = OutputFormat::Json)]
        output: OutputFormat,
    },
    /// End every session of a user.
    RevokeAll {
        /// The user.
        user_id: String,
        /// Keep this session id.
        #[arg(long)]
        except: Option<String>,
    },
}

/// Runs a `tierkv session` command; exit code 0 on success, 1 when no
/// session matched, the others as in [`super::EXIT_CODES`].
pub async fn run(args: SessionArgs) -> ExitCode {
    match execute(args).await {
        Ok(code) => code,
        Err(error) => error.report(),
    }
}

fn read_token(token: String) -> Result<String, String> {
    if token != "-" {
        return Ok(token);
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|error| format!("cannot read the token from stdin: {error}"))?;
    Ok(line.trim().to_string())
}

fn parse_object(what: &str, text: &str) -> Result<prost_types::Struct, String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => match json_to_proto(Value::Object(object)).kind {
            Some(prost_types::value::Kind::StructValue(value)) => Ok(value),
            _ => Err(format!("{what} must be a JSON object")),
        },
        Ok(_) => Err(format!("{what} must be a JSON object")),
        Err(error) => Err(format!("{what} is not valid JSON: {error}")),
    }
}

fn seconds(value: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: value,
        nanos: 0,
    }
}

/// RFC 3339 (UTC) for a timestamp.
fn rfc3339(timestamp: &prost_types::Timestamp) -> String {
    let seconds = timestamp.seconds;
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60,
        timestamp.nanos / 1_000_000
    )
}

fn struct_json(value: Option<prost_types::Struct>) -> Value {
    value.map_or(Value::Null, |value| {
        json_from_proto(prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(value)),
        })
        .unwrap_or(Value::Null)
    })
}

fn session_json(session: pb::Session) -> Value {
    let mut object = Map::new();
    if !session.token.is_empty() {
        object.insert("token".into(), session.token.into());
    }
    object.insert("session_id".into(), session.session_id.into());
    object.insert("user_id".into(), session.user_id.into());
    object.insert("data".into(), struct_json(session.data));
    object.insert("metadata".into(), struct_json(session.metadata));
    let time = |value: Option<prost_types::Timestamp>| {
        value.map_or(Value::Null, |at| Value::String(rfc3339(&at)))
    };
    object.insert("create_time".into(), time(session.create_time));
    object.insert("expire_time".into(), time(session.expire_time));
    object.insert("idle_expire_time".into(), time(session.idle_expire_time));
    object.insert("last_seen_time".into(), time(session.last_seen_time));
    object.insert("version".into(), session.version.into());
    Value::Object(object)
}

fn print(value: &Value) -> Result<(), String> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, value)
        .map_err(|error| error.to_string())
        .and_then(|()| writeln!(stdout).map_err(|error| error.to_string()))
}

/// A session answer: printed, or exit code 1 for NOT_FOUND.
fn answer(
    result: Result<tonic::Response<pb::Session>, tonic::Status>,
) -> Result<ExitCode, CliError> {
    match result {
        Ok(response) => {
            print(&session_json(response.into_inner()))?;
            Ok(ExitCode::SUCCESS)
        }
        Err(status) if status.code() == tonic::Code::NotFound => {
            eprintln!("{}", status.message());
            Ok(ExitCode::from(1))
        }
        Err(status) => Err(status.into()),
    }
}

async fn execute(args: SessionArgs) -> Result<ExitCode, CliError> {
    let mut client: SessionServiceClient<Channel> = args.connect.client().await?.session();
    match args.command {
        SessionCommand::Create {
            user_id,
            ttl,
            idle,
            data,
            metadata,
        } => {
            let request = pb::CreateSessionRequest {
                user_id,
                ttl: ttl.map(seconds),
                idle_timeout: idle.map(seconds),
                data: data.map(|text| parse_object("--data", &text)).transpose()?,
                metadata: metadata
                    .map(|text| parse_object("--metadata", &text))
                    .transpose()?,
            };
            answer(client.create(request).await)
        }
        SessionCommand::Get { token, touch } => {
            let token = read_token(token)?;
            answer(client.get(pb::GetSessionRequest { token, touch }).await)
        }
        SessionCommand::Touch { token } => {
            let token = read_token(token)?;
            answer(client.touch(pb::TouchSessionRequest { token }).await)
        }
        SessionCommand::Update {
            token,
            patch,
            if_version,
        } => {
            let token = read_token(token)?;
            let data = Some(parse_object("PATCH", &patch)?);
            answer(
                client
                    .update(pb::UpdateSessionRequest {
                        token,
                        data,
                        if_version,
                    })
                    .await,
            )
        }
        SessionCommand::Rotate { token } => {
            let token = read_token(token)?;
            answer(client.rotate(pb::RotateSessionRequest { token }).await)
        }
        SessionCommand::Revoke { token, id } => {
            let session = if id {
                pb::revoke_session_request::Session::SessionId(token)
            } else {
                pb::revoke_session_request::Session::Token(read_token(token)?)
            };
            let response = client
                .revoke(pb::RevokeSessionRequest {
                    session: Some(session),
                })
                .await?
                .into_inner();
            print(&json!({ "revoked": response.revoked }))?;
            Ok(if response.revoked {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        SessionCommand::List { user_id, output } => {
            let mut sessions = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_by_user(pb::ListSessionsByUserRequest {
                        user_id: user_id.clone(),
                        page_size: 0,
                        page_token,
                    })
                    .await?
                    .into_inner();
                sessions.extend(page.sessions.into_iter().map(session_json));
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            print_rows(
                output,
                &[
                    "session_id",
                    "create_time",
                    "last_seen_time",
                    "expire_time",
                    "idle_expire_time",
                    "version",
                    "metadata",
                ],
                &sessions,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        SessionCommand::RevokeAll { user_id, except } => {
            let response = client
                .revoke_all_for_user(pb::RevokeAllForUserRequest {
                    user_id,
                    except_session_id: except.unwrap_or_default(),
                })
                .await?
                .into_inner();
            print(&json!({ "revoked": response.revoked }))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Timestamps print as RFC 3339 in UTC.
    #[test]
    fn formats_rfc3339() {
        let at = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(rfc3339(&at(0, 0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(&at(1_700_000_000, 123_000_000)),
            "2023-11-14T22:13:20.123Z"
        );
        assert_eq!(rfc3339(&at(951_782_400, 0)), "2000-02-29T00:00:00.000Z");
    }
}
