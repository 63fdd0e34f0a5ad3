//! Hooks for Postern's own tests, kept off the production surface: nothing
//! here is needed to run Postern, and nothing here is a stable API.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::Connector;
use crate::server::{Config, TunnelReport};

/// The HTTP/2 stream as a byte stream and the settings and workers beneath
/// it, for tests that drive a tunnel's carrier by hand.
pub mod transport {
    /// [`H2Stream`](stream::H2Stream) and its refusals.
    pub mod stream {
        pub use crate::transport::stream::{H2Stream, Refused};
    }
    /// The size of one turn of the copy loop.
    pub mod splice {
        pub use crate::transport::splice::COPY_BUF;
    }
    pub use crate::transport::{settings, workers};
}

/// The session layer, for tests that speak its handshake directly.
pub mod session {
    pub use crate::session::handshake::{self, ResumeKey, ResumeRequest, SessionId};
    pub use crate::session::Session;
}

/// The strict PROXY v2 decoder that checks what the server writes.
pub mod proxy_protocol {
    pub use crate::server::proxy_protocol::decode::{decode, DecodeError};
    pub use crate::server::proxy_protocol::{encode, Header};
}

/// The routes/policy config file's parser, for the fuzz targets.
pub fn parse_config(text: &str) -> anyhow::Result<crate::server::Routes> {
    crate::server::parse_config(text)
}

/// Sends every finished tunnel's report to the returned receiver.
///
/// Unbounded, which suits a test that reads every report; a long-running
/// server should use [`Config::on_tunnel_end`] instead.
pub fn tunnel_reports(config: &mut Config) -> mpsc::UnboundedReceiver<TunnelReport> {
    let (tx, rx) = mpsc::unbounded_channel();
    config.on_tunnel_end(move |report| {
        let _ = tx.send(report.clone());
    });
    rx
}

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
