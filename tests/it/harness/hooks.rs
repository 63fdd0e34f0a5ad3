//! The library's test-only hooks, reached from this file alone: the
//! finished-tunnel reports, the client's pool size, the PROXY header
//! decoder and the demo front end's private-upstream variant. These are the
//! paths expected to move behind a testing module; only this file follows.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub(crate) use postern::server::TunnelReport;
pub(crate) use postern::testing::proxy_protocol::{decode as decode_proxy_header, DecodeError};

use super::api::{Config, Connector};

/// The stream of reports of finished tunnels from one server.
pub(crate) type Reports = mpsc::UnboundedReceiver<TunnelReport>;

/// Makes `config` report every finished tunnel to the returned receiver.
pub(crate) fn attach_reports(config: &mut Config) -> Reports {
    postern::testing::tunnel_reports(config)
}

/// How many h2 connections the client's pool holds.
pub(crate) async fn pool_connections(connector: &Connector) -> usize {
    postern::testing::connections(connector).await
}

/// Serves the demo front end on `listener` in front of `upstream`; with
/// `tokens`, like a private Cloud Run service (401/403 without one of them).
pub(crate) fn serve_front(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    tokens: Option<Vec<String>>,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    let tokens = tokens.map(Into::into);
    tokio::spawn(postern::testing::serve_private(
        listener, config, upstream, tokens, shutdown,
    ))
}
