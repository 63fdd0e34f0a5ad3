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
use h2::RecvStream;
use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_rustls::LazyConfigAcceptor;
use tracing::{field, info_span, Instrument};

use crate::authz::PeerIdentity;
use crate::server::metrics::Metrics;
use crate::server::proxy_protocol;
use crate::server::reload::Material;
use crate::server::reply::{ok, reply};
use crate::server::report::{log, Observer, TunnelError, TunnelReport};
use crate::server::routes::Route;
use crate::server::watchdog::{self, Activity, Expired, Metered};
use crate::server::windows::Counted;
use crate::session::{handshake, Abort, Carried, Phase, Registry, ResumeKey, Session};
use crate::tls::{self, HandshakeFailure};
use crate::transport::splice::{self, Totals};
use crate::transport::stream::H2Stream;

/// The timeouts a tunnel runs under: all the server configuration a tunnel sees.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Limit for the inner handshake and the backend connect (and, on the
    /// connection, the outer TLS handshake and HTTP/2 preface).
    pub handshake_timeout: Duration,
    /// Close tunnels idle this long.
    pub idle_timeout: Option<Duration>,
    /// Close tunnels this long after they opened.
    pub max_lifetime: Option<Duration>,
    /// Ping WebSocket tunnels this often (and drop one silent for two).
    pub websocket_ping: Option<Duration>,
}

/// One admitted tunnel request: its path, where it came from, the material
/// snapshot it will use to the end, what it reports to, and its slot under
/// `--max-tunnels`.
pub(crate) struct Tunnel {
    pub(crate) path: String,
    pub(crate) source: SocketAddr,
    pub(crate) material: Arc<Material>,
    pub(crate) limits: Limits,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) observer: Option<Observer>,
    /// This request on its connection: marked established once the client
    /// is authenticated, which earns the connection wider windows.
    pub(crate) conn: Counted,
    /// The process's sessions, unless `--no-resume`.
    pub(crate) sessions: Option<Registry>,
    /// The per-identity destination limits.
    pub(crate) gate: Arc<crate::destination::Gate>,
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Tunnel {
    /// Runs the tunnel to its end, then logs, counts and reports it.
    pub(crate) async fn run(self, req: Request<RecvStream>, respond: SendResponse<Bytes>) {
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let open = metrics.tunnel_opened();
        let span = info_span!("tunnel", peer = %self.source, route = field::Empty, identity = field::Empty, destination = field::Empty, trace = field::Empty);
        // Lines of this tunnel group with the front end's request log.
        if let Some(id) = crate::logging::trace_id(req.headers()) {
            span.record(crate::logging::TRACE_FIELD, id);
        }
        let mut report = TunnelReport {
            identity: None,
            route: self.path.clone(),
            peer: self.source,
            totals: Totals::default(),
            duration: Duration::ZERO,
            close: "closed",
            outcome: Ok(()),
            resumes: 0,
            cuts: 0,
            destination: None,
        };
        let result = self
            .tunnel(req, respond, &mut report)
            .instrument(span.clone())
            .await;
        report.duration = started.elapsed();
        if let Err(e) = &result {
            report.close = e.label();
            match e {
                TunnelError::Handshake { failure, .. } => {
                    metrics.handshake_failed(failure.label());
                    if *failure == HandshakeFailure::NotAllowed {
                        metrics.refused("denied");
                    }
                }
                TunnelError::HandshakeTimeout => metrics.handshake_failed("timeout"),
                TunnelError::NoRoute { .. } => metrics.refused("no_route"),
                TunnelError::BackendUnreachable { .. } => metrics.refused("backend_unreachable"),
                _ => {}
            }
        }
        // Counted closed before anyone hears of it, so a scrape after the
        // report sees consistent numbers.
        drop(open);
        metrics.closed(report.close);
        report.outcome = result.map_err(|e| e.to_string());
        span.in_scope(|| log(&report));
        if let Some(observe) = &self.observer {
            observe(&report);
        }
    }

    async fn tunnel(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        report: &mut TunnelReport,
    ) -> Result<(), TunnelError> {
        let routes = &self.material.routes;
        // Resume only if the client asked, in the version we speak.
        let sessions = self.sessions.as_ref().filter(|_| {
            req.headers()
                .get(handshake::SESSION)
                .is_some_and(|v| v.as_bytes() == handshake::VERSION.as_bytes())
        });
        let body = req.into_body();
        // Any route's config will do to take the stream back when no route fits.
        let Some(any_inner) = routes.iter().find_map(|r| r.inner.clone()) else {
            // Plain tunnel: like Envoy, answer only once the backend is connected,
            // so a client learns of a dead backend from the status.
            let Some(route) = routes.select(&self.path, None) else {
                reply(
                    &mut respond,
                    StatusCode::NOT_FOUND,
                    "no tunnel at this path\n",
                );
                return Err(self.no_route(None));
            };
            chose(report, route);
            let mut backend = match self.backend(route, None).await {
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
            // No client to authenticate: the backend now reads what comes.
            self.conn.establish();
            let Some(registry) = sessions else {
                let send = respond.send_response(ok(), false)?;
                let mut stream = H2Stream::server(send, body);
                return self.copy(&mut stream, &mut backend, report, |s| s).await;
            };
            // No inner TLS to export a key from: the `200` carries one.
            let key = ResumeKey::random();
            let mut session = self.open(registry, &mut respond, body, Some(&key))?;
            session.handle().set_key(key);
            let result = self.copy(&mut session, &mut backend, report, |s| s).await;
            report.counted(session.handle().stats());
            return result;
        };
        // Answer first: the client's inner ClientHello is already on its way, and
        // it needs the response to read our ServerHello.
        match sessions {
            None => {
                let send = respond.send_response(ok(), false)?;
                let stream = H2Stream::server(send, body);
                self.inner(stream, any_inner, report).await
            }
            Some(registry) => {
                let session = self.open(registry, &mut respond, body, None)?;
                let handle = session.handle();
                let result = self.inner(session, any_inner, report).await;
                report.counted(handle.stats());
                result
            }
        }
    }

    /// Answers `200` with a new session's id (and, on a plain tunnel, its
    /// key) and runs the session over the stream that opens; a task beside
    /// it notices cuts and keeps the detached count.
    fn open(
        &self,
        registry: &Registry,
        respond: &mut SendResponse<Bytes>,
        body: RecvStream,
        key: Option<&ResumeKey>,
    ) -> Result<Session, TunnelError> {
        let mut failed = None;
        let mut body = Some(body);
        let session = registry.open_with(|id| {
            let mut response = ok();
            let headers = response.headers_mut();
            headers.insert(
                handshake::SESSION,
                http::HeaderValue::try_from(id.to_string()).ok()?,
            );
            if let Some(key) = key {
                headers.insert(handshake::SESSION_KEY, key.to_header());
            }
            match respond.send_response(response, false) {
                Ok(send) => Some(H2Stream::server(send, body.take()?)),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        });
        let Some(session) = session else {
            return Err(failed.map(TunnelError::Stream).unwrap_or_else(|| {
                TunnelError::Copy(std::io::Error::other("stream gone before its answer"))
            }));
        };
        let handle = session.handle();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let mut watch = handle.watch();
            let watcher = async {
                let mut detached = false;
                loop {
                    let phase = *watch.borrow_and_update();
                    if (phase == Phase::Detached) != detached {
                        detached = !detached;
                        metrics.detached(detached);
                    }
                    if phase == Phase::Ended || watch.changed().await.is_err() {
                        if detached {
                            metrics.detached(false);
                        }
                        return;
                    }
                }
            };
            tokio::join!(handle.drive(), watcher);
            metrics.add_resent(handle.stats().resent);
        });
        Ok(session)
    }

    /// The inner mTLS over `stream`, the identity check, the backend, the copy.
    async fn inner<S: Carried + 'static>(
        &self,
        stream: S,
        any_inner: Arc<rustls::ServerConfig>,
        report: &mut TunnelReport,
    ) -> Result<(), TunnelError> {
        let routes = &self.material.routes;
        // One deadline for the whole inner handshake, ClientHello included.
        let deadline = tokio::time::Instant::now() + self.limits.handshake_timeout;
        let hello = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let start = match tokio::time::timeout_at(deadline, hello).await {
            Ok(Ok(start)) => start,
            Ok(Err(e)) => return Err(handshake_error(&e)),
            Err(_) => return Err(TunnelError::HandshakeTimeout),
        };
        let sni = start.client_hello().server_name().map(str::to_owned);
        let chosen = routes
            .select(&self.path, sni.as_deref())
            .and_then(|r| Some((r, r.inner.clone()?)));
        let Some((route, server_config)) = chosen else {
            // Nothing to hand the ClientHello to: reset instead of answering.
            let mut accept = start.into_stream(any_inner);
            if let Some(s) = accept.get_mut() {
                s.abort(Abort::Refused).await;
            }
            return Err(self.no_route(sni));
        };
        chose(report, route);
        // Fallible, to keep the stream on failure: the alert must reach the
        // client before the stream ends (see `H2Stream::linger`).
        let handshake = start.into_stream(server_config).into_fallible();
        let mut tls = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err((e, stream))) => {
                stream.linger().await;
                return Err(handshake_error(&e));
            }
            Err(_) => return Err(TunnelError::HandshakeTimeout),
        };
        // From here the inner TLS carries half-closes (close_notify), so our
        // END_STREAM may wait for the client's; see `defer_end_stream`.
        let (io, conn) = tls.get_mut();
        io.defer_end();
        io.keyed(conn).await;
        // Authenticated: only now may the connection buffer at full windows.
        self.conn.establish();
        report.identity = tls::peer_identity(tls.get_ref().1).map(|mut id| {
            id.matched = route.allow.matched_name(&id);
            id
        });
        if let Some(id) = &report.identity {
            tracing::Span::current().record("identity", field::display(id));
        }
        if tls.get_ref().1.alpn_protocol() == Some(crate::destination::wire::ALPN) {
            return self.destination(tls, deadline, report).await;
        }
        let mut backend = match self.backend(route, report.identity.as_ref()).await {
            Ok(b) => b,
            Err(e) => {
                tls.get_mut().0.abort(Abort::Refused).await;
                return Err(e);
            }
        };
        self.copy(&mut tls, &mut backend, report, |t| t.get_mut().0)
            .await
    }

    fn no_route(&self, sni: Option<String>) -> TunnelError {
        TunnelError::NoRoute {
            path: self.path.clone(),
            sni: sni.unwrap_or_else(|| "<none>".into()),
        }
    }

    /// Connects the route's backend and, if the route says so, sends the
    /// PROXY v2 header before any tunnel byte.
    async fn backend(
        &self,
        route: &Route,
        identity: Option<&PeerIdentity>,
    ) -> Result<Metered<TcpStream>, TunnelError> {
        let started = Instant::now();
        let mut sock = connect(&route.backend, self.limits.handshake_timeout).await?;
        self.metrics.backend_connected(started.elapsed());
        if route.proxy_protocol {
            let header = proxy_protocol::Header {
                source: self.source,
                destination: sock
                    .peer_addr()
                    .map_err(|e| TunnelError::ProxyHeader(e.to_string()))?,
                identity: identity.map(|id| id.name().to_owned()),
                tlvs: vec![],
            };
            let bytes = proxy_protocol::encode(&header)
                .map_err(|e| TunnelError::ProxyHeader(e.to_string()))?;
            sock.write_all(&bytes)
                .await
                .map_err(|e| TunnelError::ProxyHeader(e.to_string()))?;
        }
        Ok(Metered::new(sock, Activity::new(), self.metrics.clone()))
    }

    /// Copies until both directions end, the tunnel idles out or reaches its
    /// lifetime; a failure on one side resets the other (`reset` for the client's).
    pub(super) async fn copy<S, C>(
        &self,
        stream: &mut S,
        backend: &mut Metered<TcpStream>,
        report: &mut TunnelReport,
        carried: impl Fn(&mut S) -> &mut C,
    ) -> Result<(), TunnelError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
        C: Carried,
    {
        let activity = backend.activity();
        let (idle, lifetime) = (self.limits.idle_timeout, self.limits.max_lifetime);
        let expired = tokio::select! {
            (result, totals) = splice::splice(backend, stream) => {
                report.totals = totals;
                if result.is_err() {
                    splice::abort(&backend.inner);
                } else {
                    let _ = backend.shutdown().await;
                }
                // A clean end closes both sides of the stream before dropping
                // it: a drop with the client's END_STREAM still in flight
                // resets the stream, and a reset can discard response bytes
                // the client has not read yet. A failed copy passes the reset on.
                carried(stream).end_after(&result, Abort::Failed).await;
                return result.map_err(TunnelError::Copy);
            }
            expired = watchdog::expiry(&activity, idle, lifetime) => expired,
        };
        // The copy was cut short, so its totals are lost; the metrics still
        // counted every byte.
        splice::abort(&backend.inner);
        carried(stream).abort(Abort::Cancelled).await;
        Err(match expired {
            Expired::Idle(d) => TunnelError::Idle(d),
            Expired::Lifetime(d) => TunnelError::Lifetime(d),
        })
    }
}

fn chose(report: &mut TunnelReport, route: &Route) {
    report.route = route.name.clone();
    tracing::Span::current().record("route", field::display(&route.name));
}

fn handshake_error(e: &std::io::Error) -> TunnelError {
    TunnelError::Handshake {
        failure: HandshakeFailure::of(e),
        detail: e.to_string(),
    }
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
