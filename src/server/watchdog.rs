//! Per-tunnel limits that need to see traffic: the idle timeout and the
//! maximum lifetime, plus live byte counters for the metrics.
//!
//! Both directions of a tunnel pass through its backend socket (reads are
//! backend -> client, writes client -> backend), so wrapping that one socket
//! in [`Metered`] observes all traffic without touching the copy loop.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use crate::server::metrics::Metrics;

/// When the tunnel last carried a byte, shared by [`Metered`] and [`expiry`].
#[derive(Debug)]
pub(super) struct Activity {
    started: Instant,
    /// Nanoseconds from `started` to the latest byte.
    last: AtomicU64,
}

impl Activity {
    /// Activity starting now.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Activity {
            started: Instant::now(),
            last: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.started + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }
}

/// Why [`expiry`] ended a tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expired {
    /// No byte either way for the idle timeout.
    Idle(Duration),
    /// The tunnel reached its maximum lifetime.
    Lifetime(Duration),
}

/// Resolves when the tunnel has been idle for `idle` or open for `lifetime`;
/// never, if neither is set.
pub(super) async fn expiry(
    activity: &Activity,
    idle: Option<Duration>,
    lifetime: Option<Duration>,
) -> Expired {
    let end_of_life = lifetime.map(|l| (activity.started + l, l));
    loop {
        let idle_at = idle.map(|i| activity.last() + i);
        let next = match (idle_at, end_of_life) {
            (Some(a), Some((b, _))) => a.min(b),
            (Some(a), None) => a,
            (None, Some((b, _))) => b,
            (None, None) => return std::future::pending().await,
        };
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        if let Some((at, l)) = end_of_life {
            if now >= at {
                return Expired::Lifetime(l);
            }
        }
        if let Some(i) = idle {
            // Traffic since we went to sleep pushes the deadline on.
            if now >= activity.last() + i {
                return Expired::Idle(i);
            }
        }
    }
}

/// The backend socket, counting bytes into the metrics and stamping activity.
pub(super) struct Metered<T> {
    /// The wrapped socket.
    pub inner: T,
    activity: Arc<Activity>,
    metrics: Arc<Metrics>,
}

impl<T> Metered<T> {
    /// The activity this socket stamps.
    pub(super) fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Wraps `inner`.
    pub(super) fn new(inner: T, activity: Arc<Activity>, metrics: Arc<Metrics>) -> Self {
        Metered {
            inner,
            activity,
            metrics,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.activity.touch();
            self.metrics.add_bytes(false, n as u64);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.activity.touch();
                self.metrics.add_bytes(true, n as u64);
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
