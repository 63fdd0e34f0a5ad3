//! Process signals: SIGINT/SIGTERM (and, for a stdio client, SIGHUP) start
//! a graceful shutdown.

use tokio_util::sync::CancellationToken;
use tracing::info;

/// A token cancelled on the first SIGINT or SIGTERM (Cloud Run sends SIGTERM
/// ten seconds before it kills the instance).
pub(crate) fn shutdown_token() -> CancellationToken {
    token_on(false)
}

/// Like [`shutdown_token`], and SIGHUP too: what ssh sends its ProxyCommand
/// as it exits. Left at its default action, SIGHUP would kill a stdio
/// client before its session's end reached the server.
pub(crate) fn shutdown_or_hangup_token() -> CancellationToken {
    token_on(true)
}

fn token_on(hangup: bool) -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let name = wait_for_signal(hangup).await;
        info!(signal = name, "shutting down");
        trigger.cancel();
    });
    token
}

#[cfg(unix)]
async fn wait_for_signal(hangup: bool) -> &'static str {
    use tokio::signal::unix::SignalKind;
    let mut signals = vec![
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
    ];
    if hangup {
        signals.push((SignalKind::hangup(), "SIGHUP"));
    }
    let mut heard = listen(&signals);
    match heard.recv().await {
        Some(name) => name,
        // Nothing could be registered: the default actions still stop us.
        None => std::future::pending().await,
    }
}

/// Registers each of `signals` on its own and yields the name of each one
/// received. Once tokio has installed a handler for a signal its default
/// action is gone, so a failure to register one signal must not stop us
/// listening for the others (a process deaf to SIGTERM would only die at
/// Cloud Run's SIGKILL). A signal that cannot be registered keeps its
/// default action. The channel closes when none could be registered.
#[cfg(unix)]
fn listen(
    signals: &[(tokio::signal::unix::SignalKind, &'static str)],
) -> tokio::sync::mpsc::Receiver<&'static str> {
    use tokio::signal::unix::signal;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    for &(kind, name) in signals {
        match signal(kind) {
            Ok(mut stream) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if tx.send(name).await.is_err() {
                            break;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(signal = name, error = %e, "cannot install a signal handler"),
        }
    }
    rx
}

#[cfg(not(unix))]
async fn wait_for_signal(_hangup: bool) -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "ctrl-c"
}

/// Calls `reload` on every SIGHUP (the conventional "re-read your files").
#[cfg(unix)]
pub(crate) fn on_hangup(reload: impl Fn() + Send + 'static) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot install a SIGHUP handler: reload only when files change");
            return;
        };
        while hup.recv().await.is_some() {
            reload();
        }
    });
}

/// No SIGHUP here: reload only when files change.
#[cfg(not(unix))]
pub fn on_hangup(_reload: impl Fn() + Send + 'static) {}

#[cfg(all(test, unix))]
mod tests {
    use std::time::Duration;

    use tokio::signal::unix::SignalKind;

    use super::listen;

    /// SIGKILL can never be handled, so its registration fails; the signal
    /// registered beside it must still be heard.
    #[tokio::test]
    async fn one_failed_registration_leaves_the_others_listening() {
        let mut heard = listen(&[
            (SignalKind::from_raw(9), "SIGKILL"),
            (SignalKind::user_defined1(), "SIGUSR1"),
        ]);
        let status = std::process::Command::new("kill")
            .args(["-USR1", &std::process::id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        let name = tokio::time::timeout(Duration::from_secs(10), heard.recv())
            .await
            .expect("the SIGUSR1 handler never fired");
        assert_eq!(name, Some("SIGUSR1"));
    }
}
