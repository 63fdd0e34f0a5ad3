//! `postern client`: accepts local TCP connections (or uses stdin/stdout),
//! opens one tunnel stream per connection through [`Connector`], starts the
//! inner mTLS over it at once (optimistic: the ClientHello follows the
//! request headers without waiting for the `200`), then copies bytes.

mod args;
mod connector;
mod destination;
mod forward;
mod gateway;
mod http_connect;
pub(crate) mod proxy;
pub(crate) mod reach;
mod resolve;
pub(crate) mod resume;
mod socks5;
mod stdio;
mod target;
mod token;

pub use args::Args;
pub use connector::{Connector, OpenError};
pub use destination::Ask;
pub use forward::{Destinations, Forward, ResumePolicy};
pub use stdio::stdio;
pub use target::Target;
pub(crate) use token::{default_metadata_host, metadata_project_id};
pub use token::{Caller, IdTokens, ServiceAccount, TokenError, TokenSource};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn};

use crate::session::{Abort, Carried, Session, Stats};
use crate::transport::splice::{self, Totals};
use crate::transport::workers::Workers;

/// Runs `postern client` until SIGINT/SIGTERM and the drain that follows
/// (or, with --stdio, until the tunnel ends, SIGHUP also draining).
pub async fn run(args: Args) -> anyhow::Result<()> {
    if args.stdio {
        let url = args.url.as_deref().unwrap_or_default();
        let mut forward = Forward::from_args(&args, url)?;
        if let Some(to) = &args.to {
            forward = forward.with_destinations(Destinations::To(to.clone()))?;
        }
        let shutdown = crate::signal::shutdown_or_hangup_token();
        return stdio(&forward, shutdown, args.drain_timeout).await;
    }
    let mut pairs = Vec::new();
    if let (Some(listen), Some(url)) = (args.listen, &args.url) {
        let asks = args
            .to
            .clone()
            .map_or(Destinations::Route, Destinations::To);
        pairs.push((listen, url.clone(), asks));
    } else if args.to.is_some() {
        anyhow::bail!(
            "--to goes with --listen or --stdio (a --forward takes LOCAL=URL,to=HOST:PORT)"
        );
    }
    for f in &args.forwards {
        let (local, url, to) = args::parse_forward(f)?;
        pairs.push((local, url, to.map_or(Destinations::Route, Destinations::To)));
    }
    for (flag, listen, asks) in [
        ("--socks5", args.socks5, Destinations::Socks5),
        ("--http-proxy", args.http_proxy, Destinations::HttpConnect),
    ] {
        let (Some(listen), Some(url)) = (listen, &args.url) else {
            continue;
        };
        if !listen.ip().is_loopback() {
            warn!(
                listen = %listen,
                "{flag} listens beyond this machine: anyone who can reach {listen} tunnels with this client's identity and reaches whatever the server's policy lets that identity reach"
            );
        }
        pairs.push((listen, url.clone(), asks));
    }
    if pairs.is_empty() {
        anyhow::bail!(
            "nothing to do: give --listen and --url, --forward LOCAL=URL, --socks5, --http-proxy, or --stdio --url"
        );
    }
    let shutdown = crate::signal::shutdown_token();
    let mut tasks = tokio::task::JoinSet::new();
    for (local, url, asks) in pairs {
        let kind = match &asks {
            Destinations::Route => "forward".to_owned(),
            Destinations::To(d) => format!("forward to {d}"),
            Destinations::Socks5 => "SOCKS5".to_owned(),
            Destinations::HttpConnect => "HTTP CONNECT proxy".to_owned(),
        };
        let mut forward = Forward::from_args(&args, &url)?;
        if !matches!(asks, Destinations::Route) {
            forward = forward.with_destinations(asks)?;
        }
        let forward = Arc::new(forward);
        let listener = TcpListener::bind(local)
            .await
            .with_context(|| format!("cannot listen on {local}"))?;
        info!(
            listen = %listener.local_addr()?,
            %url,
            kind,
            record_ciphers = crate::tls::RecordCiphers::here().name(),
            "client forwarding"
        );
        tasks.spawn(serve_draining(
            listener,
            forward,
            shutdown.clone(),
            args.drain_timeout,
        ));
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a forward's task ended abnormally")??;
    }
    info!("client stopped");
    Ok(())
}

/// Accepts local connections until `shutdown`; each becomes one tunnel on
/// a worker thread. Tunnels fill the first worker up to the connector's
/// streams per connection before the next worker gets any, so they share
/// HTTP/2 connections as they would in a single pool; worker 0 uses
/// `forward`'s own connector, the others a sibling each.
/// Open tunnels are closed as soon as `shutdown` fires (see
/// [`serve_draining`] for a grace period).
/// Fails only if the worker threads cannot be started.
pub async fn serve(
    listener: TcpListener,
    forward: Arc<Forward>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    serve_draining(listener, forward, shutdown, Duration::ZERO).await
}

/// Like [`serve`], but after `shutdown` the listener closes (new local
/// connections are refused) and open tunnels get `drain_timeout` to end on
/// their own before the rest are reset, as the server drains: restarting
/// the client must not cut a database connection mid-query.
pub async fn serve_draining(
    listener: TcpListener,
    forward: Arc<Forward>,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let workers = Workers::start(forward.workers, "postern-worker", forward.busy_poll)
        .context("cannot start the worker threads")?;
    let forwards: Vec<Arc<Forward>> = std::iter::once(forward.clone())
        .chain((1..workers.len()).map(|_| Arc::new(forward.for_worker())))
        .collect();
    let fill = forward.connector.max_streams();
    let tracker = TaskTracker::new();
    let hard_stop = CancellationToken::new();
    while let Some((sock, peer)) = crate::transport::accept::accept(&listener, &shutdown).await {
        let index = workers.pick(fill);
        let forward = forwards[index].clone();
        let (token, hard_stop) = (tracker.token(), hard_stop.clone());
        workers.run(
            index,
            sock,
            info_span!("tunnel", %peer),
            move |sock| async move {
                let _token = token;
                forward.handle(sock, &hard_stop).await
            },
        );
    }
    drop(listener);
    tracker.close();
    if !tracker.is_empty() {
        info!(tunnels = tracker.len(), drain_timeout = ?drain_timeout, "draining");
    }
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        if !drain_timeout.is_zero() {
            warn!(
                tunnels = tracker.len(),
                "drain timeout: closing what is left"
            );
        }
        hard_stop.cancel();
        tracker.wait().await;
    }
    // Sessions cut short tell the server with a last frame: let it leave
    // before the worker runtimes go.
    if let Some(policy) = &forward.resume {
        policy.session.settle(crate::session::LINGER).await;
    }
    Ok(())
}

impl Forward {
    async fn handle(&self, mut sock: TcpStream, hard_stop: &CancellationToken) {
        let _ = sock.set_nodelay(true);
        let started = Instant::now();
        let local = async {
            match self.destinations {
                Destinations::Socks5 => socks5::serve(self, &mut sock).await,
                Destinations::HttpConnect => http_connect::serve(self, &mut sock).await,
                _ => self.carry(&mut sock).await,
            }
        };
        let outcome = tokio::select! {
            r = local => r,
            _ = hard_stop.cancelled() => (Err(anyhow::anyhow!("closed at the end of the drain")), Stats::default()),
        };
        let (result, totals, stats) = match outcome {
            (Ok(totals), stats) => (Ok(()), totals, stats),
            (Err(e), stats) => {
                // Whatever failed, the application must see its connection
                // end; a reset tells it the data may be incomplete.
                splice::abort(&sock);
                (Err(e), Totals::default(), stats)
            }
        };
        let Stats { resumes, cuts, .. } = stats;
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => info!(
                sent = totals.inbound,
                received = totals.outbound,
                duration_ms,
                resumes,
                cuts,
                "tunnel ended"
            ),
            Err(e) => warn!(
                duration_ms,
                resumes,
                cuts,
                error = format!("{e:#}"),
                "tunnel failed"
            ),
        }
    }

    /// Carries one local byte stream through a new tunnel until both
    /// directions end (to the forward's fixed destination, if it has one).
    pub async fn tunnel<L>(&self, local: &mut L) -> anyhow::Result<Totals>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        self.carry(local).await.0
    }

    /// [`Forward::tunnel`], and its session's counts (resumes, cuts).
    async fn carry<L>(&self, local: &mut L) -> (anyhow::Result<Totals>, Stats)
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let fixed = match &self.destinations {
            Destinations::To(d) => Some(Ask::new(d, None)),
            _ => None,
        };
        self.carry_to(local, fixed.as_ref()).await
    }

    /// One tunnel asking for `ask`'s destination (`None`: the route's
    /// backend), and its session's counts.
    pub(crate) async fn carry_to<L>(
        &self,
        local: &mut L,
        ask: Option<&Ask<'_>>,
    ) -> (anyhow::Result<Totals>, Stats)
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let mut headers = match self.request_headers().await {
            Ok(h) => h,
            Err(e) => return (Err(e), Stats::default()),
        };
        let Some(policy) = &self.resume else {
            let stream = match self.connector.open(&headers).await {
                Ok(s) => s,
                Err(e) => return (Err(e.into()), Stats::default()),
            };
            return (self.over(local, stream, ask).await, Stats::default());
        };
        headers.insert(
            crate::session::handshake::SESSION,
            http::HeaderValue::from_static(crate::session::handshake::VERSION),
        );
        if self.inner.is_some() && policy.offered.load(Ordering::Relaxed) {
            match self.optimistic(local, &headers, policy, ask).await {
                Some(outcome) => return outcome,
                // Declined after all: ask again, and wait for the answer.
                None => policy.offered.store(false, Ordering::Relaxed),
            }
        }
        // Otherwise asking for a session means waiting for the answer before
        // the first byte: the bodies carry frames only if the server agrees.
        let opened = async {
            let mut stream = self.connector.open(&headers).await?;
            let head = stream.response().await.context("tunnel")?;
            anyhow::Ok((stream, head))
        };
        let (stream, head) = match opened.await {
            Ok(x) => x,
            Err(e) => return (Err(e), Stats::default()),
        };
        let session = match resume::offered(&head, stream, &policy.session) {
            Ok(session) => session,
            Err(stream) => return (self.over(local, stream, ask).await, Stats::default()),
        };
        policy.offered.store(true, Ordering::Relaxed);
        let keeper = resume::Keeper {
            forward: self,
            handle: session.handle(),
            cookies: resume::Cookies::default(),
            policy: policy.clone(),
        };
        keeper.cookies.update(&head);
        let (result, ()) = tokio::join!(self.over(local, session, ask), keeper.run());
        (result, keeper.handle.stats())
    }

    /// A session started before its `200`, as a tunnel without resume
    /// starts: the inner ClientHello leaves right behind the request headers
    /// (framed), saving the round trip the answer takes. Only with inner TLS
    /// and only once this server has offered sessions. `None`: the server
    /// did not offer one after all; its inner handshake failed on our first
    /// frame, so nothing reached its backend and nothing was read from
    /// `local`, and the caller asks again the slow way.
    async fn optimistic<L>(
        &self,
        local: &mut L,
        headers: &HeaderMap,
        policy: &ResumePolicy,
        ask: Option<&Ask<'_>>,
    ) -> Option<(anyhow::Result<Totals>, Stats)>
    where
        L: AsyncRead + AsyncWrite + Unpin,
    {
        let mut stream = match self.connector.open(headers).await {
            Ok(s) => s,
            Err(e) => return Some((Err(e.into()), Stats::default())),
        };
        let head = stream.report_response();
        let session = Session::new(policy.session.clone(), stream, None);
        let keeper = resume::Keeper {
            forward: self,
            handle: session.handle(),
            cookies: resume::Cookies::default(),
            policy: policy.clone(),
        };
        let mut declined = false;
        let mut refused = None;
        let keep = async {
            match head.await {
                Ok(Ok(head)) => match resume::session_id(&head) {
                    Some(id) => {
                        keeper.handle.set_id(id);
                        keeper.cookies.update(&head);
                        keeper.run().await;
                    }
                    None => declined = true,
                },
                Ok(Err(e)) => refused = Some(e),
                // The stream went before its answer: the copy says why.
                Err(_) => {}
            }
        };
        let (result, ()) = tokio::join!(self.over(local, session, ask), keep);
        let stats = keeper.handle.stats();
        match (result, declined, refused) {
            (Err(_), true, _) => None,
            // The front end's or server's status says more than the
            // handshake that it cut short.
            (Err(_), _, Some(e)) => Some((Err(anyhow::Error::new(e).context("tunnel")), stats)),
            (result, _, _) => Some((result, stats)),
        }
    }

    /// The inner TLS (unless --no-inner-tls), the destination request if
    /// there is one, and the copy, over `stream`.
    async fn over<L, S>(
        &self,
        local: &mut L,
        stream: S,
        ask: Option<&Ask<'_>>,
    ) -> anyhow::Result<Totals>
    where
        L: AsyncRead + AsyncWrite + Unpin,
        S: Carried,
    {
        let (result, totals) = match &self.inner {
            Some((config, name)) => {
                // Only a tunnel naming a destination offers its ALPN.
                let config = match (ask, &self.inner_dest) {
                    (Some(_), Some(with_alpn)) => with_alpn.clone(),
                    _ => config.clone(),
                };
                let handshake = TlsConnector::from(config)
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
                let (io, conn) = tls.get_mut();
                io.keyed(conn).await;
                if let Some(ask) = ask {
                    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    if let Err(e) = ask.open(local, &mut tls, alpn.as_deref()).await {
                        tls.get_mut().0.end_after(&Ok(()), Abort::Failed).await;
                        return Err(e);
                    }
                }
                let (result, totals) = splice::splice(local, &mut tls).await;
                tls.get_mut().0.end_after(&result, Abort::Failed).await;
                (result, totals)
            }
            None if ask.is_some() => {
                anyhow::bail!("a tunnel without inner TLS cannot name a destination")
            }
            None => {
                let mut stream = stream;
                let (result, totals) = splice::splice(local, &mut stream).await;
                stream.end_after(&result, Abort::Failed).await;
                (result, totals)
            }
        };
        result.context("tunnel")?;
        Ok(totals)
    }
}
