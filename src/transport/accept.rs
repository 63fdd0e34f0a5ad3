//! The one accept loop behind every listener (the tunnel server, the client,
//! the built-in backends, the demo's front end), and the open-file limit
//! that it would otherwise run into.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long to wait after a failed accept. The usual cause is EMFILE, which
/// does not clear by retrying at once: retrying without a pause would spin a
/// core until a socket closes.
const ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Accepts the next connection, or `None` once `shutdown` fires. Accept
/// errors (typically EMFILE) are logged and retried after a short pause
/// rather than spun on.
pub(crate) async fn accept(
    listener: &TcpListener,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => return Some(x),
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        _ = tokio::time::sleep(ERROR_PAUSE) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
            },
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Raises this process's open-file limit (children inherit it) so that many
/// thousand tunnels fit: the hard limit too when permitted, else the soft
/// one up to the hard. Returns the soft limit now in force (0 if unknown).
pub fn raise_fd_limit() -> u64 {
    const WANT: u64 = 65_536;
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        if hard < WANT {
            let _ = rlimit::Resource::NOFILE.set(WANT, WANT);
        }
    }
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
