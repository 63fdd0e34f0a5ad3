//! The accept loop and one HTTP/2 connection: outer TLS when self-hosted,
//! the h2 handshake with Postern's settings, a task per request, and the
//! drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn};

use crate::server::config::Config;
use crate::server::request;
use crate::transport::settings;
use crate::transport::workers::Workers;

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
        let Some((sock, peer)) = crate::transport::accept::accept(&listener, &shutdown).await
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
    let limit = config.limits.handshake_timeout;
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
/// out. Together with the receive window ([`settings::STREAM_WINDOW`], released only
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
    let handshake = settings::server_builder()
        .max_header_list_size(config.max_header_list_size)
        .max_concurrent_streams(config.max_streams_per_connection)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .handshake::<_, Bytes>(io);
    let mut conn = tokio::time::timeout(config.limits.handshake_timeout, handshake)
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
        tokio::spawn(request::request(req, respond, peer, behind_front, config));
    }
}
