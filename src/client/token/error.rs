//! Why no token could be had.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Why no token could be had. No message ever contains the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The token source given on the command line is not usable.
    #[error("token source: {0}")]
    Source(String),
    /// The metadata server could not be reached or spoke nonsense.
    #[error("metadata server {host}: {reason}")]
    Metadata {
        /// The server as configured.
        host: String,
        /// What went wrong.
        reason: String,
    },
    /// The metadata server answered with a status other than 200.
    #[error("metadata server {host} answered HTTP {status}: {detail}")]
    MetadataStatus {
        /// The server as configured.
        host: String,
        /// The HTTP status code.
        status: u16,
        /// The first line of the response body, shortened.
        detail: String,
    },
    /// The token command could not be started.
    #[error("token command could not be started: {0}")]
    Spawn(Arc<io::Error>),
    /// The token command ran and failed.
    #[error("token command failed ({status}): {stderr}")]
    Command {
        /// How it ended, e.g. `exit status: 1`.
        status: String,
        /// The first line of its stderr, shortened.
        stderr: String,
    },
    /// The token file could not be read.
    #[error("token file {}: {error}", path.display())]
    File {
        /// The file as configured.
        path: PathBuf,
        /// The read error.
        error: Arc<io::Error>,
    },
    /// The source produced something that is not a usable token.
    #[error("unusable token from {from}: {reason}")]
    Malformed {
        /// Which kind of source produced it.
        from: &'static str,
        /// What is wrong with it (never the token itself).
        reason: String,
    },
    /// The source did not answer in time.
    #[error("fetching a token from the {from} timed out after {after:?}")]
    Timeout {
        /// Which kind of source hung.
        from: &'static str,
        /// The timeout that ran out.
        after: Duration,
    },
}

pub(super) fn malformed(from: &'static str, reason: &str) -> TokenError {
    TokenError::Malformed {
        from,
        reason: reason.to_owned(),
    }
}
