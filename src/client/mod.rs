//! `postern client`: accepts local TCP connections (or uses stdin/stdout),
//! opens one tunnel stream per connection through [`Connector`], starts the
//! inner mTLS over it at once (optimistic: the ClientHello follows the
//! request headers without waiting for the `200`), then copies bytes.

pub mod connector;
pub mod token;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn};

use crate::client::connector::{Connector, Target};
use crate::client::token::{IdTokens, TokenSource};
use crate::tls::pem;
use crate::tls::{self, CertSlot};
use crate::transport::splice::{self, Totals};
use crate::transport::workers::Workers;

/// `postern client`: the side next to the application.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Local address to accept application connections on (with --url).
    #[arg(long, env = "POSTERN_CLIENT_LISTEN", requires = "url")]
    pub listen: Option<SocketAddr>,
    /// Service URL: `https://HOST[:PORT][/PATH]`, or `http://…` for h2c.
    #[arg(long, env = "POSTERN_URL")]
    pub url: Option<String>,
    /// More forwards, each LOCAL_ADDR=URL; repeatable.
    #[arg(long = "forward", value_name = "LOCAL_ADDR=URL")]
    pub forwards: Vec<String>,
    /// Tunnel stdin/stdout instead of listening (for ssh ProxyCommand).
    #[arg(long, requires = "url", conflicts_with_all = ["listen", "forwards"])]
    pub stdio: bool,
    /// Inner TLS client certificate chain (PEM).
    #[arg(long, env = "POSTERN_CERT", required_unless_present = "no_inner_tls")]
    pub cert: Option<PathBuf>,
    /// Inner TLS client private key (PEM).
    #[arg(long, env = "POSTERN_KEY", required_unless_present = "no_inner_tls")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) the server's inner certificate must chain to (PEM).
    #[arg(long, env = "POSTERN_CA", required_unless_present = "no_inner_tls")]
    pub ca: Option<PathBuf>,
    /// Name the server's inner certificate must carry [default: the URL's host].
    #[arg(long, env = "POSTERN_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Identity the server's inner certificate must also carry, beyond
    /// --server-name: `uri:…`, `dns:…`, `cn:…` or `spiffe://…` (trailing
    /// `/*` for a prefix); repeatable, any one suffices.
    #[arg(long, env = "POSTERN_SERVER_IDENTITY", value_delimiter = ',')]
    pub server_identity: Vec<String>,
    /// Extra CA certificate(s) to trust for the outer TLS (besides the system roots).
    #[arg(long, env = "POSTERN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Leave out the inner TLS (plain tunnel).
    #[arg(long, conflicts_with_all = ["cert", "key", "ca"])]
    pub no_inner_tls: bool,
    /// Send a Google ID token (private Cloud Run services): `metadata`
    /// (on Google Cloud), `metadata=HOST:PORT`, `command=CMD` (e.g.
    /// `command=gcloud auth print-identity-token`), `file=PATH` or `env=VAR`.
    /// Fetched once, cached and refreshed before it expires; never logged.
    #[arg(long, env = "POSTERN_ID_TOKEN", value_name = "SOURCE")]
    pub id_token: Option<TokenSource>,
    /// Audience of the ID token [default: the service URL without its path].
    #[arg(long, env = "POSTERN_AUDIENCE", requires = "id_token")]
    pub audience: Option<String>,
    /// Extra request header, 'Name: value'; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Most tunnels per HTTP/2 connection; 1 = one connection per tunnel.
    #[arg(
        long,
        env = "POSTERN_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_streams_per_connection: usize,
    /// Seconds between HTTP/2 PINGs on idle connections (0 = off). Front ends
    /// punish frequent PINGs; 30 or more is safe.
    #[arg(long, default_value_t = 0)]
    pub keepalive: u64,
    /// Seconds allowed to connect to the front end and for the inner handshake.
    #[arg(long, default_value_t = 10)]
    pub connect_timeout: u64,
    /// Worker threads; each HTTP/2 connection and its tunnels run on one.
    /// New tunnels fill the first worker up to --max-streams-per-connection
    /// before the next gets any [default: one per CPU].
    #[arg(long, env = "POSTERN_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

/// One forward: a local listener and the connector for its URL.
pub struct Forward {
    /// Where tunnels go.
    pub connector: Arc<Connector>,
    /// Inner mTLS config and the name to verify, unless --no-inner-tls.
    pub inner: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    /// Headers added to every tunnel request.
    pub headers: HeaderMap,
    /// ID tokens for the `authorization` header, if the service is private.
    pub tokens: Option<IdTokens>,
    /// Limit for the inner handshake.
    pub handshake_timeout: Duration,
    /// Worker threads for [`serve`] (see [`crate::transport::workers`]).
    pub workers: usize,
}

impl Forward {
    /// Builds a forward to `url` from the shared client flags.
    pub fn from_args(args: &Args, url: &str) -> anyhow::Result<Forward> {
        let target = Target::parse(url).map_err(|e| anyhow::anyhow!("--url {e}"))?;
        let outer = if target.tls {
            Some(tls::outer_client_config(args.tls_ca.as_deref())?)
        } else {
            None
        };
        let inner = match (&args.cert, &args.key, &args.ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let slot = CertSlot::new(pem::load_identity(cert, key)?);
                let pin = args
                    .server_identity
                    .iter()
                    .map(|p| {
                        p.parse()
                            .map_err(|e| anyhow::anyhow!("--server-identity: {e}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let config = tls::inner_client_config_pinned(
                    slot,
                    pem::load_roots(ca)?,
                    crate::authz::policy::Allow::new(pin),
                )?;
                let name = args
                    .server_name
                    .clone()
                    .unwrap_or_else(|| target.host.clone());
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    anyhow::anyhow!("--server-name {name:?}: not a DNS name or IP address")
                })?;
                Some((config, name))
            }
            _ if args.no_inner_tls => None,
            _ => anyhow::bail!("--cert, --key and --ca are required (or --no-inner-tls)"),
        };
        let timeout = Duration::from_secs(args.connect_timeout);
        let keepalive = (args.keepalive > 0).then(|| Duration::from_secs(args.keepalive));
        let tokens = args.id_token.clone().map(|source| {
            let audience = args.audience.clone().unwrap_or_else(|| target.origin());
            IdTokens::new(source, audience)
        });
        let connector = Connector::new(
            target,
            outer,
            args.max_streams_per_connection,
            keepalive,
            timeout,
        );
        Ok(Forward {
            connector: Arc::new(connector),
            inner,
            headers: parse_headers(&args.headers)?,
            tokens,
            handshake_timeout: timeout,
            workers: args
                .workers
                .map_or_else(crate::transport::workers::default_count, usize::from),
        })
    }

    /// The same forward with a pool of its own, for another worker thread:
    /// an HTTP/2 connection is driven on one thread, so each worker keeps
    /// its own connections. ID tokens stay shared (one cache, one fetch).
    fn for_worker(&self) -> Forward {
        Forward {
            connector: Arc::new(self.connector.sibling()),
            inner: self.inner.clone(),
            headers: self.headers.clone(),
            tokens: self.tokens.clone(),
            handshake_timeout: self.handshake_timeout,
            workers: self.workers,
        }
    }
}

/// Parses repeatable `Name: value` flags.
pub fn parse_headers(raw: &[String]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| anyhow::anyhow!("--header {h:?}: invalid header name"))?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| anyhow::anyhow!("--header {name}: invalid header value"))?;
        if name == http::header::AUTHORIZATION {
            value.set_sensitive(true);
        }
        headers.append(name, value);
    }
    Ok(headers)
}

/// Runs `postern client` until SIGINT/SIGTERM (or, with --stdio, until the tunnel ends).
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.stdio {
        let url = args.url.as_deref().unwrap_or_default();
        let forward = Forward::from_args(&args, url)?;
        let mut stdio = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
        return forward.tunnel(&mut stdio).await.map(|_| ());
    }
    let mut pairs = Vec::new();
    if let (Some(listen), Some(url)) = (args.listen, &args.url) {
        pairs.push((listen, url.clone()));
    }
    for f in &args.forwards {
        let (local, url) = f
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--forward {f:?}: expected LOCAL_ADDR=URL"))?;
        let local: SocketAddr = local
            .parse()
            .map_err(|_| anyhow::anyhow!("--forward {f:?}: {local:?} is not an address"))?;
        pairs.push((local, url.to_owned()));
    }
    if pairs.is_empty() {
        anyhow::bail!(
            "nothing to do: give --listen and --url, --forward LOCAL=URL, or --stdio --url"
        );
    }
    let shutdown = crate::signal::shutdown_token();
    let mut tasks = tokio::task::JoinSet::new();
    for (local, url) in pairs {
        let forward = Arc::new(Forward::from_args(&args, &url)?);
        let listener = TcpListener::bind(local)
            .await
            .with_context(|| format!("cannot listen on {local}"))?;
        info!(listen = %listener.local_addr()?, %url, "client forwarding");
        tasks.spawn(serve(listener, forward, shutdown.clone()));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a forward's task ended abnormally")??;
    }
    Ok(())
}

/// Accepts local connections until `shutdown`; each becomes one tunnel on
/// a worker thread. Tunnels fill the first worker up to the connector's
/// streams per connection before the next worker gets any, so they share
/// HTTP/2 connections as they would in a single pool; worker 0 uses
/// `forward`'s own connector, the others a sibling each.
/// Fails only if the worker threads cannot be started.
pub async fn serve(
    listener: TcpListener,
    forward: Arc<Forward>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let workers = Workers::start(forward.workers, "postern-worker")
        .context("cannot start the worker threads")?;
    let forwards: Vec<Arc<Forward>> = std::iter::once(forward.clone())
        .chain((1..workers.len()).map(|_| Arc::new(forward.for_worker())))
        .collect();
    let fill = forward.connector.max_streams();
    loop {
        let Some((sock, peer)) = splice::accept(&listener, &shutdown).await else {
            return Ok(());
        };
        let index = workers.pick(fill);
        let forward = forwards[index].clone();
        workers.run(
            index,
            sock,
            info_span!("tunnel", %peer),
            move |sock| async move { forward.handle(sock).await },
        );
    }
}

impl Forward {
    async fn handle(&self, mut sock: TcpStream) {
        let _ = sock.set_nodelay(true);
        let started = Instant::now();
        let (result, totals) = match self.tunnel(&mut sock).await {
            Ok(totals) => (Ok(()), totals),
            Err(e) => {
                // Whatever failed, the application must see its connection
                // end; a reset tells it the data may be incomplete.
                splice::abort(&sock);
                (Err(e), Totals::default())
            }
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => info!(
                sent = totals.inbound,
                received = totals.outbound,
                duration_ms,
                "tunnel ended"
            ),
            Err(e) => warn!(duration_ms, error = format!("{e:#}"), "tunnel failed"),
        }
    }

    /// Carries one local byte stream through a new tunnel until both directions end.
    pub async fn tunnel<L>(&self, local: &mut L) -> anyhow::Result<Totals>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let stream = match &self.tokens {
            Some(tokens) => {
                let mut headers = self.headers.clone();
                let bearer = tokens.bearer().await.context("ID token")?;
                headers.insert(http::header::AUTHORIZATION, bearer);
                self.connector.open(&headers).await?
            }
            None => self.connector.open(&self.headers).await?,
        };
        let (result, totals) = match &self.inner {
            Some((config, name)) => {
                let handshake = TlsConnector::from(config.clone())
                    .connect(name.clone(), stream)
                    .into_fallible();
                let mut tls = match tokio::time::timeout(self.handshake_timeout, handshake).await {
                    Ok(Ok(tls)) => tls,
                    Ok(Err((e, stream))) => {
                        stream.linger().await;
                        return Err(e).context("inner TLS handshake");
                    }
                    Err(_) => anyhow::bail!("inner TLS handshake timed out"),
                };
                let (result, totals) = splice::splice(local, &mut tls).await;
                if result.is_ok() {
                    tls.get_mut().0.finish().await;
                }
                (result, totals)
            }
            None => {
                let mut stream = stream;
                let (result, totals) = splice::splice(local, &mut stream).await;
                if result.is_ok() {
                    stream.finish().await;
                }
                (result, totals)
            }
        };
        result.context("tunnel")?;
        Ok(totals)
    }
}
