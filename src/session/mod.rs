//! Resumable tunnels: one application byte stream that outlives any number
//! of HTTP/2 streams.
//!
//! The session layer sits beneath the inner TLS and above the HTTP/2 stream:
//!
//! ```text
//! app ─▶ inner TLS ─▶ Session ─▶ carrier (H2Stream) ─▶ front end ─▶ carrier ─▶ Session ─▶ inner TLS ─▶ backend
//!                     (framing, replay buffer,          (cut, GOAWAY,
//!                      acknowledgements)                 request timeout)
//! ```
//!
//! - [`frame`]: the wire framing (DATA, ACK, FIN, CLOSE), so that a cut
//!   carrier is never mistaken for a half-close or a clean end.
//! - [`budget`]: the process-wide bound on what sessions hold, and how a
//!   full one pushes back.
//! - `replay`: the bounded buffer of bytes the peer has not acknowledged.
//! - `out`: the frames staged for the carrier (payloads not copied);
//!   `wake`: which of the application's sides and the driver is woken.
//! - [`Session`] / [`SessionHandle`]: the application's byte stream and the
//!   control handle that attaches new carriers after a cut.
//! - [`handshake`]: ids, resume keys (exported from the inner TLS, or random
//!   for plain tunnels), proofs and the headers that carry them.
//! - `limits`: why a resume is refused ([`Refusal`]) and the limits on
//!   detached sessions.
//! - [`Registry`]: the server's sessions by id, with the grace period and
//!   the limits on detached sessions.
//!
//! The wire format is specified in docs/protocol.md, "Resume".

pub(crate) mod budget;
mod carried;
mod carrier;
mod core;
pub(crate) mod frame;
pub mod handshake;
mod limits;
mod out;
mod registry;
mod replay;
mod wake;

use std::time::Duration;

pub(crate) use self::carried::{Abort, Carried, LINGER};
pub(crate) use self::core::SessionHandle;
// Reached by the tests as `postern::testing::session::Session`.
#[allow(unreachable_pub)]
pub use self::core::Session;
pub(crate) use self::handshake::{ResumeKey, ResumeRequest, ResumeResponse, SessionId};
pub(crate) use self::registry::{Limits, Registry};

/// Each direction's window: the most bytes a sender keeps unacknowledged
/// (its replay buffer) and so the most a receiver may have to hold unread.
///
/// The replay buffer must cover the bandwidth-delay product, or a sender
/// stalls waiting for acknowledgements: what the peer has not acknowledged
/// is exactly what is in flight plus what the peer's application has not
/// read yet. Today's HTTP/2 stream window is 8 MiB
/// ([`crate::transport::settings::STREAM_WINDOW`]), chosen because it carries
/// one tunnel past 100 MB/s at 20 ms RTT (~143 MB/s measured); a smaller
/// replay buffer would become the new limit, a larger one would only let a
/// stalled peer pin more memory. So the same 8 MiB: at 20 ms that is
/// 400 MB/s of acknowledgement headroom, at 80 ms 100 MB/s. Per tunnel this
/// bounds the session layer at 8 MiB of replay plus 8 MiB of unread inbox,
/// whatever the peer does (data past the window is a protocol error), and an
/// idle tunnel holds nothing (chunks are freed as they are acknowledged).
pub(crate) const WINDOW: usize = 8 * 1024 * 1024;

/// What a server's session reads from its first carrier before the peer
/// is authenticated (its resume key is set, or the inner handshake is
/// done): a ClientHello and a client certificate chain with room to spare
/// (docs/protocol.md §7, "Window and replay buffer"). Past it the bytes stay in the HTTP/2 stream,
/// whose window is not released, so an unauthenticated peer is held to the
/// HTTP/2 windows as it is without sessions, not to `consumed + window`.
pub(crate) const PREAUTH_READ: usize = 32 * 1024;

/// How long a detached session is kept for its client to come back.
///
/// 60 s: a cut by the front end (Cloud Run's request timeout, a restart,
/// GOAWAY) is resumed in one dial plus a round trip, so this is sized for
/// the slowest common cut, a laptop moving networks or waking its Wi-Fi
/// (typically 5-30 s). Longer would keep backend connections and buffers of
/// clients that are gone, on an instance that Cloud Run throttles outside
/// requests and may scale in; a deployment can raise it with
/// `--resume-timeout`.
pub(crate) const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// A session's parameters (both ends must use the same window).
#[derive(Debug, Clone)]
pub struct Config {
    /// See [`WINDOW`].
    pub window: usize,
    /// See [`DEFAULT_GRACE`]; zero turns resume off (a cut ends the session).
    pub grace: Duration,
    /// Where the carriers of ended sessions finish (their last frames, then
    /// END_STREAM): the owner waits on it before its runtime goes away.
    pub lingering: tokio_util::task::TaskTracker,
    /// What all sessions together may hold above their floors (see
    /// [`budget`]); shared by every session of a process.
    pub budget: std::sync::Arc<budget::Pool>,
}

impl Config {
    /// The default window with `grace`.
    pub fn with_grace(grace: Duration) -> Config {
        Config {
            grace,
            ..Config::default()
        }
    }

    /// The default window with `grace`, all sessions within `budget` bytes.
    pub fn bounded(grace: Duration, budget: usize) -> Config {
        Config {
            budget: std::sync::Arc::new(budget::Pool::new(budget)),
            ..Config::with_grace(grace)
        }
    }

    /// Waits (at most `limit`) for the carriers of ended sessions to finish.
    pub async fn settle(&self, limit: Duration) {
        self.lingering.close();
        let _ = tokio::time::timeout(limit, self.lingering.wait()).await;
        self.lingering.reopen();
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: WINDOW,
            grace: DEFAULT_GRACE,
            lingering: tokio_util::task::TaskTracker::new(),
            budget: std::sync::Arc::new(budget::Pool::unbounded()),
        }
    }
}

/// Where a session is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// On a carrier; `generation` counts the carriers so far (first = 1).
    Attached {
        /// Carriers so far.
        generation: u64,
    },
    /// The carrier was lost; waiting for a resume within the grace period.
    Detached,
    /// Over: done, reset, or not resumed in time.
    Ended,
}

/// Counts for the tunnel's summary line and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Carriers attached after the first.
    pub resumes: u64,
    /// Times the carrier was lost and the session detached.
    pub cuts: u64,
    /// Bytes sent again after resumes.
    pub resent: u64,
    /// DATA payloads taken from the carrier as they arrived, without a copy.
    pub uncopied: u64,
}

#[cfg(test)]
mod tests;
