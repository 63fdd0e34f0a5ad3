//! `postern server`: accepts HTTP/2 connections (h2c behind a front end, or
//! TLS when self-hosted), turns each tunnel request into an
//! `H2Stream` (`transport::stream`), ends the inner mTLS
//! there and only then dials the backend.
//!
//! - `args`: the flags; `config`: [`Config`], built from them.
//! - `serve`: the accept loop, one HTTP/2 connection, the drain.
//! - `http1`: HTTP/1.1 on the same port (the WebSocket transport's
//!   upgrade, bridged to an in-process HTTP/2 connection; refusals).
//! - `request`: dispatch (health check, refusals); `reply`: short answers.
//! - `tunnel`: one tunnel from the `200` to the backend (over a resumable
//!   session when the client asks); `resume`: a cut tunnel's new stream; `report`: how it
//!   ended; `watchdog`: its idle timeout and lifetime.
//! - `routes` and `config_file`: the routing table and its TOML file;
//!   `reload`: the material (routes with their TLS configs) swapped on change.
//! - `windows`: what a connection may make the server buffer before and after
//!   its tunnels authenticate, and the process-wide buffer budget.
//! - `proxy_protocol`: the PROXY v2 header; `metrics`; `backend`: built-in backends.

mod args;
pub mod backend;
mod config;
mod config_file;
mod destination;
mod http1;
mod metrics;
pub(crate) mod proxy_protocol;
mod reload;
mod reply;
mod report;
mod request;
mod resume;
mod routes;
mod serve;
mod tunnel;
mod watchdog;
mod windows;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::info;

pub use args::Args;
pub use config::Config;
#[cfg(any(test, feature = "testing"))]
pub(crate) use config_file::parse_config;
pub use metrics::Metrics;
pub use reload::{Live, Material, ReloadStatus};
pub use report::{TunnelError, TunnelReport};
pub use routes::{Route, Routes};
pub use serve::serve;
pub use tunnel::Limits;

/// Runs `postern server` until SIGINT/SIGTERM and the drain that follows.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let shutdown = crate::signal::shutdown_token();
    let config = Config::from_args(&args, &shutdown).await?;
    let live = config.live.clone();
    crate::signal::on_hangup(move || live.request_reload());
    let addr = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], args.port)));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("--listen {addr}: cannot bind"))?;
    let material = config.live.material();
    info!(
        addr = %listener.local_addr()?,
        mode = if material.outer.is_some() { "tls" } else { "h2c" },
        inner_tls = material.inner_tls(),
        record_ciphers = crate::tls::RecordCiphers::here().name(),
        routes = material.routes.iter().count(),
        crls = ?args.crl,
        metrics = ?config.metrics_addr,
        "server listening"
    );
    serve(listener, Arc::new(config), shutdown).await
}
