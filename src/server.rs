//! `postern server`: accepts HTTP/2 connections (h2c behind a front end, or
//! TLS when self-hosted), turns each tunnel request into an [`H2Stream`](crate::stream::H2Stream),
//! ends the inner mTLS there and only then dials the backend.
//!
//! Connection handling lives here; what happens inside one tunnel request is
//! in [`crate::server_tunnel`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::policy::{Allow, Routes};
use crate::server_tunnel::{self, TunnelReport};
use crate::stream::{CONNECTION_WINDOW, MAX_FRAME, MAX_HEADER_LIST, STREAM_WINDOW};
use crate::tls::{self, CertSlot};
use crate::{backend, pem};

/// `postern server`: the side next to the backend (the Cloud Run container).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on [default: 0.0.0.0:$PORT, PORT defaulting to 8080].
    #[arg(long, env = "POSTERN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Backend to connect authenticated tunnels to: HOST:PORT, or
    /// `builtin:banner` / `builtin:echo` to run a built-in backend in-process.
    #[arg(long, env = "POSTERN_BACKEND")]
    pub backend: String,
    /// Request path that carries tunnels (POST); CONNECT is accepted too.
    #[arg(long, env = "POSTERN_PATH", default_value = "/")]
    pub path: String,
    /// Inner TLS certificate chain (PEM).
    #[arg(long, env = "POSTERN_CERT", required_unless_present = "no_inner_tls")]
    pub cert: Option<PathBuf>,
    /// Inner TLS private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "POSTERN_KEY", required_unless_present = "no_inner_tls")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) that client certificates must chain to (PEM).
    #[arg(
        long,
        env = "POSTERN_CLIENT_CA",
        required_unless_present = "no_inner_tls"
    )]
    pub client_ca: Option<PathBuf>,
    /// Allowed client identities: `uri:…`, `dns:…`, `cn:…` or a bare
    /// `spiffe://…` (a trailing `/*` matches a prefix). Default: any
    /// certificate that chains to --client-ca.
    #[arg(long, env = "POSTERN_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Leave out the inner TLS: a plain tunnel (for apps that do their own
    /// TLS, and for Envoy POST-tunnel compatibility).
    #[arg(long, conflicts_with_all = ["cert", "key", "client_ca"])]
    pub no_inner_tls: bool,
    /// Serve TLS with ALPN h2 using this certificate (self-hosted, no front end).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds to let open tunnels finish after SIGTERM (Cloud Run kills 10 s after it).
    #[arg(long, env = "POSTERN_DRAIN_TIMEOUT", default_value_t = 8)]
    pub drain_timeout: u64,
    /// Seconds allowed for each handshake (outer TLS, HTTP/2 preface, inner mTLS)
    /// and for the backend connect.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Most tunnels open at once in this process; more are answered 503.
    #[arg(long, default_value_t = 16384)]
    pub max_tunnels: usize,
    /// Most concurrent tunnels per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// more are refused with REFUSED_STREAM.
    #[arg(long, default_value_t = 1000)]
    pub max_streams_per_connection: u32,
}

/// Everything a running server needs, built once from [`Args`].
pub struct Config {
    /// Where each request path leads and who may use it.
    pub routes: Routes,
    /// Inner mTLS configs, one per route (same order as `routes.iter()`);
    /// `None` for plain tunnels.
    pub inner: Option<Vec<Arc<rustls::ServerConfig>>>,
    /// Outer TLS, when serving TLS directly instead of h2c.
    pub outer: Option<Arc<rustls::ServerConfig>>,
    /// Limit for handshakes and backend connects.
    pub handshake_timeout: Duration,
    /// Time open tunnels get to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Process-wide tunnel limit.
    pub tunnels: Arc<Semaphore>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise.
    pub max_streams_per_connection: u32,
    /// Receives one report per finished tunnel (tests and the demo listen here).
    pub reports: Option<mpsc::UnboundedSender<TunnelReport>>,
}

impl Config {
    /// Builds a config from flags, loading and checking every file.
    /// A `builtin:` backend is started here, on `shutdown`.
    pub async fn from_args(args: &Args, shutdown: &CancellationToken) -> anyhow::Result<Config> {
        let backend = match args.backend.strip_prefix("builtin:") {
            Some(mode) => {
                let mode =
                    <backend::Mode as clap::ValueEnum>::from_str(mode, true).map_err(|_| {
                        anyhow::anyhow!("--backend {}: unknown built-in backend", args.backend)
                    })?;
                backend::spawn_local(mode, shutdown.clone())
                    .await?
                    .to_string()
            }
            None => args.backend.clone(),
        };
        if !args.path.starts_with('/') {
            anyhow::bail!("--path {:?}: must start with '/'", args.path);
        }
        let patterns = args
            .allow
            .iter()
            .map(|p| p.parse().map_err(|e| anyhow::anyhow!("--allow: {e}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let allow = Allow::new(patterns);
        let routes = Routes::single(args.path.clone(), backend, allow, false);
        let inner = match (&args.cert, &args.key, &args.client_ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let slot = CertSlot::new(pem::load_identity(cert, key)?);
                let roots = pem::load_roots(ca)?;
                let configs = routes
                    .iter()
                    .map(|r| {
                        tls::inner_server_config(
                            slot.clone(),
                            roots.clone(),
                            vec![],
                            r.allow.clone(),
                        )
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                Some(configs)
            }
            _ if args.no_inner_tls => None,
            _ => anyhow::bail!("--cert, --key and --client-ca are required (or --no-inner-tls)"),
        };
        let outer = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls::outer_server_config(CertSlot::new(
                pem::load_identity(cert, key)?,
            ))?),
            _ => None,
        };
        Ok(Config {
            routes,
            inner,
            outer,
            handshake_timeout: Duration::from_secs(args.handshake_timeout),
            drain_timeout: Duration::from_secs(args.drain_timeout),
            tunnels: Arc::new(Semaphore::new(args.max_tunnels)),
            max_streams_per_connection: args.max_streams_per_connection,
            reports: None,
        })
    }
}

/// Runs `postern server` until SIGINT/SIGTERM and the drain that follows.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = crate::signal::shutdown_token();
    let config = Config::from_args(&args, &shutdown).await?;
    let addr = match args.listen {
        Some(addr) => addr,
        None => default_listen()?,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--listen {addr}: cannot bind"))?;
    info!(
        addr = %listener.local_addr()?,
        mode = if config.outer.is_some() { "tls" } else { "h2c" },
        inner_tls = config.inner.is_some(),
        "server listening"
    );
    serve(listener, Arc::new(config), shutdown).await
}

fn default_listen() -> anyhow::Result<SocketAddr> {
    let port = match std::env::var("PORT") {
        Ok(p) => p
            .parse::<u16>()
            .map_err(|_| anyhow::anyhow!("PORT={p:?}: not a port number"))?,
        Err(_) => 8080,
    };
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// Serves connections from `listener` until `shutdown`, then drains: new
/// streams are refused (GOAWAY), open tunnels get `drain_timeout` to end,
/// and whatever is left is closed.
pub async fn serve(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    loop {
        let (sock, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Typically EMFILE: back off briefly rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let config = config.clone();
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        let span = info_span!("conn", %peer);
        tracker.spawn(
            async move {
                tokio::select! {
                    r = connection(sock, peer, config, shutdown) => {
                        if let Err(e) = r {
                            debug!(error = format!("{e:#}"), "connection ended");
                        }
                    }
                    _ = hard_stop.cancelled() => debug!("connection closed at the end of the drain"),
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracker.close();
    let open = tracker.len();
    info!(connections = open, drain_timeout = ?config.drain_timeout, "draining");
    if tokio::time::timeout(config.drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "drain timeout: closing what is left"
        );
        hard_stop.cancel();
        tracker.wait().await;
    }
    info!("server stopped");
    Ok(())
}

async fn connection(
    sock: TcpStream,
    peer: SocketAddr,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let limit = config.handshake_timeout;
    match &config.outer {
        Some(outer) => {
            let tls = tokio::time::timeout(limit, TlsAcceptor::from(outer.clone()).accept(sock))
                .await
                .context("outer TLS handshake timed out")?
                .context("outer TLS handshake")?;
            h2_connection(tls, peer, config, shutdown).await
        }
        None => h2_connection(sock, peer, config, shutdown).await,
    }
}

async fn h2_connection<T>(
    io: T,
    peer: SocketAddr,
    config: Arc<Config>,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(config.max_streams_per_connection)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(config.handshake_timeout, handshake)
        .await
        .context(
            "HTTP/2 preface timed out (is the front end speaking h2c? deploy with --use-http2)",
        )?
        .context("HTTP/2 handshake (is the front end speaking h2c? deploy with --use-http2)")?;
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(next) = next else { return Ok(()) };
        let (req, respond) = next.context("HTTP/2 connection")?;
        let config = config.clone();
        tokio::spawn(request(req, respond, peer, config));
    }
}

/// Dispatches one request: health check, tunnel, or refusal.
async fn request(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    config: Arc<Config>,
) {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if method == Method::GET && path == "/healthz" {
        return reply(&mut respond, StatusCode::OK, "ok\n");
    }
    // CONNECT carries no path; it reaches the first route.
    let route = if method == Method::CONNECT {
        config.routes.iter().position(|_| true)
    } else {
        config.routes.iter().position(|r| r.path == path)
    };
    let Some(index) = route else {
        debug!(%method, %path, "no tunnel at this path");
        return reply(
            &mut respond,
            StatusCode::NOT_FOUND,
            "no tunnel at this path\n",
        );
    };
    if method != Method::POST && method != Method::CONNECT {
        return reply(
            &mut respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "tunnels use POST or CONNECT\n",
        );
    }
    let Ok(permit) = config.tunnels.clone().try_acquire_owned() else {
        warn!("tunnel limit reached: refusing with 503");
        return reply(
            &mut respond,
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel limit reached\n",
        );
    };
    server_tunnel::run(req, respond, peer, index, config, permit).await;
}

/// Answers a non-tunnel request with a short text body.
pub(crate) fn reply(respond: &mut SendResponse<Bytes>, status: StatusCode, body: &'static str) {
    let response = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-postern-version", env!("CARGO_PKG_VERSION"))
        .body(())
        .unwrap_or_default();
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::from_static(body.as_bytes()), true);
    }
}
