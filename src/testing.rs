//! Hooks for Postern's own tests, kept out of the production surface: what
//! they expose is no part of the supported API and may change at any time.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::client::Connector;

/// Number of live pooled connections of `connector`.
pub async fn connections(connector: &Connector) -> usize {
    connector.connections().await
}

/// The demo's front end; with `tokens`, as a private Cloud Run service:
/// requests without `authorization: Bearer <token>` get 401, with a token
/// not in `tokens` 403.
pub async fn serve_private(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    tokens: Option<Arc<[String]>>,
    shutdown: CancellationToken,
) {
    crate::demo::front::serve_with_tokens(listener, tls, upstream, tokens, shutdown).await
}
