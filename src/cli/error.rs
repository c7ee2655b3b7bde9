//! What a client command can fail with, how it is printed, and the exit code
//! scripts see: one table ([`EXIT_CODES`]) that `tierkv --help` and
//! docs/cli.md both show.

use std::process::ExitCode;
use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: the key, session or migration does not exist (NOT_FOUND, a
/// `get` miss).
pub const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: invalid input, from the command line or as the server judged
/// it (INVALID_ARGUMENT, OUT_OF_RANGE). clap's own usage errors exit 2 too.
pub const EXIT_INVALID: u8 = 2;
/// Exit code: a precondition failed (ABORTED for a failed compare-and-set,
/// FAILED_PRECONDITION, ALREADY_EXISTS).
pub const EXIT_PRECONDITION: u8 = 3;
/// Exit code: the server cannot be reached or cannot answer now; retrying
/// later may work (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
/// CANCELLED, a failed connection).
pub const EXIT_UNAVAILABLE: u8 = 4;
/// Exit code: the token is missing, wrong or lacks a grant (UNAUTHENTICATED,
/// PERMISSION_DENIED).
pub const EXIT_PERMISSION: u8 = 5;
/// Exit code: any other server error (INTERNAL, DATA_LOSS, UNIMPLEMENTED,
/// UNKNOWN), output that cannot be written, and a migration that left
/// records it could not migrate.
pub const EXIT_OTHER: u8 = 6;

/// The exit code table, as `tierkv --help` prints it after the commands.
pub const EXIT_CODES: &str = "\
Exit codes of the client commands (kv, session, admin, cache):
  0  success
  1  not found: the key, session or migration does not exist (NOT_FOUND, a get miss)
  2  invalid input: bad arguments, or the server's INVALID_ARGUMENT / OUT_OF_RANGE
  3  precondition failed: ABORTED (--if-version, --if-absent), FAILED_PRECONDITION, ALREADY_EXISTS
  4  unavailable: cannot connect, UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, CANCELLED,
     or a migration that stopped before the end; retry later
  5  permission: UNAUTHENTICATED, PERMISSION_DENIED
  6  other: INTERNAL, DATA_LOSS, UNIMPLEMENTED, UNKNOWN, output that cannot be written,
     or a migration that left records it could not migrate";

/// A failure of a client command.
#[derive(Debug)]
pub enum CliError {
    /// The user's input is unusable.
    Usage(String),
    /// The server answered with an error.
    Rpc(tonic::Status),
    /// The server could not be reached.
    Connect(String),
    /// The output could not be written (a closed pipe, a full disk).
    Output(std::io::Error),
    /// A long operation ended before it was done; running the command again
    /// resumes it.
    Incomplete(String),
}

impl CliError {
    /// The exit code of this failure, from the table in [`EXIT_CODES`].
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => EXIT_INVALID,
            CliError::Connect(_) | CliError::Incomplete(_) => EXIT_UNAVAILABLE,
            CliError::Output(_) => EXIT_OTHER,
            CliError::Rpc(status) => code_exit(status.code()),
        }
    }

    /// Prints the failure on stderr and returns its exit code. A reader
    /// that closed the pipe (`tierkv kv list | head`) stopped on purpose:
    /// the exit code says it, with no message.
    pub fn report(&self) -> ExitCode {
        let closed_pipe = matches!(self, CliError::Output(error) if error.kind() == std::io::ErrorKind::BrokenPipe);
        if !closed_pipe {
            eprintln!("error: {self}");
        }
        ExitCode::from(self.exit_code())
    }
}

/// The exit code of a gRPC status code.
pub fn code_exit(code: Code) -> u8 {
    match code {
        Code::Ok => EXIT_OK,
        Code::NotFound => EXIT_NOT_FOUND,
        Code::InvalidArgument | Code::OutOfRange => EXIT_INVALID,
        Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists => EXIT_PRECONDITION,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Cancelled => {
            EXIT_UNAVAILABLE
        }
        Code::Unauthenticated | Code::PermissionDenied => EXIT_PERMISSION,
        Code::Internal | Code::DataLoss | Code::Unimplemented | Code::Unknown => EXIT_OTHER,
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(message) => write!(f, "{message}"),
            CliError::Connect(message) => write!(f, "cannot connect: {message}"),
            CliError::Output(message) => write!(f, "cannot write output: {message}"),
            CliError::Incomplete(message) => write!(f, "{message}"),
            CliError::Rpc(status) => write!(f, "{}", describe(status)),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(status)
    }
}

/// The commands' own checks fail with a sentence: invalid input.
impl From<String> for CliError {
    fn from(message: String) -> Self {
        CliError::Usage(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> Self {
        CliError::Usage(message.to_string())
    }
}

/// The canonical name of a gRPC code (`INVALID_ARGUMENT`), as grpcurl and
/// docs/status-codes.md write it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A failed call as the client commands print it: one human line with the
/// gRPC code, then one indented line per `google.rpc` detail (field
/// violations, precondition violations, the ErrorInfo reason and its
/// metadata, the RetryInfo delay).
pub fn describe(status: &tonic::Status) -> String {
    let message = status.message().trim();
    let message = if message.is_empty() {
        "the server gave no message"
    } else {
        message
    };
    let mut text = format!("{message} [{}]", code_name(status.code()));
    let Ok(details) = status.check_error_details() else {
        return text;
    };
    if let Some(bad_request) = details.bad_request() {
        for violation in &bad_request.field_violations {
            text.push_str(&format!(
                "\n  {}: {}",
                violation.field, violation.description
            ));
        }
    }
    if let Some(failure) = details.precondition_failure() {
        for violation in &failure.violations {
            text.push_str(&format!(
                "\n  precondition {} {}: {}",
                violation.r#type, violation.subject, violation.description
            ));
        }
    }
    if let Some(info) = details.error_info() {
        let mut metadata: Vec<_> = info.metadata.iter().collect();
        metadata.sort();
        let metadata: Vec<String> = metadata
            .into_iter()
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if metadata.is_empty() {
            text.push_str(&format!("\n  reason: {}", info.reason));
        } else {
            text.push_str(&format!(
                "\n  reason: {} ({})",
                info.reason,
                metadata.join(", ")
            ));
        }
    }
    if let Some(quota) = details.quota_failure() {
        for violation in &quota.violations {
            text.push_str(&format!(
                "\n  limit {}: {}",
                violation.subject, violation.description
            ));
        }
    }
    if let Some(delay) = details.retry_info().and_then(|retry| retry.retry_delay) {
        text.push_str(&format!("\n  retry after {}", seconds(delay)));
    }
    text
}

/// A delay as seconds, to the millisecond (`1.5s`).
fn seconds(delay: Duration) -> String {
    format!("{}s", delay.as_millis() as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    /// The RetryInfo delay and a quota violation, which the tests through
    /// the binary cannot provoke on demand, render under the one line.
    #[test]
    fn describe_renders_retry_delay_and_quota() {
        let mut details = ErrorDetails::with_retry_info(Some(Duration::from_millis(1500)));
        details.add_quota_failure_violation("calls", "256 calls in flight");
        let status = tonic::Status::with_error_details(
            Code::ResourceExhausted,
            "server overloaded",
            details,
        );
        assert_eq!(
            describe(&status),
            "server overloaded [RESOURCE_EXHAUSTED]\n  limit calls: 256 calls in flight\n  retry after 1.5s"
        );
        assert_eq!(CliError::Rpc(status).exit_code(), EXIT_UNAVAILABLE);
    }

    /// Every gRPC code has a row of the table, and the table names the code.
    #[test]
    fn every_code_has_an_exit_code_in_the_table() {
        for number in 0..=16 {
            let code = Code::from_i32(number);
            let exit = code_exit(code);
            assert!(exit <= EXIT_OTHER);
            if code != Code::Ok {
                let row = EXIT_CODES
                    .lines()
                    .find(|line| line.trim_start().starts_with(&format!("{exit} ")))
                    .unwrap_or_else(|| panic!("no row for {exit}"));
                assert!(
                    row.contains(code_name(code)),
                    "{code:?} is not named in the row of exit code {exit}: {row}"
                );
            }
        }
    }
}
