//! Where ID tokens come from: the `--id-token` syntax.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::{TokenError, DEFAULT_METADATA_HOST};

/// Where ID tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    /// The GCE / Cloud Run metadata server:
    /// `GET http://{host}/computeMetadata/v1/instance/service-accounts/default/identity?audience={aud}&format=full`
    /// with `Metadata-Flavor: Google`. `host` is `name` or `name:port`
    /// (port 80 when absent); see [`default_metadata_host`].
    Metadata {
        /// The server's host name or address, with an optional port.
        host: String,
    },
    /// A shell command (run through `sh -c`) whose trimmed stdout is the
    /// token, e.g. `gcloud auth print-identity-token --audiences=https://svc-xyz.a.run.app`.
    /// The audience is passed in the environment as `POSTERN_AUDIENCE`.
    Command(String),
    /// A file holding the token (trimmed), read again on every refresh so an
    /// external process can rotate it.
    File(PathBuf),
    /// A fixed token, e.g. from `POSTERN_ID_TOKEN`; never refreshed.
    Static(String),
}

impl TokenSource {
    /// A short name for logs and errors that never includes the token.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenSource::Metadata { .. } => "metadata server",
            TokenSource::Command(_) => "token command",
            TokenSource::File(_) => "token file",
            TokenSource::Static(_) => "static token",
        }
    }
}

/// Redacts the static token: a source ends up in `{:?}` of configs and
/// logs, and the token must not.
impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Metadata { host } => {
                f.debug_struct("Metadata").field("host", host).finish()
            }
            TokenSource::Command(cmd) => f.debug_tuple("Command").field(cmd).finish(),
            TokenSource::File(path) => f.debug_tuple("File").field(path).finish(),
            TokenSource::Static(_) => f.write_str("Static(<redacted>)"),
        }
    }
}

/// The metadata server to use: `GCE_METADATA_HOST` if set (the variable
/// Google's client libraries honour, so emulators and tests work the same
/// way), else [`DEFAULT_METADATA_HOST`].
pub fn default_metadata_host() -> String {
    match std::env::var("GCE_METADATA_HOST") {
        Ok(h) if !h.trim().is_empty() => h.trim().to_owned(),
        _ => DEFAULT_METADATA_HOST.to_owned(),
    }
}

/// Parses the command-line syntax: `metadata`, `metadata=HOST[:PORT]`,
/// `command=CMD`, `file=PATH` or `env=VAR`. `env=VAR` reads the variable
/// now and yields [`TokenSource::Static`], so a missing variable is reported
/// at startup rather than on the first tunnel.
impl FromStr for TokenSource {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "metadata" {
            return Ok(TokenSource::Metadata {
                host: default_metadata_host(),
            });
        }
        let bad = |msg: String| Err(TokenError::Source(msg));
        let Some((kind, value)) = s.split_once('=') else {
            // The value is not echoed: someone may have pasted the token itself.
            return bad(UNKNOWN_SOURCE.to_owned());
        };
        let value = value.trim();
        match kind.trim() {
            "metadata" if value.is_empty() => bad("metadata= needs HOST or HOST:PORT".to_owned()),
            "metadata" => Ok(TokenSource::Metadata {
                host: value.to_owned(),
            }),
            "command" if value.is_empty() => bad("command= needs a command to run".to_owned()),
            "command" => Ok(TokenSource::Command(value.to_owned())),
            "file" if value.is_empty() => bad("file= needs a path".to_owned()),
            "file" => Ok(TokenSource::File(PathBuf::from(value))),
            "env" if value.is_empty() => bad("env= needs a variable name".to_owned()),
            "env" => match std::env::var(value) {
                Ok(token) if token.trim().is_empty() => {
                    bad(format!("environment variable {value} is empty"))
                }
                Ok(token) => Ok(TokenSource::Static(token.trim().to_owned())),
                Err(std::env::VarError::NotPresent) => {
                    bad(format!("environment variable {value} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    bad(format!("environment variable {value} is not valid UTF-8"))
                }
            },
            _ => bad(UNKNOWN_SOURCE.to_owned()),
        }
    }
}

const UNKNOWN_SOURCE: &str =
    "unknown token source; expected metadata, metadata=HOST:PORT, command=CMD, file=PATH or env=VAR";
