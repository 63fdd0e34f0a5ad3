//! What a running server is given: [`Config`], built once from [`Args`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::authz::Allow;
use crate::server::args::Args;
use crate::server::backend;
use crate::server::metrics::{self, Metrics};
use crate::server::reload::{InnerFiles, Live, RouteSource, Sources};
use crate::server::report::{Observer, TunnelReport};
use crate::server::routes;
use crate::server::tunnel::Limits;
use crate::server::windows::Budget;

/// Everything a running server needs, built once from [`Args`].
pub struct Config {
    /// Routes and TLS configs, replaced whole on reload.
    pub live: Arc<Live>,
    /// Timeouts for handshakes, idle tunnels and tunnel lifetime.
    pub limits: Limits,
    /// Time open tunnels get to finish after shutdown starts.
    pub drain_timeout: Duration,
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
    /// Called with each finished tunnel's report (see [`Config::on_tunnel_end`]).
    pub(crate) observer: Option<Observer>,
    /// Worker threads that serve connections (see `transport::workers`).
    pub workers: usize,
    /// How long a worker polls after it wakes (`--busy-poll`, see
    /// `transport::busy_poll`).
    pub busy_poll: Duration,
    /// Process-wide connection limit (`--max-connections`): beyond it a
    /// connection is closed at once.
    pub connections: Arc<Semaphore>,
    /// Close a connection with no open request for this long.
    pub connection_idle_timeout: Option<Duration>,
    /// The receive-window bytes all connections together may be granted.
    pub budget: Arc<Budget>,
    /// The sessions of resumable tunnels, one table per process (None with
    /// `--no-resume`).
    pub resume: Option<crate::session::Registry>,
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
            early_data: !args.no_early_data,
        };
        // Files are read and TLS configs built on the blocking pool, as on reload.
        let m = metrics.clone();
        let live = tokio::task::spawn_blocking(move || Live::new(sources, m))
            .await
            .map_err(|e| anyhow::anyhow!("loading the certificates and routes: {e}"))??;
        let live = Arc::new(live);
        let metrics_addr = match args.metrics_listen {
            Some(addr) => Some(metrics::listen(addr, metrics.clone(), shutdown.clone()).await?),
            None => None,
        };
        // One budget for all the buffers peers can fill: with resume, half
        // for HTTP/2 receive windows and half for what sessions hold.
        let budget = args.buffer_budget_mib.saturating_mul(1 << 20);
        let windows_budget = if args.no_resume { budget } else { budget / 2 };
        Ok(Config {
            live,
            limits: Limits {
                handshake_timeout: args.handshake_timeout,
                idle_timeout: args.idle_timeout,
                max_lifetime: args.max_lifetime,
                websocket_ping: (!args.websocket_ping.is_zero()).then_some(args.websocket_ping),
            },
            drain_timeout: args.drain_timeout,
            watch_interval: (!args.watch_interval.is_zero()).then_some(args.watch_interval),
            tunnels: Arc::new(Semaphore::new(args.max_tunnels)),
            max_streams_per_connection: args.max_streams_per_connection,
            max_header_list_size: args.max_header_list_size,
            metrics,
            metrics_addr,
            observer: None,
            workers: args
                .workers
                .map_or_else(crate::transport::workers::default_count, usize::from),
            busy_poll: args.busy_poll,
            connections: Arc::new(Semaphore::new(args.max_connections as usize)),
            connection_idle_timeout: (!args.connection_idle_timeout.is_zero())
                .then_some(args.connection_idle_timeout),
            budget: Arc::new(Budget::new(windows_budget)),
            resume: (!args.no_resume).then(|| {
                crate::session::Registry::new(
                    crate::session::Config::bounded(
                        args.resume_timeout,
                        usize::try_from(budget - windows_budget).unwrap_or(usize::MAX),
                    ),
                    crate::session::Limits::default(),
                )
            }),
        })
    }

    /// Calls `observe` with the report of every tunnel that ends from now
    /// on, on the tunnel's task (after its log line and metrics): keep it
    /// quick. Replaces any earlier observer.
    pub fn on_tunnel_end(&mut self, observe: impl Fn(&TunnelReport) + Send + Sync + 'static) {
        self.observer = Some(Arc::new(observe));
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
        None => {
            // Checked here, once, rather than failing every tunnel's dial.
            routes::validate_backend(backend).map_err(|e| anyhow::anyhow!("--backend: {e}"))?;
            backend.to_owned()
        }
    })
}
