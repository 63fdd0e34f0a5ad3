//! Where ID tokens come from: the `--id-token` syntax.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use super::google::{self, Caller, ServiceAccount, DEFAULT_IAM_CREDENTIALS_URL};
use super::https::check_url;
use super::{TokenError, DEFAULT_METADATA_HOST};

/// Where ID tokens come from.
#[derive(Clone)]
pub enum TokenSource {
    /// The GCE / Cloud Run metadata server:
    /// `GET http://{host}/computeMetadata/v1/instance/service-accounts/default/identity?audience={aud}&format=full`
    /// with `Metadata-Flavor: Google`. `host` is `name` or `name:port`
    /// (port 80 when absent); by default `GCE_METADATA_HOST`, else
    /// `metadata.google.internal`.
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
    /// A service account key file: ID tokens from Google's token endpoint
    /// (the key's `token_uri`) through the JWT-bearer grant.
    ServiceAccount(Arc<ServiceAccount>),
    /// ID tokens for another service account from IAM Credentials'
    /// `generateIdToken`, called with `caller`'s access token.
    Impersonate {
        /// The service account whose ID tokens are minted.
        target: String,
        /// Whose credentials call IAM Credentials (the caller's ADC).
        caller: Caller,
        /// IAM Credentials' base URL.
        iam: String,
    },
}

impl TokenSource {
    /// A short name for logs and errors that never includes the token.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenSource::Metadata { .. } => "metadata server",
            TokenSource::Command(_) => "token command",
            TokenSource::File(_) => "token file",
            TokenSource::Static(_) => "static token",
            TokenSource::ServiceAccount(_) => "service account key",
            TokenSource::Impersonate { .. } => "service account impersonation",
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
            TokenSource::ServiceAccount(sa) => f
                .debug_struct("ServiceAccount")
                .field("path", &sa.path)
                .field("email", &sa.email)
                .finish_non_exhaustive(),
            TokenSource::Impersonate {
                target,
                caller,
                iam,
            } => f
                .debug_struct("Impersonate")
                .field("target", target)
                .field("caller", &caller.describe())
                .field("iam", iam)
                .finish(),
        }
    }
}

/// The metadata server to use: `GCE_METADATA_HOST` if set (the variable
/// Google's client libraries honour, so emulators and tests work the same
/// way), else [`DEFAULT_METADATA_HOST`].
pub(crate) fn default_metadata_host() -> String {
    match std::env::var("GCE_METADATA_HOST") {
        Ok(h) if !h.trim().is_empty() => h.trim().to_owned(),
        _ => DEFAULT_METADATA_HOST.to_owned(),
    }
}

/// Application Default Credentials as a source of ID tokens: the ADC file's
/// service account key, or the metadata server when there is no file.
fn adc() -> Result<TokenSource, TokenError> {
    let Some(path) = google::adc_file() else {
        return Ok(TokenSource::Metadata {
            host: default_metadata_host(),
        });
    };
    match google::load(&path)? {
        Caller::Key(sa) => Ok(TokenSource::ServiceAccount(sa)),
        _ => Err(TokenError::KeyFile {
            path,
            reason: "user credentials cannot mint ID tokens for an audience; use \
                     impersonate=SA_EMAIL or command=gcloud auth print-identity-token"
                .to_owned(),
        }),
    }
}

/// `impersonate=SA_EMAIL`: the caller is whoever ADC names (a key file,
/// user credentials, or the metadata server's account); IAM Credentials is
/// `POSTERN_IAM_CREDENTIALS_URL` or Google's.
fn impersonate(target: &str) -> Result<TokenSource, TokenError> {
    let valid = target.contains('@')
        && target
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.-_".contains(&b));
    if !valid {
        return Err(TokenError::Source(format!(
            "impersonate={target:?}: not a service account e-mail address"
        )));
    }
    let caller = match google::adc_file() {
        Some(path) => google::load(&path)?,
        None => Caller::Metadata(default_metadata_host()),
    };
    let iam = match std::env::var("POSTERN_IAM_CREDENTIALS_URL") {
        Ok(url) if !url.trim().is_empty() => {
            let url = url.trim().to_owned();
            check_url(&url)
                .map_err(|e| TokenError::Source(format!("POSTERN_IAM_CREDENTIALS_URL: {e}")))?;
            url
        }
        _ => DEFAULT_IAM_CREDENTIALS_URL.to_owned(),
    };
    Ok(TokenSource::Impersonate {
        target: target.to_owned(),
        caller,
        iam,
    })
}

/// Parses the command-line syntax: `metadata`, `metadata=HOST[:PORT]`,
/// `command=CMD`, `file=PATH`, `env=VAR`, `adc`, `service-account=FILE` or
/// `impersonate=SA_EMAIL`. `env=VAR` reads the variable now and yields
/// [`TokenSource::Static`], and key files are read now too, so a missing
/// variable or a bad file is reported at startup rather than on the first
/// tunnel.
impl FromStr for TokenSource {
    type Err = TokenError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "adc" {
            return adc();
        }
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
            "service-account" if value.is_empty() => {
                bad("service-account= needs a key file".to_owned())
            }
            "service-account" => match google::load(std::path::Path::new(value))? {
                Caller::Key(sa) => Ok(TokenSource::ServiceAccount(sa)),
                _ => Err(TokenError::KeyFile {
                    path: PathBuf::from(value),
                    reason: "not a service account key (\"type\": \"service_account\")".to_owned(),
                }),
            },
            "impersonate" => impersonate(value),
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
    "unknown token source; expected metadata, metadata=HOST:PORT, command=CMD, file=PATH, env=VAR, adc, service-account=FILE or impersonate=SA_EMAIL";
