//! `postern backend`: a built-in TCP backend on its own.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tracing::info;

use crate::server::backend::{self, Mode};

/// `postern backend`: run a built-in TCP backend.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, env = "POSTERN_BACKEND_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// What to do with each connection.
    #[arg(long, value_enum, default_value = "banner")]
    pub mode: Mode,
}

/// Runs `postern backend` until SIGINT/SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("--listen {}: cannot bind", args.listen))?;
    info!(addr = %listener.local_addr()?, mode = ?args.mode, "backend listening");
    let shutdown = crate::signal::shutdown_token();
    backend::serve(listener, args.mode, shutdown).await;
    Ok(())
}
