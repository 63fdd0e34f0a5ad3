//! Google ID tokens for private Cloud Run services.
//!
//! A private Cloud Run service rejects any request that lacks
//! `Authorization: Bearer <Google ID token>` whose audience is the service
//! URL. The client opens many tunnels, so the token is fetched once, cached
//! in an [`IdTokens`] shared by every tunnel, and refreshed shortly before it
//! expires: never fetched per tunnel, and never written to a log.
//!
//! # Why there is a small HTTP/1.1 client here
//!
//! On GCE and Cloud Run the token comes from the metadata server, which is
//! plain HTTP/1.1 on a link-local address. The whole exchange is a single GET
//! with one extra header, so this module speaks it directly over a tokio
//! `TcpStream`: one request with `Connection: close`, read to EOF (bounded in
//! size), parse the status line, honour `Content-Length` or chunked
//! transfer-encoding, done. That is about a hundred lines and adds nothing to
//! the dependency tree, where `hyper-util`'s client would add a connection
//! pool, `tower` plumbing and body utilities for a request made once an hour.
//!
//! Google's own crates were considered and not used:
//! `google-cloud-auth` 1.x needs a newer Rust than this package supports and
//! brings `reqwest`, `google-cloud-gax` and a JWT stack of its own;
//! `gcp_auth` 0.12 is built around OAuth access tokens for scopes (not ID
//! tokens for an audience) and pulls in `hyper-rustls` with `ring`, a second
//! crypto provider next to our `aws-lc-rs`. For one metadata GET, or running
//! `gcloud auth print-identity-token`, neither is worth it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT;
use base64::Engine as _;
use http::HeaderValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// A token is refreshed once it has less than this much validity left, so a
/// tunnel never starts with a token that could expire on the way.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// How long one fetch may take before it fails with [`TokenError::Timeout`];
/// a hung metadata server or command must not hang every tunnel with it.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The metadata server's name when `GCE_METADATA_HOST` is not set.
pub const DEFAULT_METADATA_HOST: &str = "metadata.google.internal";

/// A cached token inside the refresh margin is still handed out after a
/// failed refresh as long as it has at least this much life left; below it
/// the peer could see it expired, given ordinary clock skew.
const MIN_VALIDITY: Duration = Duration::from_secs(30);

/// After a refresh failed, or the source handed back the token we already
/// had, the source is not asked again for this long while the cached token is
/// still usable. Without it every tunnel opened inside the margin would run
/// `gcloud` (or wait out a dead metadata server) one after another.
const RETRY_INTERVAL: Duration = Duration::from_secs(10);

/// With no usable token, callers that queued behind a failed fetch get that
/// fetch's error instead of each repeating it, so one burst of tunnels
/// causes one fetch whether it succeeds or not.
const ERROR_HOLDOFF: Duration = Duration::from_secs(1);

/// How long a JWT without a readable `exp` claim is reused.
const UNKNOWN_EXP_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How long an opaque (non-JWT) token from a command or file is reused.
const OPAQUE_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// Expiry times further out than this are capped, so a token with an absurd
/// `exp` is still re-read now and then and `Instant` arithmetic cannot
/// overflow.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// The largest metadata server response read; an ID token is about 1 KiB.
const MAX_RESPONSE: usize = 64 * 1024;

/// Error details quoted from a peer or a command are cut to this many chars
/// so an error stays one readable line.
const MAX_DETAIL: usize = 200;

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

/// A cached, self-refreshing bearer token shared by all tunnels.
///
/// Clones share one cache, so cloning is the way to hand it to tunnels.
#[derive(Clone)]
pub struct IdTokens {
    shared: Arc<Shared>,
    timeout: Duration,
}

struct Shared {
    source: TokenSource,
    audience: String,
    /// Held across a fetch: callers arriving meanwhile wait for that fetch
    /// and then find its result in the cache, so there is one fetch in flight.
    state: Mutex<State>,
    fetches: AtomicU64,
}

#[derive(Default)]
struct State {
    cached: Option<Cached>,
    /// Set when asking the source again would not help yet (see [`RETRY_INTERVAL`]).
    retry_after: Option<Instant>,
    last_error: Option<(Instant, TokenError)>,
}

struct Cached {
    /// `Bearer <token>`, marked sensitive. The token is kept only in here.
    value: HeaderValue,
    /// From here on a call fetches a new token; `None`: never.
    refresh_at: Option<Instant>,
    /// After this the token is not handed out any more; `None`: never.
    expires_at: Option<Instant>,
}

impl Cached {
    fn is_fresh(&self, now: Instant) -> bool {
        self.refresh_at.map_or(true, |at| now < at)
    }

    fn is_usable(&self, now: Instant) -> bool {
        self.expires_at.map_or(true, |at| now + MIN_VALIDITY < at)
    }
}

/// Redacts the cache: only the source, audience and counters are shown.
impl fmt::Debug for IdTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdTokens")
            .field("source", &self.shared.source)
            .field("audience", &self.shared.audience)
            .field("timeout", &self.timeout)
            .field("fetches", &self.fetches())
            .finish_non_exhaustive()
    }
}

impl IdTokens {
    /// A provider for tokens with `audience` (the Cloud Run service URL).
    /// Nothing is fetched until the first [`bearer`](Self::bearer).
    pub fn new(source: TokenSource, audience: String) -> Self {
        IdTokens {
            shared: Arc::new(Shared {
                source,
                audience,
                state: Mutex::new(State::default()),
                fetches: AtomicU64::new(0),
            }),
            timeout: DEFAULT_FETCH_TIMEOUT,
        }
    }

    /// Sets the per-fetch timeout (default [`DEFAULT_FETCH_TIMEOUT`]) for this
    /// handle and clones made from it afterwards.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The audience tokens are requested for.
    pub fn audience(&self) -> &str {
        &self.shared.audience
    }

    /// Returns `Bearer <token>` valid for at least [`REFRESH_MARGIN`] more,
    /// fetching when the cache is empty or close to expiry. Concurrent
    /// callers share one fetch. If a refresh fails while the cached token has
    /// not yet expired, that token is returned and a warning logged.
    ///
    /// The header value is marked sensitive so HTTP/2 never indexes it
    /// with HPACK and `http`'s Debug output hides it.
    ///
    /// The fetch runs inside the caller's future: if the caller that
    /// started it is dropped, the fetch stops and the next waiter starts
    /// a new one, which keeps the code free of background tasks.
    pub async fn bearer(&self) -> Result<HeaderValue, TokenError> {
        let shared = &*self.shared;
        let mut state = shared.state.lock().await;
        let now = Instant::now();

        if let Some(cached) = &state.cached {
            if cached.is_fresh(now) {
                return Ok(cached.value.clone());
            }
            let holding_off = state.retry_after.is_some_and(|at| now < at);
            if holding_off && cached.is_usable(now) {
                return Ok(cached.value.clone());
            }
        }
        let have_usable = state.cached.as_ref().is_some_and(|c| c.is_usable(now));
        if !have_usable {
            if let Some((at, err)) = &state.last_error {
                if now.duration_since(*at) < ERROR_HOLDOFF {
                    return Err(err.clone());
                }
            }
        }

        shared.fetches.fetch_add(1, Ordering::Relaxed);
        let fetched = match tokio::time::timeout(self.timeout, fetch(shared)).await {
            Ok(result) => result,
            Err(_) => Err(TokenError::Timeout {
                from: shared.source.kind(),
                after: self.timeout,
            }),
        };
        let now = Instant::now();
        match fetched {
            Ok(new) => {
                let unchanged = state
                    .cached
                    .as_ref()
                    .is_some_and(|old| old.value == new.value);
                // A source that hands back the token we already have (gcloud
                // does until its own threshold) is not asked again right away.
                state.retry_after =
                    (unchanged && new.is_usable(now)).then_some(now + RETRY_INTERVAL);
                state.last_error = None;
                let value = new.value.clone();
                state.cached = Some(new);
                Ok(value)
            }
            Err(err) => {
                let fallback = state
                    .cached
                    .as_ref()
                    .filter(|c| c.is_usable(now))
                    .map(|c| c.value.clone());
                if let Some(value) = fallback {
                    tracing::warn!(
                        source = shared.source.kind(),
                        error = %err,
                        "refreshing the ID token failed; using the cached one until it expires"
                    );
                    state.retry_after = Some(now + RETRY_INTERVAL);
                    return Ok(value);
                }
                state.last_error = Some((now, err.clone()));
                Err(err)
            }
        }
    }

    /// How many fetches have been started, successful or not (for tests and
    /// metrics: it should stay near one per token lifetime).
    pub fn fetches(&self) -> u64 {
        self.shared.fetches.load(Ordering::Relaxed)
    }
}

/// Gets a token from the source and works out how long to keep it.
async fn fetch(shared: &Shared) -> Result<Cached, TokenError> {
    let kind = shared.source.kind();
    let (token, need_jwt) = match &shared.source {
        TokenSource::Metadata { host } => (fetch_metadata(host, &shared.audience).await?, true),
        TokenSource::Command(cmd) => (run_command(cmd, &shared.audience).await?, false),
        TokenSource::File(path) => {
            let text = tokio::fs::read_to_string(path)
                .await
                .map_err(|e| TokenError::File {
                    path: path.clone(),
                    error: Arc::new(e),
                })?;
            (text, false)
        }
        TokenSource::Static(token) => (token.clone(), false),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(malformed(kind, "it is empty"));
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| malformed(kind, "it contains characters not allowed in an HTTP header"))?;
    value.set_sensitive(true);

    let now = Instant::now();
    let exp = jwt_exp(token);
    if need_jwt && exp.is_none() {
        return Err(malformed(kind, "it is not a JWT"));
    }
    // How long the token has left, when its JWT says.
    let remaining = match exp {
        Some(Some(exp)) => {
            let unix_now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let left = i64::try_from(unix_now).map_or(0, |now| exp.saturating_sub(now));
            if left <= 0 && !matches!(shared.source, TokenSource::Static(_)) {
                return Err(malformed(
                    kind,
                    &format!("it expired {} s ago (is the system clock right?)", -left),
                ));
            }
            Some(Duration::from_secs(left.max(0).unsigned_abs()).min(MAX_LIFETIME))
        }
        _ => None,
    };
    tracing::debug!(
        source = kind,
        expires_in_secs = remaining.map(|d| d.as_secs()),
        "fetched an ID token"
    );

    if let TokenSource::Static(_) = shared.source {
        if remaining == Some(Duration::ZERO) {
            tracing::warn!("the static ID token has expired; requests will be refused");
        }
        return Ok(Cached {
            value,
            refresh_at: None,
            expires_at: None,
        });
    }
    let cached = match (remaining, exp) {
        (Some(left), _) => {
            let expires_at = now + left;
            Cached {
                value,
                refresh_at: Some(expires_at.checked_sub(REFRESH_MARGIN).unwrap_or(now)),
                expires_at: Some(expires_at),
            }
        }
        // Without a known expiry the token is reused for a fixed, short
        // time and not handed out past it even if a refresh fails.
        (None, Some(None)) => keep_for(value, now + UNKNOWN_EXP_LIFETIME),
        (None, _) => keep_for(value, now + OPAQUE_LIFETIME),
    };
    Ok(cached)
}

fn keep_for(value: HeaderValue, until: Instant) -> Cached {
    Cached {
        value,
        refresh_at: Some(until),
        expires_at: Some(until),
    }
}

fn malformed(from: &'static str, reason: &str) -> TokenError {
    TokenError::Malformed {
        from,
        reason: reason.to_owned(),
    }
}

/// Reads a JWT's `exp` without checking its signature: we hold the token,
/// the service verifies it; all we need is when to fetch the next one.
///
/// `None`: not a JWT. `Some(None)`: a JWT without a usable `exp`.
fn jwt_exp(token: &str) -> Option<Option<i64>> {
    let mut parts = token.split('.');
    let (Some(_header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let bytes = URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let claims = claims.as_object()?;
    let exp = claims.get("exp").and_then(|exp| {
        exp.as_i64()
            // Float seconds are allowed by RFC 7519's NumericDate; `as`
            // saturates, which is what we want for silly values.
            .or_else(|| exp.as_f64().map(|f| f as i64))
    });
    Some(exp)
}

/// Runs the token command with the audience in its environment and returns
/// its stdout. The child is killed if the fetch times out (the future is
/// dropped with `kill_on_drop`).
async fn run_command(cmd: &str, audience: &str) -> Result<String, TokenError> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("POSTERN_AUDIENCE", audience)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TokenError::Spawn(Arc::new(e)))?;
    if !output.status.success() {
        // Only stderr is quoted: stdout is where a token would be.
        let stderr = first_line(&output.stderr);
        return Err(TokenError::Command {
            status: output.status.to_string(),
            stderr: if stderr.is_empty() {
                "(nothing on stderr)".to_owned()
            } else {
                stderr
            },
        });
    }
    String::from_utf8(output.stdout)
        .map_err(|_| malformed("token command", "its output is not UTF-8"))
}

/// The first non-empty line of `bytes`, lossily decoded and shortened.
fn first_line(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(MAX_DETAIL).collect();
    if line.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    out
}

/// Asks the metadata server for an ID token for `audience`.
async fn fetch_metadata(host: &str, audience: &str) -> Result<String, TokenError> {
    let path = format!(
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience={}&format=full",
        percent_encode(audience)
    );
    let err = |reason: String| TokenError::Metadata {
        host: host.to_owned(),
        reason,
    };
    let (status, body) = http_get(host, &path, &[("Metadata-Flavor", "Google")])
        .await
        .map_err(err)?;
    if status != 200 {
        return Err(TokenError::MetadataStatus {
            host: host.to_owned(),
            status,
            detail: first_line(&body),
        });
    }
    String::from_utf8(body).map_err(|_| malformed("metadata server", "the body is not UTF-8"))
}

/// `host` or `host:port` (IPv6 in brackets) as a socket address string,
/// defaulting to port 80.
fn with_default_port(host: &str) -> String {
    let has_port = if let Some(rest) = host.strip_prefix('[') {
        rest.contains("]:")
    } else {
        match host.matches(':').count() {
            0 => false,
            1 => true,
            // A bare IPv6 address.
            _ => return format!("[{host}]:80"),
        }
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:80")
    }
}

/// One HTTP/1.1 GET with `Connection: close`; returns the status and the
/// decoded body. Errors are plain strings the caller wraps with the host.
async fn http_get(
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect(with_default_port(host))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: postern/{}\r\nAccept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;

    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    if raw.len() > MAX_RESPONSE {
        return Err(format!("response larger than {MAX_RESPONSE} bytes"));
    }
    parse_response(&raw)
}

/// Parses a complete HTTP/1.x response read to EOF.
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let head_end = find(raw, b"\r\n\r\n").ok_or("response ended inside the headers")?;
    let head =
        std::str::from_utf8(&raw[..head_end]).map_err(|_| "response headers are not text")?;
    let body = &raw[head_end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.split_whitespace();
    let status = match (words.next(), words.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code.parse::<u16>().ok(),
        _ => None,
    }
    .ok_or("response does not start with an HTTP/1.x status line")?;

    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match length {
        Some(n) if body.len() < n => Err("response body cut short".to_owned()),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// Decodes a chunked transfer-encoded body (trailers are ignored).
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "malformed chunked body".to_owned();
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or_else(bad)?;
        let size_line = std::str::from_utf8(&body[..line_end]).map_err(|_| bad())?;
        let size_hex = size_line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad())?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size + 2 || &body[size..size + 2] != b"\r\n" {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Percent-encodes everything but RFC 3986 unreserved characters, enough
/// for a URL as a query value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use tokio::net::TcpListener;

    const AUD: &str = "https://svc-xyz.a.run.app";

    fn unix_now() -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    }

    /// A JWT-shaped token (unsigned; nobody verifies it here).
    fn jwt(exp: Option<i64>, tag: &str) -> String {
        let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let mut claims = serde_json::json!({ "aud": AUD, "sub": tag });
        if let Some(exp) = exp {
            claims["exp"] = exp.into();
        }
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes()),
            b64(format!("signature-{tag}").as_bytes())
        )
    }

    fn percent_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                i += 3;
            } else {
                out.push(b[i]);
                i += 1;
            }
        }
        String::from_utf8(out).unwrap()
    }

    enum Reply {
        Token(String),
        ChunkedToken(String),
        Status(u16, &'static str),
        Hang,
    }

    /// A fake metadata server: checks the flavor header, path and audience
    /// like the real one, then answers request `n` with `reply(n)`.
    async fn fake_metadata(
        reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let count = Arc::new(AtomicUsize::new(0));
        let reply = Arc::new(reply);
        let counter = count.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let reply = reply.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while find(&buf, b"\r\n\r\n").is_none() {
                        let got = sock.read(&mut chunk).await.unwrap();
                        if got == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..got]);
                    }
                    let req = String::from_utf8(buf).unwrap();
                    let target = req.split_whitespace().nth(1).unwrap().to_owned();
                    let flavor = req.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("metadata-flavor") && v.trim() == "Google"
                        })
                    });
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let audience = query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix("audience="))
                        .map(percent_decode);
                    let reply = if !flavor {
                        Reply::Status(403, "Missing Metadata-Flavor:Google header.")
                    } else if path
                        != "/computeMetadata/v1/instance/service-accounts/default/identity"
                    {
                        Reply::Status(404, "not found")
                    } else if audience.as_deref() != Some(AUD) || !query.contains("format=full") {
                        Reply::Status(400, "bad audience")
                    } else {
                        reply(n)
                    };
                    let response = match reply {
                        Reply::Token(t) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{t}",
                            t.len()
                        ),
                        Reply::ChunkedToken(t) => {
                            let (a, b) = t.split_at(t.len() / 2);
                            format!(
                                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                                a.len(),
                                b.len()
                            )
                        }
                        Reply::Status(code, msg) => format!(
                            "HTTP/1.1 {code} Nope\r\nContent-Length: {}\r\n\r\n{msg}\n",
                            msg.len() + 1
                        ),
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                    };
                    let _ = sock.write_all(response.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (addr, count)
    }

    fn metadata(host: &str) -> IdTokens {
        IdTokens::new(
            TokenSource::Metadata {
                host: host.to_owned(),
            },
            AUD.to_owned(),
        )
    }

    fn assert_no_token(text: &str, token: &str) {
        assert!(!text.contains(token), "token leaked into: {text}");
    }

    #[tokio::test]
    async fn metadata_token_is_bearer_and_sensitive() {
        let tok = jwt(Some(unix_now() + 3600), "a");
        let t2 = tok.clone();
        let (host, count) = fake_metadata(move |_| Reply::Token(t2.clone())).await;
        let tokens = metadata(&host);
        let value = tokens.bearer().await.unwrap();
        assert_eq!(value.to_str().unwrap(), format!("Bearer {tok}"));
        assert!(value.is_sensitive());
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(tokens.fetches(), 1);
        assert_no_token(&format!("{tokens:?}"), &tok);
    }

    #[tokio::test]
    async fn metadata_chunked_response() {
        let tok = jwt(Some(unix_now() + 3600), "chunked");
        let t2 = tok.clone();
        let (host, _) = fake_metadata(move |_| Reply::ChunkedToken(t2.clone())).await;
        let value = metadata(&host).bearer().await.unwrap();
        assert_eq!(value.to_str().unwrap(), format!("Bearer {tok}"));
    }

    #[tokio::test]
    async fn fifty_concurrent_callers_cause_one_fetch() {
        let tok = jwt(Some(unix_now() + 3600), "a");
        let t2 = tok.clone();
        let (host, count) = fake_metadata(move |_| Reply::Token(t2.clone())).await;
        let tokens = metadata(&host);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let tokens = tokens.clone();
            tasks.push(tokio::spawn(async move { tokens.bearer().await }));
        }
        for task in tasks {
            let value = task.await.unwrap().unwrap();
            assert_eq!(value.to_str().unwrap(), format!("Bearer {tok}"));
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(tokens.fetches(), 1);
    }

    #[tokio::test]
    async fn token_inside_margin_is_refetched_once() {
        let first = jwt(Some(unix_now() + 30), "short");
        let second = jwt(Some(unix_now() + 3600), "long");
        let (f, s) = (first.clone(), second.clone());
        let (host, count) =
            fake_metadata(move |n| Reply::Token(if n == 0 { f.clone() } else { s.clone() })).await;
        let tokens = metadata(&host);
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer {first}").as_str()
        );
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer {second}").as_str()
        );
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer {second}").as_str()
        );
        assert_eq!(count.load(Ordering::SeqCst), 2);
        assert_eq!(tokens.fetches(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_falls_back_to_unexpired_token() {
        let first = jwt(Some(unix_now() + 120), "short");
        let f = first.clone();
        let (host, count) = fake_metadata(move |n| {
            if n == 0 {
                Reply::Token(f.clone())
            } else {
                Reply::Status(500, "internal error")
            }
        })
        .await;
        let tokens = metadata(&host);
        let want = format!("Bearer {first}");
        assert_eq!(tokens.bearer().await.unwrap(), want.as_str());
        // Inside the margin: refresh is tried, fails, cached token is used.
        assert_eq!(tokens.bearer().await.unwrap(), want.as_str());
        // And the source is left alone for a while.
        assert_eq!(tokens.bearer().await.unwrap(), want.as_str());
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn http_error_status_is_reported() {
        let (host, _) =
            fake_metadata(|_| Reply::Status(403, "Missing Metadata-Flavor:Google header.")).await;
        let err = metadata(&host).bearer().await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(
            err,
            TokenError::MetadataStatus { status: 403, .. }
        ));
        assert!(msg.contains("403"), "{msg}");
        assert!(msg.contains("Missing Metadata-Flavor"), "{msg}");
    }

    #[tokio::test]
    async fn fake_server_rejects_requests_without_flavor() {
        // Keeps the fake honest: the 403 path is what a client without the
        // header would see, and our client does send it (other tests pass).
        let (host, _) = fake_metadata(|_| Reply::Token("x".into())).await;
        let (status, body) = http_get(&host, "/computeMetadata/v1/", &[]).await.unwrap();
        assert_eq!(status, 403);
        assert!(String::from_utf8(body).unwrap().contains("Metadata-Flavor"));
    }

    #[tokio::test]
    async fn concurrent_callers_share_a_failure() {
        let (host, count) = fake_metadata(|_| Reply::Status(500, "down")).await;
        let tokens = metadata(&host);
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let tokens = tokens.clone();
            tasks.push(tokio::spawn(async move { tokens.bearer().await }));
        }
        for task in tasks {
            assert!(task.await.unwrap().is_err());
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn metadata_rejects_opaque_token() {
        let (host, _) = fake_metadata(|_| Reply::Token("not-a-jwt-secret".into())).await;
        let err = metadata(&host).bearer().await.unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
        assert_no_token(&err.to_string(), "not-a-jwt-secret");
        assert_no_token(&format!("{err:?}"), "not-a-jwt-secret");
    }

    #[tokio::test]
    async fn expired_token_is_rejected() {
        let tok = jwt(Some(unix_now() - 100), "old");
        let t2 = tok.clone();
        let (host, _) = fake_metadata(move |_| Reply::Token(t2.clone())).await;
        let err = metadata(&host).bearer().await.unwrap_err();
        assert!(err.to_string().contains("expired"), "{err}");
        assert_no_token(&err.to_string(), &tok);
    }

    #[tokio::test]
    async fn hung_metadata_server_times_out() {
        let (host, _) = fake_metadata(|_| Reply::Hang).await;
        let tokens = metadata(&host).with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = tokens.bearer().await.unwrap_err();
        assert!(matches!(err, TokenError::Timeout { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn unreachable_metadata_server_is_an_error() {
        // Bind then drop to get a port nobody listens on.
        let port = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = metadata(&format!("127.0.0.1:{port}"))
            .bearer()
            .await
            .unwrap_err();
        assert!(matches!(err, TokenError::Metadata { .. }), "{err}");
        assert!(err.to_string().contains("connect"), "{err}");
    }

    fn command(cmd: &str) -> IdTokens {
        IdTokens::new(TokenSource::Command(cmd.to_owned()), AUD.to_owned())
    }

    #[tokio::test]
    async fn command_token() {
        let tokens = command("echo '  opaque-token-123  '");
        assert_eq!(tokens.bearer().await.unwrap(), "Bearer opaque-token-123");
        // Opaque tokens are cached for a while.
        assert_eq!(tokens.bearer().await.unwrap(), "Bearer opaque-token-123");
        assert_eq!(tokens.fetches(), 1);
    }

    #[tokio::test]
    async fn command_sees_audience() {
        let tokens = command("printf 'tok-%s' \"$POSTERN_AUDIENCE\"");
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer tok-{AUD}").as_str()
        );
    }

    #[tokio::test]
    async fn failing_command_reports_status_and_stderr() {
        let tokens = command("echo SECRET-TOKEN-XYZ; echo boom >&2; echo more >&2; exit 1");
        let err = tokens.bearer().await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("exit status: 1"), "{msg}");
        assert!(msg.contains("boom"), "{msg}");
        assert!(!msg.contains('\n'), "{msg}");
        assert_no_token(&msg, "SECRET-TOKEN-XYZ");
        assert_no_token(&format!("{err:?}"), "SECRET-TOKEN-XYZ");
    }

    #[tokio::test]
    async fn empty_command_output_is_malformed() {
        let err = command("true").bearer().await.unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    }

    #[tokio::test]
    async fn hung_command_times_out() {
        let tokens = command("sleep 30").with_timeout(Duration::from_millis(200));
        let err = tokens.bearer().await.unwrap_err();
        assert!(matches!(err, TokenError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn command_returning_the_same_token_is_not_rerun_at_once() {
        // gcloud hands back its cached token until its own threshold; we
        // must not rerun it for every tunnel meanwhile.
        let tok = jwt(Some(unix_now() + 120), "same");
        let tokens = command(&format!("echo {tok}"));
        for _ in 0..5 {
            assert_eq!(
                tokens.bearer().await.unwrap(),
                format!("Bearer {tok}").as_str()
            );
        }
        assert_eq!(tokens.fetches(), 2);
    }

    #[tokio::test]
    async fn file_token_is_reread_on_refresh() {
        let dir = std::env::temp_dir().join(format!("postern-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        // exp inside the margin, so every call re-reads the file.
        let first = jwt(Some(unix_now() + 60), "one");
        std::fs::write(&path, format!("{first}\n")).unwrap();
        let tokens = IdTokens::new(TokenSource::File(path.clone()), AUD.to_owned());
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer {first}").as_str()
        );
        let second = jwt(Some(unix_now() + 3600), "two");
        std::fs::write(&path, &second).unwrap();
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer {second}").as_str()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let path = PathBuf::from("/nonexistent/postern/token");
        let err = IdTokens::new(TokenSource::File(path), AUD.to_owned())
            .bearer()
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/postern/token"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn static_token_is_fetched_once() {
        let tokens = IdTokens::new(TokenSource::Static("static-secret".into()), AUD.to_owned());
        for _ in 0..3 {
            assert_eq!(tokens.bearer().await.unwrap(), "Bearer static-secret");
        }
        assert_eq!(tokens.fetches(), 1);
        assert_no_token(&format!("{tokens:?}"), "static-secret");
    }

    #[tokio::test]
    async fn header_unsafe_token_is_malformed() {
        let tokens = IdTokens::new(TokenSource::Static("bad\u{7}tok".into()), AUD.to_owned());
        let err = tokens.bearer().await.unwrap_err();
        assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
        assert_no_token(&format!("{err} {err:?}"), "bad\u{7}tok");
    }

    #[test]
    fn parse_sources() {
        let expected_default = default_metadata_host();
        match "metadata".parse::<TokenSource>().unwrap() {
            TokenSource::Metadata { host } => assert_eq!(host, expected_default),
            other => panic!("{other:?}"),
        }
        match "metadata=127.0.0.1:8080".parse::<TokenSource>().unwrap() {
            TokenSource::Metadata { host } => assert_eq!(host, "127.0.0.1:8080"),
            other => panic!("{other:?}"),
        }
        match "command=gcloud auth print-identity-token --audiences=x"
            .parse::<TokenSource>()
            .unwrap()
        {
            TokenSource::Command(c) => {
                assert_eq!(c, "gcloud auth print-identity-token --audiences=x")
            }
            other => panic!("{other:?}"),
        }
        match "file=/run/secrets/token".parse::<TokenSource>().unwrap() {
            TokenSource::File(p) => assert_eq!(p, PathBuf::from("/run/secrets/token")),
            other => panic!("{other:?}"),
        }
        // PATH is always set; avoids set_var racing with other tests.
        let path_value = std::env::var("PATH").unwrap();
        match "env=PATH".parse::<TokenSource>().unwrap() {
            TokenSource::Static(t) => assert_eq!(t, path_value.trim()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parse_errors() {
        let err = "env=POSTERN_TEST_SURELY_UNSET_VAR_81723"
            .parse::<TokenSource>()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("POSTERN_TEST_SURELY_UNSET_VAR_81723"),
            "{err}"
        );
        assert!(err.to_string().contains("not set"), "{err}");

        for bad in [
            "bogus",
            "vault=x",
            "metadata=",
            "command=",
            "file=",
            "env=",
            "",
        ] {
            let err = bad.parse::<TokenSource>().unwrap_err();
            assert!(matches!(err, TokenError::Source(_)), "{bad}: {err}");
            assert!(!err.to_string().contains('\n'));
        }
        // A pasted token is not echoed back.
        let pasted = jwt(Some(1), "pasted");
        assert_no_token(
            &pasted.parse::<TokenSource>().unwrap_err().to_string(),
            &pasted,
        );
    }

    #[test]
    fn static_source_debug_is_redacted() {
        let src = TokenSource::Static("hunter2-token".into());
        assert_no_token(&format!("{src:?}"), "hunter2-token");
    }

    #[test]
    fn jwt_exp_parsing() {
        assert_eq!(jwt_exp(&jwt(Some(1234), "x")), Some(Some(1234)));
        assert_eq!(jwt_exp(&jwt(None, "x")), Some(None));
        assert_eq!(jwt_exp("opaque"), None);
        assert_eq!(jwt_exp("a.b"), None);
        assert_eq!(jwt_exp("a.!!!.c"), None);
        assert_eq!(jwt_exp("a.b.c.d"), None);
    }

    #[tokio::test]
    async fn jwt_without_exp_from_command_is_cached() {
        let tok = jwt(None, "noexp");
        let tokens = command(&format!("echo {tok}"));
        tokens.bearer().await.unwrap();
        tokens.bearer().await.unwrap();
        assert_eq!(tokens.fetches(), 1);
    }

    #[test]
    fn http_helpers() {
        assert_eq!(
            with_default_port("metadata.google.internal"),
            "metadata.google.internal:80"
        );
        assert_eq!(with_default_port("127.0.0.1:8080"), "127.0.0.1:8080");
        assert_eq!(with_default_port("[::1]"), "[::1]:80");
        assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
        assert_eq!(with_default_port("::1"), "[::1]:80");
        assert_eq!(
            percent_encode("https://a.b/c?d=e f"),
            "https%3A%2F%2Fa.b%2Fc%3Fd%3De%20f"
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap(),
            (200, b"hi".to_vec())
        );
        assert_eq!(
            parse_response(b"HTTP/1.0 200 OK\r\n\r\nrest").unwrap(),
            (200, b"rest".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi").is_err());
        assert!(parse_response(b"garbage\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
        assert!(dechunk(b"5\r\nab").is_err());
    }
}
