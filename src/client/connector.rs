//! The client's HTTP/2 connections to the front end, shared by its tunnels.
//!
//! A tunnel takes a slot on the first live connection with fewer than
//! `max_streams` open tunnels (fill-first: fewer connections, warmer windows),
//! and a new connection is dialled only when none has room. Streams of one
//! connection all land on one Cloud Run instance, so `max_streams` bounds how
//! many tunnels share an instance's request slots through one connection; `1`
//! gives every tunnel its own connection (and lets the front end place each
//! one). Where a tunnel's session resumes is the affinity cookie's business
//! (`resume`), not this pool's.
//!
//! A connection that ends or receives GOAWAY is dropped from the pool; its
//! open tunnels run on until they finish, new ones go to a fresh connection.
//! Failed dials back off exponentially so a dead front end is not hammered.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request};
use rustls_pki_types::ServerName;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::gateway::{self, Dialer};
use super::proxy::Egress;
use super::reach::Transport;
use super::resolve::Resolved;
use super::target::Target;
use crate::transport::settings::{self, Pressure};
use crate::transport::stream::{H2Stream, StreamGuard};

/// Why a tunnel could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// TCP connect to the front end failed.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// host:port dialled.
        addr: String,
        /// The socket error (not a `source`: it is already in the message).
        reason: std::io::Error,
    },
    /// The outer TLS handshake failed (untrusted certificate, wrong name…).
    #[error("TLS to {host}: {reason}")]
    Tls {
        /// The front end's host name.
        host: String,
        /// What rustls said.
        reason: std::io::Error,
    },
    /// The outer certificate's issuer is not trusted: an intercepting
    /// proxy (or a private CA without `--tls-ca`).
    #[error("TLS to {host}: {}", crate::tls::explain_untrusted(host, issuer, proxy.as_deref()))]
    Untrusted {
        /// The front end's host name.
        host: String,
        /// The presented certificate's issuer.
        issuer: String,
        /// The proxy the connection went through, if any.
        proxy: Option<String>,
    },
    /// The front end (or a proxy on the way) does not speak HTTP/2.
    #[error(
        "{host} answered ALPN {alpn} instead of h2: the path downgraded HTTP/2 (a proxy \
         or a front end that speaks only HTTP/1.1, such as Cloud Run without --use-http2); \
         --transport websocket (or auto) is the way through"
    )]
    NoH2 {
        /// The front end's host name.
        host: String,
        /// What ALPN came back, in words (`http/1.1`, `none`).
        alpn: String,
    },
    /// HTTP/2 failed on the connection.
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    /// A recent dial failed; the next attempt waits for the backoff to pass.
    #[error("{addr} was unreachable a moment ago; next attempt in {retry_in:?}")]
    Backoff {
        /// host:port dialled.
        addr: String,
        /// Time until the next dial.
        retry_in: Duration,
    },
    /// The dial took longer than the connect timeout.
    #[error("connecting to {0}: timed out")]
    Timeout(String),
}

/// One pooled HTTP/2 connection.
struct Conn {
    send: SendRequest<Bytes>,
    open: Arc<AtomicUsize>,
    /// Cancelled when the connection task ends or keepalive fails.
    dead: CancellationToken,
    /// Set when the connection refused a new stream (GOAWAY received): its
    /// open tunnels go on, but it takes no new ones.
    retired: Arc<AtomicBool>,
}

impl Conn {
    fn usable(&self) -> bool {
        !self.dead.is_cancelled() && !self.retired.load(Ordering::Acquire)
    }

    fn slot(&self) -> Slot {
        self.open.fetch_add(1, Ordering::AcqRel);
        Slot {
            send: self.send.clone(),
            open: self.open.clone(),
            retired: self.retired.clone(),
        }
    }
}

/// A stream slot taken on a pooled connection.
struct Slot {
    send: SendRequest<Bytes>,
    open: Arc<AtomicUsize>,
    retired: Arc<AtomicBool>,
}

#[derive(Default)]
struct Pool {
    conns: Vec<Conn>,
    failures: u32,
    retry_at: Option<Instant>,
}

/// Opens tunnels to one target over pooled HTTP/2 connections.
pub struct Connector {
    target: Target,
    outer: Option<Arc<rustls::ClientConfig>>,
    max_streams: usize,
    keepalive: Option<Duration>,
    connect_timeout: Duration,
    pool: Mutex<Pool>,
    addrs: Resolved,
    transport: Transport,
    /// Set once `auto` found the front end without HTTP/2: shared by the
    /// siblings, so the choice holds for the URL.
    websocket: Arc<AtomicBool>,
    /// How WebSockets reach the front end (all but `--transport h2`).
    dialer: Option<Arc<Dialer>>,
    /// Straight to the front end, or through a forward proxy.
    egress: Arc<Egress>,
    /// Whether the sessions' buffer budget is pressed, which narrows every
    /// connection's stream windows (see `transport::settings::Pressure`).
    pressure: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Connector {
    /// A connector with no connections yet; `outer` is required for https targets.
    pub fn new(
        target: Target,
        outer: Option<Arc<rustls::ClientConfig>>,
        max_streams: usize,
        keepalive: Option<Duration>,
        connect_timeout: Duration,
    ) -> Self {
        Connector {
            addrs: Resolved::new(&target.host, target.port),
            target,
            outer,
            max_streams: max_streams.max(1),
            keepalive,
            connect_timeout,
            pool: Mutex::new(Pool::default()),
            transport: Transport::H2,
            websocket: Arc::new(AtomicBool::new(false)),
            dialer: None,
            egress: Arc::default(),
            pressure: None,
        }
    }

    /// This connector's connections following the sessions' buffer budget.
    pub(crate) fn with_pressure(mut self, pressure: tokio::sync::watch::Receiver<bool>) -> Self {
        self.pressure = Some(pressure);
        self
    }

    /// This connector reaching the front end as `egress` says (a proxy).
    pub fn with_egress(mut self, egress: Egress) -> Self {
        self.egress = Arc::new(egress);
        let transport = self.transport;
        self.with_transport(transport)
    }

    /// This connector with tunnels carried by `transport`.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        // WebSockets need HTTP/1.1 in the outer TLS's ALPN (`auto` offers
        // both and follows the answer); no early data: the upgrade waits
        // for its 101 anyway.
        let alpn = |protocols: &[&[u8]]| {
            self.outer.as_ref().map(|outer| {
                let mut config = (**outer).clone();
                config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
                config.enable_early_data = false;
                Arc::new(config)
            })
        };
        let (outer, ws_outer) = match transport {
            Transport::H2 => return self,
            Transport::Websocket => (
                alpn(&[crate::tls::ALPN_HTTP1]),
                alpn(&[crate::tls::ALPN_HTTP1]),
            ),
            Transport::Auto => (
                alpn(&[crate::tls::ALPN_H2, crate::tls::ALPN_HTTP1]),
                alpn(&[crate::tls::ALPN_HTTP1]),
            ),
        };
        self.outer = outer;
        self.dialer = Some(Arc::new(Dialer {
            target: self.target.clone(),
            addrs: Resolved::new(&self.target.host, self.target.port),
            egress: self.egress.clone(),
            outer: ws_outer,
            connect_timeout: self.connect_timeout,
            keepalive: self.keepalive,
        }));
        self
    }

    /// A connector to the same target with the same settings and a pool of
    /// its own.
    pub fn sibling(&self) -> Connector {
        let mut sibling = Connector::new(
            self.target.clone(),
            self.outer.clone(),
            self.max_streams,
            self.keepalive,
            self.connect_timeout,
        );
        sibling.transport = self.transport;
        sibling.websocket = self.websocket.clone();
        sibling.dialer = self.dialer.clone();
        sibling.egress = self.egress.clone();
        sibling.pressure = self.pressure.clone();
        sibling
    }

    /// Whether this connector's tunnels go over WebSockets now (`auto`
    /// decides on the first connection).
    pub fn uses_websocket(&self) -> bool {
        match self.transport {
            Transport::H2 => false,
            Transport::Websocket => true,
            Transport::Auto => self.websocket.load(Ordering::Relaxed),
        }
    }

    /// Most open tunnels per pooled connection.
    pub fn max_streams(&self) -> usize {
        self.max_streams
    }

    /// The target this connector dials.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Number of live pooled connections (for tests, through
    /// `postern::testing::connections`).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) async fn connections(&self) -> usize {
        let mut pool = self.pool.lock().await;
        pool.conns.retain(Conn::usable);
        pool.conns.len()
    }

    /// Opens a tunnel stream: sends the POST with `headers` and returns at
    /// once, without waiting for the response (the caller may write first).
    pub async fn open(&self, headers: &HeaderMap) -> Result<H2Stream, OpenError> {
        // A connection may die between being picked and being used (GOAWAY
        // in flight); one retry on a fresh pick covers that race.
        let mut last = None;
        for _ in 0..2 {
            let slot = self.pick().await?;
            let guard = StreamGuard(slot.open);
            match self.start(slot.send, headers).await {
                Ok(stream) => return Ok(stream.with_guard(guard)),
                Err(e) => {
                    debug!(error = %e, "connection refused a new stream; retrying on another");
                    slot.retired.store(true, Ordering::Release);
                    last = Some(e);
                }
            }
        }
        Err(last
            .map(OpenError::H2)
            .unwrap_or_else(|| OpenError::Timeout(self.addr())))
    }

    async fn start(
        &self,
        send: SendRequest<Bytes>,
        headers: &HeaderMap,
    ) -> Result<H2Stream, h2::Error> {
        let mut send = send.ready().await?;
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = self.target.uri.clone();
        *req.headers_mut() = headers.clone();
        let (response, stream) = send.send_request(req, false)?;
        Ok(H2Stream::client(stream, response))
    }

    /// Takes a stream slot on a connection with room, dialling if none has.
    async fn pick(&self) -> Result<Slot, OpenError> {
        // Holding the lock while dialling makes a burst of new tunnels share
        // one new connection instead of each dialling its own.
        let mut pool = self.pool.lock().await;
        pool.conns.retain(Conn::usable);
        if let Some(c) = pool
            .conns
            .iter()
            .find(|c| c.open.load(Ordering::Acquire) < self.max_streams)
        {
            return Ok(c.slot());
        }
        // While backing off, fail at once: queued tunnels must not each wait
        // out the backoff under the lock, and their apps learn immediately.
        if let Some(at) = pool.retry_at.filter(|at| *at > Instant::now()) {
            return Err(OpenError::Backoff {
                addr: self.addr(),
                retry_in: at - Instant::now(),
            });
        }
        match self.dial().await {
            Ok(conn) => {
                pool.failures = 0;
                pool.retry_at = None;
                let picked = conn.slot();
                pool.conns.push(conn);
                Ok(picked)
            }
            Err(e) => {
                pool.failures += 1;
                let backoff =
                    Duration::from_millis(100 << pool.failures.min(6)).min(Duration::from_secs(5));
                pool.retry_at = Some(Instant::now() + backoff);
                warn!(error = %e, retry_in = ?backoff, "cannot reach the front end");
                Err(e)
            }
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.target.host, self.target.port)
    }

    async fn dial(&self) -> Result<Conn, OpenError> {
        tokio::time::timeout(self.connect_timeout, self.dial_inner())
            .await
            .map_err(|_| OpenError::Timeout(self.addr()))?
    }

    async fn dial_inner(&self) -> Result<Conn, OpenError> {
        let addr = self.addr();
        let refused = |reason| OpenError::Connect {
            addr: addr.clone(),
            reason,
        };
        let addrs = self.addrs.addrs().await.map_err(refused)?;
        let connected = self
            .egress
            .connect(&self.target, &addrs, self.connect_timeout)
            .await;
        let tcp = match connected {
            Ok(tcp) => tcp,
            Err(reason) => {
                self.addrs.forget();
                return Err(refused(reason));
            }
        };
        if let Err(e) = crate::transport::socket::tune_outer(&tcp) {
            debug!(error = %e, "cannot set the outer socket's options");
        }
        let tcp = crate::transport::socket::buffered(tcp);
        match (&self.outer, self.target.tls) {
            (Some(outer), true) => {
                let host = self.target.host.clone();
                let name = ServerName::try_from(host.clone()).map_err(|e| OpenError::Tls {
                    host: host.clone(),
                    reason: std::io::Error::other(e),
                })?;
                // With a session to resume at a front end that allows it, the
                // connect returns at once and HTTP/2's first frames (and the
                // first tunnel's) ride in the ClientHello's flight as 0-RTT
                // data; a front end that refuses them gets them again after
                // the handshake (tokio-rustls keeps a copy).
                let tls = TlsConnector::from(outer.clone())
                    .early_data(true)
                    .connect(name, tcp)
                    .await
                    .map_err(|reason| match crate::tls::untrusted(&reason) {
                        Some(untrusted) => OpenError::Untrusted {
                            host: host.clone(),
                            issuer: untrusted.issuer.clone(),
                            proxy: self.egress.hop(&self.target).map(|hop| hop.proxy),
                        },
                        None => OpenError::Tls {
                            host: host.clone(),
                            reason,
                        },
                    })?;
                // Mid-handshake (0-RTT) nothing is negotiated yet; the
                // session resumed was one on which h2 was, and a server
                // accepts early data only for the same ALPN protocol.
                let (_, session) = tls.get_ref();
                let alpn = session.alpn_protocol();
                if !session.is_handshaking() && alpn != Some(crate::tls::ALPN_H2) {
                    if let Some(dialer) = &self.dialer {
                        if !self.websocket.swap(true, Ordering::Relaxed) {
                            info!(%host, "no HTTP/2 at the front end: tunnels go over WebSocket");
                        }
                        return self
                            .handshake(gateway::start(Box::new(tls), dialer.clone()))
                            .await;
                    }
                    let alpn =
                        alpn.map_or("none".into(), |p| String::from_utf8_lossy(p).into_owned());
                    return Err(OpenError::NoH2 { host, alpn });
                }
                let tls = crate::tls::early::Finishing::new(tls, self.connect_timeout);
                self.handshake(tls).await
            }
            _ => match &self.dialer {
                Some(dialer) if self.transport == Transport::Websocket => {
                    self.handshake(gateway::start(Box::new(tcp), dialer.clone()))
                        .await
                }
                _ => self.handshake(tcp).await,
            },
        }
    }

    async fn handshake<T>(&self, io: T) -> Result<Conn, OpenError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut conn) = settings::client_builder()
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await?;
        let dead = CancellationToken::new();
        if let (Some(every), Some(ping)) = (self.keepalive, conn.ping_pong()) {
            tokio::spawn(keepalive(ping, every, dead.clone()));
        }
        let on_end = dead.clone();
        let addr = self.addr();
        let mut pressure = Pressure::new(self.pressure.clone());
        tokio::spawn(async move {
            let ended = loop {
                tokio::select! {
                    r = &mut conn => break Some(r),
                    // Keepalive failure: drop the connection (and its streams).
                    _ = on_end.cancelled() => break None,
                    (stream, connection) = pressure.next() => {
                        conn.set_target_window_size(connection);
                        pressure.done(conn.set_initial_window_size(stream).is_ok());
                    }
                }
            };
            match ended {
                Some(Ok(())) => info!(%addr, "HTTP/2 connection closed"),
                Some(Err(e)) => {
                    let reason = crate::transport::ended::in_words(&e);
                    info!(%addr, %reason, "HTTP/2 connection to the front end ended")
                }
                None => {}
            }
            on_end.cancel();
        });
        debug!(addr = %self.addr(), "HTTP/2 connection established");
        Ok(Conn {
            send,
            open: Arc::new(AtomicUsize::new(0)),
            dead,
            retired: Arc::new(AtomicBool::new(false)),
        })
    }
}

/// Sends a PING every `every`; a PONG missing for two intervals kills the
/// connection so new tunnels dial afresh instead of stalling on a dead path.
async fn keepalive(mut ping: h2::PingPong, every: Duration, dead: CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = dead.cancelled() => return,
        }
        if ping.send_ping(h2::Ping::opaque()).is_err() {
            return;
        }
        let pong = std::future::poll_fn(|cx| ping.poll_pong(cx));
        match tokio::time::timeout(every * 2, pong).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return,
            Err(_) => {
                warn!("HTTP/2 keepalive: no PONG; closing the connection");
                dead.cancel();
                return;
            }
        }
    }
}
