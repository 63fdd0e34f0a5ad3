//! `postern client`: accepts local TCP connections (or uses stdin/stdout),
//! opens one tunnel stream per connection through [`Connector`], starts the
//! inner mTLS over it at once (optimistic: the ClientHello follows the
//! request headers without waiting for the `200`), then copies bytes.

mod connector;
mod target;
mod token;

pub use connector::{Connector, OpenError};
pub use target::Target;
pub(crate) use token::{default_metadata_host, metadata_project_id};
pub use token::{Caller, IdTokens, ServiceAccount, TokenError, TokenSource};

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::HeaderMap;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn};

use crate::transport::splice::{self, Totals};
use crate::transport::workers::Workers;

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
    let workers = Workers::start(forward.workers, "postern-worker")
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
    Ok(())
}

impl Forward {
    async fn handle(&self, mut sock: TcpStream, hard_stop: &CancellationToken) {
        let _ = sock.set_nodelay(true);
        let started = Instant::now();
        let outcome = tokio::select! {
            r = self.tunnel(&mut sock) => r,
            _ = hard_stop.cancelled() => Err(anyhow::anyhow!("closed at the end of the drain")),
        };
        let (result, totals) = match outcome {
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
