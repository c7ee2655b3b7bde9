//! What a `tierkv kv` command can fail with, and how it is printed.

/// A failure of a client command.
#[derive(Debug)]
pub(super) enum CliError {
    /// The user's input is unusable.
    Usage(String),
    /// The server answered with an error.
    Rpc(tonic::Status),
    /// The server could not be reached.
    Connect(String),
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CliError::Usage(message) => write!(f, "{message}"),
            CliError::Connect(message) => write!(f, "cannot connect: {message}"),
            CliError::Rpc(status) => write!(f, "{}", super::super::describe(status)),
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Rpc(status)
    }
}
