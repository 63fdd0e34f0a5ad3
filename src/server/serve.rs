//! The accept loop and one HTTP/2 connection: outer TLS when self-hosted,
//! the h2 handshake with Postern's settings, a task per request, and the
//! drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, warn};

use crate::server::config::Config;
use crate::server::windows::{self, Grant, Share};
use crate::server::{http1, request};
use crate::transport::rewind::Rewind;
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
    let workers = Workers::start(config.workers, "postern-worker", config.busy_poll)
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
        // Beyond --max-connections, or when the buffer budget cannot give
        // it a first window, a connection is closed before any byte is read.
        let Some(slot) = config.connections.clone().try_acquire_owned().ok() else {
            debug!(%peer, "connection limit reached: closing");
            config.metrics.connection_refused("max_connections");
            continue;
        };
        let Some(grant) = Grant::first(&config.budget) else {
            debug!(%peer, "buffer budget spent: closing");
            config.metrics.connection_refused("buffer_budget");
            continue;
        };
        let open = config.metrics.connection_opened();
        let config = config.clone();
        let (shutdown, hard_stop) = (shutdown.clone(), hard_stop.clone());
        let span = info_span!("conn", %peer);
        // The drain waits for this token; the worker holds it until the
        // connection is gone.
        let token = tracker.token();
        workers.run(workers.pick(1), sock, span, move |sock| async move {
            let _held = (token, slot, open);
            tokio::select! {
                r = connection(sock, peer, config, grant, shutdown) => {
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
        // Sessions cannot follow this process anywhere: their clients are
        // told to close now rather than resume into nothing.
        if let Some(sessions) = &config.resume {
            sessions.close_all(Duration::from_secs(1)).await;
        }
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
    grant: Grant,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    if let Err(e) = crate::transport::socket::tune_outer(&sock) {
        debug!(error = %e, "cannot set the outer socket's options");
    }
    let sock = crate::transport::socket::buffered(sock);
    let limit = config.limits.handshake_timeout;
    // The outer config is taken per connection: a reload applies to new connections.
    let outer = config.live.material().outer.clone();
    match outer {
        Some(outer) => {
            let tls = crate::tls::early::accept(outer, sock, limit)
                .await
                .context("outer TLS handshake")?;
            config.metrics.outer_handshake(tls.kind());
            if tls.alpn_protocol() == Some(crate::tls::ALPN_H2) {
                return h2_connection(tls, peer, false, config, grant, shutdown).await;
            }
            either(tls, peer, false, config, grant, shutdown).await
        }
        None => either(sock, peer, true, config, grant, shutdown).await,
    }
}

/// HTTP/2 with prior knowledge, or HTTP/1.1 (the WebSocket transport) on
/// the same port: told apart by the HTTP/2 preface.
async fn either<T>(
    mut io: T,
    peer: SocketAddr,
    behind_front: bool,
    config: Arc<Config>,
    grant: Grant,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let limit = config.limits.handshake_timeout;
    let (seen, h2) = tokio::time::timeout(limit, http1::detect(&mut io))
        .await
        .context("nothing arrived on the connection in time")?
        .context("reading the connection's first bytes")?;
    let io = Rewind::new(seen, io);
    if h2 {
        return h2_connection(io, peer, behind_front, config, grant, shutdown).await;
    }
    let ping = config.limits.websocket_ping;
    http1::serve(io, limit, ping, |hop| {
        h2_connection(hop, peer, behind_front, config, grant, shutdown)
    })
    .await
}

/// Requests beyond these are refused by h2 itself: too many streams the
/// client reset before we accepted them (Rapid Reset, CVE-2023-44487), and
/// too many streams we had to reset for protocol errors, end the connection
/// with GOAWAY.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Response data h2 buffers per stream beyond what the peer's window lets
/// out. Together with the receive windows (see [`windows`], released only
/// as the tunnel consumes data) this bounds a tunnel's memory when a peer
/// stops reading: the writer simply waits for capacity.
const MAX_SEND_BUFFER: usize = 400 * 1024;

/// How often a change of the stream window that h2 refused is tried again.
/// h2 refuses a change of SETTINGS while its previous one awaits the peer's
/// ACK, and says nothing when that ACK comes. A resume is the first request
/// on a new connection and authenticates at once, so its raise meets the
/// connection's first SETTINGS still unacknowledged (for a round trip after
/// the preface); without a retry the carrier kept the 64 KiB stream window
/// for its whole life (a 4 MiB upload at 20 ms RTT: 2-3 s instead of 0.06 s).
const WINDOW_RETRY: Duration = Duration::from_millis(10);

/// `behind_front`: plain h2c, so `x-forwarded-for` was written by the front end.
/// The windows start at the pre-authentication sizes and follow the
/// connection's authenticated tunnels (see [`windows`]).
async fn h2_connection<T>(
    io: T,
    peer: SocketAddr,
    behind_front: bool,
    config: Arc<Config>,
    mut grant: Grant,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let handshake = settings::server_builder()
        .initial_window_size(windows::PREAUTH_STREAM_WINDOW)
        .initial_connection_window_size(windows::PREAUTH_CONNECTION_WINDOW)
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
    let share = Arc::new(Share::default());
    // Stream and connection windows follow the authenticated tunnels and
    // the sessions' budget (see [`windows`]).
    let mut pressure = config.resume.as_ref().map(|r| r.pressure());
    let mut pressed = false;
    let mut stream_window = windows::PREAUTH_STREAM_WINDOW;
    let mut draining = false;
    // Since when no request has been open, and when a connection told to go
    // away for idling is cut off if its peer does not finish the goodbye.
    let mut idle_since = Some(Instant::now());
    let mut cut_off: Option<Instant> = None;
    loop {
        match (share.open(), idle_since) {
            (0, None) => idle_since = Some(Instant::now()),
            (1.., Some(_)) => idle_since = None,
            _ => {}
        }
        let idle_at = match (cut_off, idle_since, config.connection_idle_timeout) {
            (Some(at), _, _) => Some(at),
            (None, Some(since), Some(limit)) => Some(since + limit),
            _ => None,
        };
        let idle = async move {
            match idle_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let retry_due = windows::stream_window(share.established(), pressed) != stream_window;
        let retry = async move {
            if retry_due {
                tokio::time::sleep(WINDOW_RETRY).await
            } else {
                std::future::pending().await
            }
        };
        let press = async {
            match pressure.as_mut() {
                Some(p) => p.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = share.changed() => {
                let established = share.established();
                let mut window = grant.resize(windows::connection_window(established));
                if pressed {
                    window = window.saturating_add(windows::pressed_headroom(share.open()));
                }
                conn.set_target_window_size(window);
                let want = windows::stream_window(established, pressed);
                // Fails only while an earlier change awaits its ACK; the
                // retry below tries again.
                if want != stream_window && conn.set_initial_window_size(want).is_ok() {
                    stream_window = want;
                }
                continue;
            }
            alive = press => {
                match alive {
                    true => pressed = pressure.as_mut().is_some_and(|p| *p.borrow_and_update()),
                    false => pressure = None,
                }
                // Applied with the windows above, at once.
                share.poke();
                continue;
            }
            _ = retry => {
                let want = windows::stream_window(share.established(), pressed);
                if conn.set_initial_window_size(want).is_ok() {
                    stream_window = want;
                }
                continue;
            }
            _ = idle => {
                if cut_off.is_some() {
                    debug!("idle connection did not close: cut off");
                    return Ok(());
                }
                debug!("no request for the connection idle timeout: closing");
                conn.graceful_shutdown();
                cut_off = Some(Instant::now() + config.limits.handshake_timeout);
                continue;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(next) = next else { return Ok(()) };
        let (req, respond) = next.context("HTTP/2 connection")?;
        let config = config.clone();
        let counted = share.opened();
        tokio::spawn(request::request(
            req,
            respond,
            peer,
            behind_front,
            config,
            counted,
        ));
    }
}
