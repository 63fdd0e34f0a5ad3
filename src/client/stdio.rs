//! `postern client --stdio`: one tunnel over this process's stdin and
//! stdout, for ssh's ProxyCommand.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::forward::Forward;

/// How long the session's last frames get to reach the server before the
/// process exits (as the listener's end of drain allows).
const SETTLE: Duration = crate::session::LINGER;

/// Carries stdin/stdout through one tunnel until it ends, or until
/// `shutdown` (SIGHUP from ssh as it exits, SIGTERM, SIGINT) and then at
/// most `drain_timeout`, after which the tunnel is closed as the listener
/// closes what is left of its own. Either way the session's last frame
/// (CLOSE) reaches the server before this returns: otherwise the process
/// would exit with it still queued, and the server would hold the session
/// and its backend connection for a resume that never comes.
pub async fn stdio(
    forward: &Forward,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) -> anyhow::Result<()> {
    let mut local = tokio::io::join(tokio::io::stdin(), tokio::io::stdout());
    let mut tunnel = Box::pin(forward.tunnel(&mut local));
    let result = tokio::select! {
        r = &mut tunnel => r,
        () = shutdown.cancelled() => match tokio::time::timeout(drain_timeout, &mut tunnel).await {
            Ok(r) => r,
            Err(_) => Err(anyhow::anyhow!("tunnel closed at the end of the drain")),
        },
    };
    // A session still open is let go here, which queues its CLOSE.
    drop(tunnel);
    if let Some(policy) = &forward.resume {
        policy.session.settle(SETTLE).await;
    }
    result.map(|_| ())
}
