//! How a tunnel ended: the error kinds a caller branches on, the report
//! every tunnel leaves, and its one log line.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::authz::PeerIdentity;
use crate::tls::HandshakeFailure;
use crate::transport::splice::Totals;

/// Receives every finished tunnel's report.
pub(crate) type Observer = Arc<dyn Fn(&TunnelReport) + Send + Sync>;

/// Why a tunnel ended, or why it never carried bytes.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The inner mTLS handshake failed: no certificate, wrong CA, expired,
    /// revoked, identity not allowed, and so on.
    #[error("inner TLS handshake failed: {failure}: {detail}")]
    Handshake {
        /// The classified cause.
        failure: HandshakeFailure,
        /// The TLS library's own words.
        detail: String,
    },
    /// The client did not finish the inner handshake in time.
    #[error("inner TLS handshake timed out")]
    HandshakeTimeout,
    /// No route on this path serves the inner handshake's SNI.
    #[error("no route for path {path} and SNI {sni}")]
    NoRoute {
        /// The request path.
        path: String,
        /// The SNI the client sent, or `<none>`.
        sni: String,
    },
    /// The backend refused or could not be reached.
    #[error("backend {backend} unreachable: {reason}")]
    BackendUnreachable {
        /// The backend address.
        backend: String,
        /// The connect error, or "timed out".
        reason: String,
    },
    /// The PROXY protocol header could not be sent.
    #[error("PROXY header to the backend: {0}")]
    ProxyHeader(String),
    /// The HTTP/2 stream failed before the tunnel was established.
    #[error("HTTP/2 stream: {0}")]
    Stream(#[from] h2::Error),
    /// No byte either way for the idle timeout.
    #[error("idle for {0:?}: closed by the server")]
    Idle(Duration),
    /// The tunnel reached `--max-lifetime`.
    #[error("open for {0:?}, the maximum lifetime: closed by the server")]
    Lifetime(Duration),
    /// The destination the client named was refused or could not be reached.
    #[error("destination {asked} refused: {label}: {reason}")]
    Destination {
        /// The destination as asked (`?` if the request was unreadable).
        asked: String,
        /// The refusal's label (`destination::Refusal::label`).
        label: &'static str,
        /// Why.
        reason: String,
    },
    /// Copying failed midway (a reset on either side).
    #[error("{0}")]
    Copy(std::io::Error),
}

impl TunnelError {
    /// A stable snake_case close reason (logs and metrics).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Handshake { .. } => "handshake_failed",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::NoRoute { .. } => "no_route",
            Self::BackendUnreachable { .. } => "backend_unreachable",
            Self::ProxyHeader(_) => "proxy_header_failed",
            Self::Stream(_) => "stream_error",
            Self::Idle(_) => "idle_timeout",
            Self::Lifetime(_) => "max_lifetime",
            Self::Destination { .. } => "destination_refused",
            Self::Copy(_) => "reset",
        }
    }
}

/// What one finished tunnel did: logged as one line, and handed to the
/// observer set with [`Config::on_tunnel_end`](crate::server::Config::on_tunnel_end).
#[derive(Debug, Clone)]
pub struct TunnelReport {
    /// The client's verified identity (None with --no-inner-tls or before the handshake).
    pub identity: Option<PeerIdentity>,
    /// The route's name (the request path until a route was chosen).
    pub route: String,
    /// The client's address: the front end's `x-forwarded-for` entry behind a
    /// front end, else the TCP peer.
    pub peer: SocketAddr,
    /// Byte counts (inbound = backend -> client, outbound = client -> backend).
    pub totals: Totals,
    /// How long the tunnel lasted.
    pub duration: Duration,
    /// `"closed"` for a clean close, else [`TunnelError::label`].
    pub close: &'static str,
    /// `Ok` for a clean close; the error's text otherwise.
    pub outcome: Result<(), String>,
    /// Carriers the tunnel's session moved to after its first (0 without
    /// resume).
    pub resumes: u64,
    /// Times the session lost its carrier and waited for a resume (a move
    /// is not one).
    pub cuts: u64,
    /// What a tunnel that named a destination asked for and got.
    pub destination: Option<DestinationReport>,
}

/// A destination tunnel's audit: the destination asked, the address
/// dialled, the rule that allowed it (a refusal is the tunnel's error).
#[derive(Debug, Clone, Default)]
pub struct DestinationReport {
    /// As the client named it, e.g. `db.internal:5432`.
    pub asked: String,
    /// The checked address connected.
    pub dialled: Option<SocketAddr>,
    /// The rule that allowed it.
    pub rule: Option<String>,
}

impl TunnelReport {
    /// Takes the session's counts.
    pub(crate) fn counted(&mut self, stats: crate::session::Stats) {
        self.resumes = stats.resumes;
        self.cuts = stats.cuts;
    }
}

/// The one summary line per tunnel.
pub(crate) fn log(report: &TunnelReport) {
    let identity = report.identity.as_ref().map(|i| i.to_string());
    // With several names, all of them, so the log shows what else the
    // certificate carries besides the one that was let in.
    let names = report
        .identity
        .as_ref()
        .map(|i| i.all_names())
        .filter(|n| n.len() > 1)
        .map(|n| n.join(", "));
    let (to_backend, from_backend) = (report.totals.outbound, report.totals.inbound);
    let duration_ms = report.duration.as_millis() as u64;
    let (route, close) = (report.route.as_str(), report.close);
    let (resumes, cuts) = (report.resumes, report.cuts);
    let dest = report.destination.as_ref();
    let destination = dest.map(|d| d.asked.as_str());
    let dialled = dest.and_then(|d| d.dialled).map(|a| a.to_string());
    let rule = dest.and_then(|d| d.rule.as_deref());
    match &report.outcome {
        Ok(()) => info!(
            identity,
            names,
            route,
            destination,
            dialled,
            rule,
            to_backend,
            from_backend,
            duration_ms,
            resumes,
            cuts,
            close,
            "tunnel ended"
        ),
        Err(error) => warn!(
            identity,
            names,
            route,
            destination,
            dialled,
            rule,
            to_backend,
            from_backend,
            duration_ms,
            resumes,
            cuts,
            close,
            error,
            "tunnel ended"
        ),
    }
}
