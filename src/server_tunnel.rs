//! One tunnel on the server: answer `200`, end the inner mTLS, check the
//! client's identity, and only then connect the backend and copy bytes.
//!
//! Nothing reaches the backend before the handshake (including the identity
//! check, done inside it by the verifier) has succeeded.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::TlsAcceptor;
use tracing::{info, info_span, warn, Instrument};

use crate::identity::PeerIdentity;
use crate::server::{reply, Config};
use crate::stream::H2Stream;
use crate::tls;
use crate::tunnel::{self, Totals};

/// Why a tunnel ended, or why it never carried bytes.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The inner mTLS handshake failed: no certificate, wrong CA, identity
    /// not allowed, revoked, and so on.
    #[error("inner TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The client did not finish the inner handshake in time.
    #[error("inner TLS handshake timed out")]
    HandshakeTimeout,
    /// The backend refused or could not be reached.
    #[error("backend {backend} unreachable: {reason}")]
    BackendUnreachable {
        /// The backend address.
        backend: String,
        /// The connect error, or "timed out".
        reason: String,
    },
    /// The HTTP/2 stream failed before the tunnel was established.
    #[error("HTTP/2 stream: {0}")]
    Stream(#[from] h2::Error),
    /// Copying failed midway (a reset on either side).
    #[error("{0}")]
    Copy(std::io::Error),
}

/// What one finished tunnel did: logged as one line, and sent to
/// [`Config::reports`] when set.
#[derive(Debug, Clone)]
pub struct TunnelReport {
    /// The client's verified identity (None with --no-inner-tls or before the handshake).
    pub identity: Option<PeerIdentity>,
    /// The route's name.
    pub route: String,
    /// Where the front end says the request came from.
    pub peer: SocketAddr,
    /// Byte counts (inbound = backend -> client, outbound = client -> backend).
    pub totals: Totals,
    /// How long the tunnel lasted.
    pub duration: Duration,
    /// `Ok` for a clean close; the error's text otherwise.
    pub outcome: Result<(), String>,
}

/// Runs one tunnel request to its end and reports it.
pub async fn run(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SocketAddr,
    route: usize,
    config: Arc<Config>,
    _permit: OwnedSemaphorePermit,
) {
    let started = Instant::now();
    let Some(r) = config.routes.iter().nth(route) else {
        return;
    };
    let span = info_span!("tunnel", %peer, route = %r.name, identity = tracing::field::Empty);
    let mut report = TunnelReport {
        identity: None,
        route: r.name.clone(),
        peer,
        totals: Totals::default(),
        duration: Duration::ZERO,
        outcome: Ok(()),
    };
    let result = tunnel(req, respond, &config, route, &mut report)
        .instrument(span.clone())
        .await;
    report.duration = started.elapsed();
    report.outcome = result.map_err(|e| e.to_string());
    span.in_scope(|| {
        let identity = report.identity.as_ref().map(|i| i.to_string());
        let close = match &report.outcome {
            Ok(()) => "closed",
            Err(reason) => reason.as_str(),
        };
        let level_ok = report.outcome.is_ok();
        if level_ok {
            info!(
                identity,
                to_backend = report.totals.outbound,
                from_backend = report.totals.inbound,
                duration_ms = report.duration.as_millis() as u64,
                close,
                "tunnel ended"
            );
        } else {
            warn!(
                identity,
                to_backend = report.totals.outbound,
                from_backend = report.totals.inbound,
                duration_ms = report.duration.as_millis() as u64,
                close,
                "tunnel ended"
            );
        }
    });
    if let Some(tx) = &config.reports {
        let _ = tx.send(report);
    }
}

async fn tunnel(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    config: &Config,
    route: usize,
    report: &mut TunnelReport,
) -> Result<(), TunnelError> {
    let Some(r) = config.routes.iter().nth(route) else {
        return Ok(());
    };
    let Some(inner) = &config.inner else {
        // Plain tunnel: like Envoy, answer only once the backend is connected,
        // so a client learns of a dead backend from the status.
        let mut backend = match connect(&r.backend, config.handshake_timeout).await {
            Ok(b) => b,
            Err(e) => {
                reply(
                    &mut respond,
                    StatusCode::BAD_GATEWAY,
                    "backend unreachable\n",
                );
                return Err(e);
            }
        };
        let send = respond.send_response(ok(), false)?;
        let mut stream = H2Stream::server(send, req.into_body());
        return copy(&mut stream, &mut backend, report).await;
    };
    // Answer first: the client's inner ClientHello is already on its way, and
    // it needs the response to read our ServerHello.
    let send = respond.send_response(ok(), false)?;
    let stream = H2Stream::server(send, req.into_body());
    let acceptor = TlsAcceptor::from(inner[route].clone());
    let handshake = acceptor.accept(stream).into_fallible();
    let mut tls = match tokio::time::timeout(config.handshake_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err((e, stream))) => {
            stream.linger().await;
            return Err(TunnelError::Handshake(e));
        }
        Err(_) => return Err(TunnelError::HandshakeTimeout),
    };
    report.identity = tls::peer_identity(tls.get_ref().1);
    if let Some(id) = &report.identity {
        tracing::Span::current().record("identity", tracing::field::display(id));
    }
    let mut backend = match connect(&r.backend, config.handshake_timeout).await {
        Ok(b) => b,
        Err(e) => {
            // CONNECT_ERROR is what RFC 9113 §8.5 prescribes for a failed
            // CONNECT target; the client turns it into a reset of its socket.
            tls.get_mut().0.reset(Reason::CONNECT_ERROR);
            return Err(e);
        }
    };
    copy(&mut tls, &mut backend, report).await
}

fn ok() -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    response
}

async fn connect(backend: &str, limit: Duration) -> Result<TcpStream, TunnelError> {
    let unreachable = |reason: String| TunnelError::BackendUnreachable {
        backend: backend.to_owned(),
        reason,
    };
    let sock = tokio::time::timeout(limit, TcpStream::connect(backend))
        .await
        .map_err(|_| unreachable("timed out".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    let _ = sock.set_nodelay(true);
    Ok(sock)
}

/// Copies until both directions end; a failure on one side resets the other.
async fn copy<S>(
    stream: &mut S,
    backend: &mut TcpStream,
    report: &mut TunnelReport,
) -> Result<(), TunnelError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (result, totals) = tunnel::splice(backend, stream).await;
    report.totals = totals;
    if let Err(e) = result {
        tunnel::abort(backend);
        return Err(TunnelError::Copy(e));
    }
    let _ = backend.shutdown().await;
    Ok(())
}
