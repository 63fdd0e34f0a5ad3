//! Built-in TCP backends: the original demo's banner server and an echo
//! server. `postern backend` runs one on its own (see `cmd::backend`); `postern server --backend
//! builtin:MODE` runs one in-process beside the tunnel server (one container,
//! one process).

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::transport::accept::accept;

/// The five-line banner of the original Cloud Run mTLS demo.
pub const BANNER: &str = "\
================================================================
== Congrats!                                                  ==
== If you see this message, it means                          ==
== you've successfully run the mTLS demo on Google Cloud Run! ==
================================================================
";

/// What a built-in backend does with each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Send the banner, then close (server speaks first).
    Banner,
    /// Send back everything received; half-close when the client does.
    Echo,
}

/// Serves `mode` on `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, mode: Mode, shutdown: CancellationToken) {
    while let Some((sock, peer)) = accept(&listener, &shutdown).await {
        tokio::spawn(async move {
            if let Err(e) = handle(sock, mode).await {
                debug!(%peer, error = %e, "backend connection ended with an error");
            }
        });
    }
}

/// Starts a built-in backend on an ephemeral loopback port and returns its address.
pub async fn spawn_local(mode: Mode, shutdown: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the built-in backend")?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, mode, shutdown));
    Ok(addr)
}

async fn handle(mut sock: TcpStream, mode: Mode) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    match mode {
        Mode::Banner => {
            sock.write_all(BANNER.as_bytes()).await?;
            sock.shutdown().await
        }
        Mode::Echo => {
            let (mut r, mut w) = sock.split();
            tokio::io::copy(&mut r, &mut w).await?;
            w.shutdown().await
        }
    }
}
