//! `postern server`: accepts HTTP/2 connections (h2c behind a front end, or
//! TLS when self-hosted), turns each tunnel request into an [`H2Stream`](crate::transport::stream::H2Stream),
//! ends the inner mTLS there and only then dials the backend.
//!
//! Connection handling lives here; what happens inside one tunnel request is
//! in [`crate::server::tunnel`].

pub mod args;
pub mod backend;
pub mod metrics;
pub mod proxy_protocol;
pub mod reload;
pub mod tunnel;
pub mod watchdog;

use std::net::SocketAddr;
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
use tracing::{debug, info, info_span, warn};

use crate::authz::policy::{Allow, Routes};
pub use crate::server::args::{parse_duration, Args};
use crate::server::metrics::Metrics;
use crate::server::reload::{InnerFiles, Live, RouteSource, Sources};
use crate::server::tunnel::TunnelReport;
use crate::transport::stream::{CONNECTION_WINDOW, MAX_FRAME, STREAM_WINDOW};
use crate::transport::workers::Workers;

/// Everything a running server needs, built once from [`Args`].
pub struct Config {
    /// Routes and TLS configs, replaced whole on reload.
    pub live: Arc<Live>,
    /// Limit for handshakes and backend connects.
    pub handshake_timeout: Duration,
    /// Time open tunnels get to finish after shutdown starts.
    pub drain_timeout: Duration,
    /// Close tunnels idle this long.
    pub idle_timeout: Option<Duration>,
    /// Close tunnels this long after they opened.
    pub max_lifetime: Option<Duration>,
    /// How often to poll the files for changes (None: SIGHUP only).
    pub watch_interval: Option<Duration>,
    /// Process-wide tunnel limit.
    pub tunnels: Arc<Semaphore>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS we advertise.
    pub max_streams_per_connection: u32,
    /// SETTINGS_MAX_HEADER_LIST_SIZE we advertise and enforce.
    pub max_header_list_size: u32,
    /// Counters, exposed at `--metrics-listen`.
    pub metrics: Arc<Metrics>,
    /// Where metrics are served, if they are.
    pub metrics_addr: Option<SocketAddr>,
    /// Receives one report per finished tunnel (tests and the demo listen here).
    pub reports: Option<mpsc::UnboundedSender<TunnelReport>>,
    /// Worker threads that serve connections (see [`crate::transport::workers`]).
    pub workers: usize,
}

impl Config {
    /// Builds a config from flags, loading and checking every file.
    /// A `builtin:` backend and the metrics listener are started here, on `shutdown`.
    pub async fn from_args(args: &Args, shutdown: &CancellationToken) -> anyhow::Result<Config> {
        let routes = match (&args.config, &args.backend) {
            (Some(file), _) => RouteSource::File(file.clone()),
            (None, Some(backend)) => RouteSource::Flags {
                path: args.path.clone(),
                backend: resolve_backend(backend, shutdown).await?,
                allow: Allow::new(
                    args.allow
                        .iter()
                        .map(|p| p.parse().map_err(|e| anyhow::anyhow!("--allow: {e}")))
                        .collect::<anyhow::Result<Vec<_>>>()?,
                ),
                proxy_protocol: args.proxy_protocol,
            },
            (None, None) => anyhow::bail!("--backend or --config is required"),
        };
        if args.config.is_none() && !args.path.starts_with('/') {
            anyhow::bail!("--path {:?}: must start with '/'", args.path);
        }
        let inner = match (&args.cert, &args.key, &args.client_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(InnerFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: ca.clone(),
                crls: args.crl.clone(),
            }),
            _ if args.no_inner_tls => None,
            _ => anyhow::bail!("--cert, --key and --client-ca are required (or --no-inner-tls)"),
        };
        let outer = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
            _ => None,
        };
        let metrics = Arc::new(Metrics::new());
        let sources = Sources {
            routes,
            inner,
            outer,
        };
        let live = Arc::new(Live::new(sources, metrics.clone())?);
        let metrics_addr = match args.metrics_listen {
            Some(addr) => {
                Some(crate::server::metrics::listen(addr, metrics.clone(), shutdown.clone()).await?)
            }
            None => None,
        };
        Ok(Config {
            live,
            handshake_timeout: Duration::from_secs(args.handshake_timeout),
            drain_timeout: Duration::from_secs(args.drain_timeout),
            idle_timeout: args.idle_timeout,
            max_lifetime: args.max_lifetime,
            watch_interval: (args.watch_interval > 0)
                .then(|| Duration::from_secs(args.watch_interval)),
            tunnels: Arc::new(Semaphore::new(args.max_tunnels)),
            max_streams_per_connection: args.max_streams_per_connection,
            max_header_list_size: args.max_header_list_size,
            metrics,
            metrics_addr,
            reports: None,
            workers: args
                .workers
                .map_or_else(crate::transport::workers::default_count, usize::from),
        })
    }
}

async fn resolve_backend(backend: &str, shutdown: &CancellationToken) -> anyhow::Result<String> {
    Ok(match backend.strip_prefix("builtin:") {
        Some(mode) => {
            let mode = <backend::Mode as clap::ValueEnum>::from_str(mode, true)
                .map_err(|_| anyhow::anyhow!("--backend {backend}: unknown built-in backend"))?;
            backend::spawn_local(mode, shutdown.clone())
                .await?
                .to_string()
        }
        None => backend.to_owned(),
    })
}

/// Runs `postern server` until SIGINT/SIGTERM and the drain that follows.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = crate::signal::shutdown_token();
    let config = Config::from_args(&args, &shutdown).await?;
    let live = config.live.clone();
    crate::signal::on_hangup(move || live.request_reload());
    let addr = match args.listen {
        Some(addr) => addr,
        None => default_listen()?,
    };
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--listen {addr}: cannot bind"))?;
    let material = config.live.material();
    info!(
        addr = %listener.local_addr()?,
        mode = if material.outer.is_some() { "tls" } else { "h2c" },
        inner_tls = material.inner.is_some(),
        routes = material.routes.iter().count(),
        crls = ?args.crl,
        metrics = ?config.metrics_addr,
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
    let workers = Workers::start(config.workers, "postern-worker")
        .context("cannot start the worker threads")?;
    tokio::spawn(
        config
            .live
            .clone()
            .watch(config.watch_interval, shutdown.clone()),
    );
    loop {
        let Some((sock, peer)) = crate::transport::splice::accept(&listener, &shutdown).await
        else {
            break;
        };
        let config = config.clone();
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        let span = info_span!("conn", %peer);
        // The drain waits for this token; the worker holds it until the
        // connection is gone.
        let token = tracker.token();
        workers.run(workers.pick(1), sock, span, move |sock| async move {
            let _token = token;
            tokio::select! {
                r = connection(sock, peer, config, shutdown) => {
                    if let Err(e) = r {
                        debug!(error = format!("{e:#}"), "connection ended");
                    }
                }
                _ = hard_stop.cancelled() => debug!("connection closed at the end of the drain"),
            }
        });
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
    // The outer config is taken per connection: a reload applies to new connections.
    let outer = config.live.material().outer.clone();
    match outer {
        Some(outer) => {
            let tls = tokio::time::timeout(limit, TlsAcceptor::from(outer).accept(sock))
                .await
                .context("outer TLS handshake timed out")?
                .context("outer TLS handshake")?;
            h2_connection(tls, peer, false, config, shutdown).await
        }
        None => h2_connection(sock, peer, true, config, shutdown).await,
    }
}

/// Requests beyond these are refused by h2 itself: too many streams the
/// client reset before we accepted them (Rapid Reset, CVE-2023-44487), and
/// too many streams we had to reset for protocol errors, end the connection
/// with GOAWAY.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Response data h2 buffers per stream beyond what the peer's window lets
/// out. Together with the receive window ([`STREAM_WINDOW`], released only
/// as the tunnel consumes data) this bounds a tunnel's memory when a peer
/// stops reading: the writer simply waits for capacity.
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// `behind_front`: plain h2c, so `x-forwarded-for` was written by the front end.
async fn h2_connection<T>(
    io: T,
    peer: SocketAddr,
    behind_front: bool,
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
        .max_header_list_size(config.max_header_list_size)
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER)
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
        tokio::spawn(request(req, respond, peer, behind_front, config));
    }
}

/// Dispatches one request: health check, tunnel, or refusal. Only the path
/// is looked at here; the route within it (by inner SNI) is chosen once the
/// ClientHello arrives.
async fn request(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: SocketAddr,
    behind_front: bool,
    config: Arc<Config>,
) {
    let method = req.method().clone();
    let mut path = req.uri().path().to_owned();
    if method == Method::GET && path == "/healthz" {
        return reply(&mut respond, StatusCode::OK, "ok\n");
    }
    let material = config.live.material();
    if method == Method::CONNECT {
        path = connect_path(&material.routes).to_owned();
    }
    let refuse = |respond: &mut SendResponse<Bytes>, status, body, reason| {
        config.metrics.refused(reason);
        reply(respond, status, body);
    };
    if !material.routes.paths().any(|p| p == path) {
        debug!(%method, %path, "no tunnel at this path");
        return refuse(
            &mut respond,
            StatusCode::NOT_FOUND,
            "no tunnel at this path\n",
            "not_found",
        );
    }
    if method != Method::POST && method != Method::CONNECT {
        return refuse(
            &mut respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "tunnels use POST or CONNECT\n",
            "method_not_allowed",
        );
    }
    let Ok(permit) = config.tunnels.clone().try_acquire_owned() else {
        warn!("tunnel limit reached: refusing with 503");
        return refuse(
            &mut respond,
            StatusCode::SERVICE_UNAVAILABLE,
            "tunnel limit reached\n",
            "tunnel_limit",
        );
    };
    let source = if behind_front {
        forwarded_for(req.headers()).unwrap_or(peer)
    } else {
        peer
    };
    let tunnel = tunnel::Tunnel {
        path,
        source,
        material,
        config,
        _permit: permit,
    };
    tunnel.run(req, respond).await;
}

/// CONNECT has no path: it uses the only path there is, or `/`.
fn connect_path(routes: &Routes) -> &str {
    let mut paths = routes.paths();
    match (paths.next(), paths.next()) {
        (Some(only), None) => only,
        _ => "/",
    }
}

/// The client address a front end appended to `x-forwarded-for` (its last
/// entry: earlier ones come from the client and prove nothing), port 0.
fn forwarded_for(headers: &http::HeaderMap) -> Option<SocketAddr> {
    let last = headers.get_all("x-forwarded-for").iter().next_back()?;
    let entry = last.to_str().ok()?.rsplit(',').next()?.trim();
    let ip = entry
        .parse::<std::net::IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|a| a.ip()))?;
    Some(SocketAddr::new(ip, 0))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_and_refuse_zero() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn forwarded_for_takes_the_last_entry_only() {
        let mut h = http::HeaderMap::new();
        assert_eq!(forwarded_for(&h), None);
        h.insert("x-forwarded-for", "1.2.3.4, 203.0.113.9".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("203.0.113.9:0".parse().unwrap()));
        h.insert("x-forwarded-for", "1.2.3.4, garbage".parse().unwrap());
        assert_eq!(forwarded_for(&h), None);
        h.insert("x-forwarded-for", "[2001:db8::1]:443".parse().unwrap());
        assert_eq!(forwarded_for(&h), Some("[2001:db8::1]:0".parse().unwrap()));
    }
}
