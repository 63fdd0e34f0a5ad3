//! Prometheus metrics for `postern server`, served at `/metrics` on a
//! separate listener (`--metrics-listen`, off by default: on Cloud Run only
//! the tunnel port is reachable, and metrics must never share it).
//!
//! Encoding uses the `prometheus-client` crate (the Prometheus project's
//! own Rust client): it gets the OpenMetrics text format, escaping and
//! histogram buckets right, and its counters are plain atomics, cheap on the
//! per-byte path. The HTTP side is a few lines of tokio instead of an HTTP
//! server crate: one fixed `GET /metrics`, one response, then close.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `postern_tunnels_open` | gauge | |
//! | `postern_tunnels_total` | counter (tunnels answered 200) | |
//! | `postern_tunnel_bytes_total` | counter | `direction` = `to_backend`/`from_backend` |
//! | `postern_handshake_failures_total` | counter | `reason` (see [`crate::tls::HandshakeFailure::label`], `timeout`) |
//! | `postern_refusals_total` | counter | `reason` = `not_found`/`method_not_allowed`/`tunnel_limit`/`malformed`/`denied`/`no_route`/`backend_unreachable` |
//! | `postern_tunnels_closed_total` | counter | `reason` (the tunnel's close reason) |
//! | `postern_backend_connect_seconds` | histogram | |
//! | `postern_reloads_total` | counter | `result` = `ok`/`rejected` |
//! | `postern_connections_open` | gauge | |
//! | `postern_connections_refused_total` | counter | `reason` = `max_connections`/`buffer_budget` |
//! | `postern_resumes_total` | counter | `result` = `accepted`/`refused`, `reason` = `ok` or the refusal's label |
//! | `postern_sessions_detached` | gauge | |
//! | `postern_session_cuts_total` | counter | |
//! | `postern_resent_bytes_total` | counter | |
//! | `postern_destination_decisions_total` | counter | `rule` (the rule's name, `""` if none), `decision` = `allowed` or the refusal's label |
//! | `postern_outer_handshakes_total` | counter | `kind` = `full`/`resumed`/`early_data` (outer TLS, self-hosted only) |

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// A `reason`/`result`/`direction` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// The server's counters; one set per server instance.
pub struct Metrics {
    registry: Registry,
    open: Gauge,
    tunnels: Counter,
    bytes: Family<Direction, Counter>,
    handshake_failures: Family<Reason, Counter>,
    refusals: Family<Reason, Counter>,
    closes: Family<Reason, Counter>,
    backend_connect: Histogram,
    reloads: Family<Outcome, Counter>,
    connections_open: Gauge,
    connections_refused: Family<Reason, Counter>,
    resumes: Family<Resume, Counter>,
    detached: Gauge,
    cuts: Counter,
    resent: Counter,
    outer: Family<Kind, Counter>,
    destinations: Family<Decision, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Decision {
    rule: String,
    decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Resume {
    result: &'static str,
    reason: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of zeroed metrics.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let open = Gauge::default();
        let tunnels = Counter::default();
        let bytes = Family::<Direction, Counter>::default();
        let handshake_failures = Family::<Reason, Counter>::default();
        let refusals = Family::<Reason, Counter>::default();
        let closes = Family::<Reason, Counter>::default();
        // 0.5 ms .. ~8 s: loopback backends land in the first buckets,
        // a backend that is timing out in the last.
        let backend_connect = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        let reloads = Family::<Outcome, Counter>::default();
        let connections_open = Gauge::default();
        let connections_refused = Family::<Reason, Counter>::default();
        registry.register(
            "postern_connections_open",
            "HTTP/2 connections open now",
            connections_open.clone(),
        );
        registry.register(
            "postern_connections_refused",
            "Connections closed at once, by reason",
            connections_refused.clone(),
        );
        registry.register("postern_tunnels_open", "Tunnels open now", open.clone());
        registry.register(
            "postern_tunnels",
            "Tunnels answered with 200",
            tunnels.clone(),
        );
        registry.register(
            "postern_tunnel_bytes",
            "Bytes carried through tunnels",
            bytes.clone(),
        );
        registry.register(
            "postern_handshake_failures",
            "Inner mTLS handshakes that failed, by reason",
            handshake_failures.clone(),
        );
        registry.register(
            "postern_refusals",
            "Tunnel requests refused, by reason",
            refusals.clone(),
        );
        registry.register(
            "postern_tunnels_closed",
            "Tunnels ended, by close reason",
            closes.clone(),
        );
        registry.register(
            "postern_backend_connect_seconds",
            "Time to connect to the backend",
            backend_connect.clone(),
        );
        registry.register(
            "postern_reloads",
            "Certificate/config reloads, by result",
            reloads.clone(),
        );
        let resumes = Family::<Resume, Counter>::default();
        let detached = Gauge::default();
        let resent = Counter::default();
        let cuts = Counter::default();
        registry.register(
            "postern_resumes",
            "Resume requests, by result (accepted, refused) and reason",
            resumes.clone(),
        );
        registry.register(
            "postern_sessions_detached",
            "Sessions cut and waiting for their client to resume",
            detached.clone(),
        );
        registry.register(
            "postern_session_cuts",
            "Times a session's carrier was lost and it detached (a move to a fresh request is not a cut)",
            cuts.clone(),
        );
        registry.register(
            "postern_resent_bytes",
            "Bytes sent again after resumes",
            resent.clone(),
        );
        let outer = Family::<Kind, Counter>::default();
        registry.register(
            "postern_outer_handshakes",
            "Outer TLS handshakes, by kind (full, resumed, early_data: the first requests came with the ClientHello)",
            outer.clone(),
        );
        let destinations = Family::<Decision, Counter>::default();
        registry.register(
            "postern_destination_decisions",
            "Destination requests, by the rule that decided and the decision (allowed, or the refusal's reason)",
            destinations.clone(),
        );
        Metrics {
            destinations,
            outer,
            resumes,
            detached,
            cuts,
            resent,
            registry,
            open,
            tunnels,
            bytes,
            handshake_failures,
            refusals,
            closes,
            backend_connect,
            reloads,
            connections_open,
            connections_refused,
        }
    }

    /// Counts a connection as open until the returned guard is dropped.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_open.inc();
        ConnectionGuard(self.clone())
    }

    /// Counts a connection closed at once (`--max-connections`, budget).
    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a tunnel as open until the returned guard is dropped.
    pub fn tunnel_opened(self: &Arc<Self>) -> OpenGuard {
        self.tunnels.inc();
        self.open.inc();
        OpenGuard(self.clone())
    }

    /// Counts bytes carried; `to_backend` is the client -> backend direction.
    pub fn add_bytes(&self, to_backend: bool, n: u64) {
        let direction = if to_backend {
            "to_backend"
        } else {
            "from_backend"
        };
        self.bytes.get_or_create(&Direction { direction }).inc_by(n);
    }

    /// Counts a failed inner handshake.
    pub fn handshake_failed(&self, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&Reason { reason })
            .inc();
    }

    /// Counts a refused tunnel request.
    pub fn refused(&self, reason: &'static str) {
        self.refusals.get_or_create(&Reason { reason }).inc();
    }

    /// Counts an ended tunnel by its close reason.
    pub fn closed(&self, reason: &'static str) {
        self.closes.get_or_create(&Reason { reason }).inc();
    }

    /// Records how long a backend connect took.
    pub fn backend_connected(&self, took: Duration) {
        self.backend_connect.observe(took.as_secs_f64());
    }

    /// Counts an outer TLS handshake by kind (see [`crate::tls::early::ServerTls::kind`]).
    pub fn outer_handshake(&self, kind: &'static str) {
        self.outer.get_or_create(&Kind { kind }).inc();
    }

    /// Counts a reload attempt.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "rejected" };
        self.reloads.get_or_create(&Outcome { result }).inc();
    }

    /// Counts a resume request: `reason` is `"ok"` when accepted, else the
    /// refusal's label.
    pub fn resumed(&self, accepted: bool, reason: &'static str) {
        let result = if accepted { "accepted" } else { "refused" };
        self.resumes.get_or_create(&Resume { result, reason }).inc();
    }

    /// One more (`true`) or one fewer detached session.
    pub fn detached(&self, more: bool) {
        if more {
            self.cuts.inc();
            self.detached.inc();
        } else {
            self.detached.dec();
        }
    }

    /// Counts a destination decision: `allowed` or a refusal's label, under
    /// the rule that made it (`""` when none did).
    pub fn destination(&self, rule: &str, decision: &'static str) {
        self.destinations
            .get_or_create(&Decision {
                rule: rule.to_owned(),
                decision,
            })
            .inc();
    }

    /// Counts bytes resent after a resume.
    pub fn add_resent(&self, n: u64) {
        self.resent.inc_by(n);
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Decrements the open-tunnel gauge when dropped.
pub struct OpenGuard(Arc<Metrics>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

/// Decrements the open-connection gauge when dropped.
pub struct ConnectionGuard(Arc<Metrics>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.connections_open.dec();
    }
}

/// Binds `addr` and serves `/metrics` there until `shutdown`.
pub(super) async fn listen(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("--metrics-listen {addr}: cannot bind: {e}"))?;
    let local = listener.local_addr()?;
    tokio::spawn(serve(listener, metrics, shutdown));
    Ok(local)
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub(super) async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        let sock = tokio::select! {
            r = listener.accept() => match r {
                Ok((sock, _)) => sock,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let limit = Duration::from_secs(5);
            if let Err(e) = tokio::time::timeout(limit, respond(sock, &metrics)).await {
                debug!(error = %e, "metrics request timed out");
            }
        });
    }
}

/// Reads one request head (at most 8 KiB) and answers it.
async fn respond(mut sock: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() + n > 8192 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next(), parts.next());
    let (status, ctype, body) = match (method, target) {
        (Some(b"GET"), Some(b"/metrics")) => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(response.as_bytes()).await?;
    sock.shutdown().await
}
