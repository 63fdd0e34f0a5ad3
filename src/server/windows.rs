//! What one HTTP/2 connection may make the server buffer, before and after
//! its tunnels authenticate.
//!
//! h2 buffers every DATA frame the peer's window allows until a tunnel
//! reads it, and a tunnel in its inner handshake stops reading while its
//! ServerHello cannot leave. So a peer with no certificate could pin the
//! whole advertised window (once 8 MiB per stream, 32 MiB per connection)
//! for the handshake timeout. A connection therefore starts small: a stream
//! window of [`PREAUTH_STREAM_WINDOW`] and a connection window of
//! [`PREAUTH_CONNECTION_WINDOW`], enough for ClientHellos and certificate
//! chains. Each tunnel that authenticates (or, without inner TLS, that has
//! its backend) earns the connection one full stream window, up to
//! [`settings::CONNECTION_WINDOW`]; the first one raises the stream window
//! to [`settings::STREAM_WINDOW`] (a stream window can only be widened by
//! SETTINGS, for all streams at once: the connection window, earned only by
//! authenticated tunnels, is what bounds the unauthenticated ones then).
//!
//! Every connection's window is also drawn from one process-wide
//! [`Budget`] (`--buffer-budget-mib`): a raise the budget cannot cover is
//! partial, and raises leave the last quarter of it to first windows, so
//! that connections whose tunnels have earned full windows never lock out
//! new ones (at 512 MiB: 384 MiB of raises, ~46 connections at full speed,
//! and room for 512 more first windows); a connection the budget cannot
//! give even its first window is closed.
//!
//! When the sessions' own budget is spent (`session::budget`), stalled
//! tunnels stop reading and their unread DATA pins the connection window,
//! which would starve every other stream of the connection, new tunnels'
//! handshakes first. While it is pressed a connection therefore advertises
//! stream windows of [`settings::PRESSED_STREAM_WINDOW`] and widens its
//! connection window by one such window per open request, plus one
//! ([`pressed_headroom`]): what stalled streams already pin stays pinned,
//! and the rest of the connection keeps moving.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::transport::settings;

/// The stream window a connection starts with (the protocol default): a
/// ClientHello and a client certificate chain fit with room to spare.
pub(super) const PREAUTH_STREAM_WINDOW: u32 = 64 * 1024;

/// The connection window before any tunnel on it has authenticated: a few
/// handshakes' worth, the most an unauthenticated peer can make one
/// connection buffer.
pub(super) const PREAUTH_CONNECTION_WINDOW: u32 = 256 * 1024;

/// Tunnels of one connection in their inner handshake at once (without
/// inner TLS: connecting their backend). A stalled handshake costs about
/// 40 KiB (its task, TLS state, stream and session) plus what its body
/// holds (a session reads at most `session::PREAUTH_READ` of it, the rest
/// is bounded by the windows above): 8 of them keep an unauthenticated
/// connection under 1 MiB whatever it sends (tests/it/preauth.rs).
pub(super) const PREAUTH_HANDSHAKES: usize = 8;

/// Tunnels of one connection that may wait, unanswered, for one of those
/// handshakes to end: a burst of new tunnels is delayed, not refused.
/// Beyond these a tunnel request is refused with REFUSED_STREAM. More than
/// Postern's client opens on one connection at once (its default
/// `--max-streams-per-connection` is 100), so its bursts always wait; a
/// waiting request holds only its h2 stream and a small boxed task (no TLS
/// state), and its body is bounded by the windows above.
pub(super) const PREAUTH_WAITING: usize = 120;

/// The receive window a connection carrying `established` authenticated
/// tunnels gets: one full stream window each, capped.
pub(super) fn connection_window(established: usize) -> u32 {
    let earned = u64::from(PREAUTH_CONNECTION_WINDOW)
        + established as u64 * u64::from(settings::STREAM_WINDOW);
    earned.min(u64::from(settings::CONNECTION_WINDOW)) as u32
}

/// The stream window a connection with `established` authenticated tunnels
/// advertises, `pressed` or not.
pub(super) fn stream_window(established: usize, pressed: bool) -> u32 {
    match (established, pressed) {
        (0, _) => PREAUTH_STREAM_WINDOW,
        (_, true) => settings::PRESSED_STREAM_WINDOW,
        (_, false) => settings::STREAM_WINDOW,
    }
}

/// What a connection with `open` requests adds to its connection window
/// while the sessions' budget is pressed: each of them can pin at most one
/// pressed stream window more, and one more is left for handshakes. Outside
/// the windows budget (which stalled streams have spent by then): bounded
/// by 256 KiB per open tunnel.
pub(super) fn pressed_headroom(open: usize) -> u32 {
    let bytes = (open as u64 + 1) * u64::from(settings::PRESSED_STREAM_WINDOW);
    bytes.min(u64::from(settings::CONNECTION_WINDOW) * 4) as u32
}

/// The process-wide budget of receive-window bytes, shared by all connections.
#[derive(Debug)]
pub struct Budget {
    left: Mutex<u64>,
    total: u64,
}

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: u64) -> Self {
        Budget {
            left: Mutex::new(bytes),
            total: bytes,
        }
    }

    /// The whole budget.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Takes up to `want` bytes, leaving `keep`; returns what was taken.
    fn take(&self, want: u64, keep: u64) -> u64 {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        let got = want.min(left.saturating_sub(keep));
        *left -= got;
        got
    }

    /// What raises leave untouched, for new connections' first windows.
    fn reserve(&self) -> u64 {
        self.total / 4
    }

    fn give(&self, bytes: u64) {
        let mut left = self.left.lock().unwrap_or_else(|e| e.into_inner());
        *left = (*left + bytes).min(self.total);
    }
}

/// One connection's share of the budget, returned when dropped.
#[derive(Debug)]
pub(super) struct Grant {
    budget: Arc<Budget>,
    held: u64,
}

impl Grant {
    /// The first window of a new connection, or `None` if the budget cannot
    /// cover it.
    pub(super) fn first(budget: &Arc<Budget>) -> Option<Grant> {
        let want = u64::from(PREAUTH_CONNECTION_WINDOW);
        let got = budget.take(want, 0);
        if got < want {
            budget.give(got);
            return None;
        }
        Some(Grant {
            budget: budget.clone(),
            held: got,
        })
    }

    /// Moves the grant toward `want` bytes (never below the first window);
    /// returns the window it now covers.
    pub(super) fn resize(&mut self, want: u32) -> u32 {
        let want = u64::from(want.max(PREAUTH_CONNECTION_WINDOW));
        if want > self.held {
            self.held += self.budget.take(want - self.held, self.budget.reserve());
        } else {
            self.budget.give(self.held - want);
            self.held = want;
        }
        self.held as u32
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget.give(self.held);
    }
}

/// What the tunnels of one connection tell the task that drives it: how many
/// requests are open (for the idle timeout) and how many tunnels have
/// authenticated (for the windows).
#[derive(Debug)]
pub(super) struct Share {
    open: AtomicUsize,
    established: AtomicUsize,
    changed: Notify,
    /// Handshakes in progress ([`PREAUTH_HANDSHAKES`]) and those waiting
    /// for one to end ([`PREAUTH_WAITING`]).
    handshakes: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Default for Share {
    fn default() -> Self {
        Share {
            open: AtomicUsize::new(0),
            established: AtomicUsize::new(0),
            changed: Notify::new(),
            handshakes: Arc::new(Semaphore::new(PREAUTH_HANDSHAKES)),
            waiting: AtomicUsize::new(0),
        }
    }
}

impl Share {
    /// Counts an open request until the guard drops.
    pub(super) fn opened(self: &Arc<Self>) -> Counted {
        self.open.fetch_add(1, Ordering::AcqRel);
        Counted {
            share: self.clone(),
            established: AtomicBool::new(false),
            handshake: Mutex::new(None),
        }
    }

    /// Requests open now.
    pub(super) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Tunnels past authentication now.
    pub(super) fn established(&self) -> usize {
        self.established.load(Ordering::Acquire)
    }

    /// Resolves after the next change to either count.
    pub(super) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// Makes the next [`Share::changed`] resolve at once, so that the
    /// windows are worked out again.
    pub(super) fn poke(&self) {
        self.changed.notify_one();
    }
}

/// One open request of a connection; marks its tunnel established once.
#[derive(Debug)]
pub(super) struct Counted {
    share: Arc<Share>,
    established: AtomicBool,
    /// This tunnel's place among the connection's handshakes, held until
    /// it is established or ends.
    handshake: Mutex<Option<OwnedSemaphorePermit>>,
}

impl Counted {
    /// Takes one of the connection's handshake places, waiting at most
    /// `wait` (behind at most [`PREAUTH_WAITING`] others) for one to free;
    /// `false`: the tunnel is to be refused.
    pub(super) async fn admit(&self, wait: Duration) -> bool {
        let places = &self.share.handshakes;
        let permit = match places.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let waiting = &self.share.waiting;
                if waiting.fetch_add(1, Ordering::AcqRel) >= PREAUTH_WAITING {
                    waiting.fetch_sub(1, Ordering::AcqRel);
                    return false;
                }
                let got = tokio::time::timeout(wait, places.clone().acquire_owned()).await;
                waiting.fetch_sub(1, Ordering::AcqRel);
                match got {
                    Ok(Ok(permit)) => permit,
                    _ => return false,
                }
            }
        };
        *self.handshake.lock().unwrap_or_else(|e| e.into_inner()) = Some(permit);
        true
    }

    /// The tunnel has authenticated its client (or, without inner TLS, has
    /// its backend): the connection may now widen its windows for it.
    pub(super) fn establish(&self) {
        // Its handshake is over: the place goes to the next one.
        drop(
            self.handshake
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        if !self.established.swap(true, Ordering::AcqRel) {
            self.share.established.fetch_add(1, Ordering::AcqRel);
            self.share.changed.notify_one();
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if *self.established.get_mut() {
            self.share.established.fetch_sub(1, Ordering::AcqRel);
        }
        self.share.open.fetch_sub(1, Ordering::AcqRel);
        self.share.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_follow_authenticated_tunnels_up_to_the_cap() {
        assert_eq!(connection_window(0), PREAUTH_CONNECTION_WINDOW);
        assert_eq!(
            connection_window(1),
            PREAUTH_CONNECTION_WINDOW + settings::STREAM_WINDOW
        );
        assert_eq!(connection_window(1000), settings::CONNECTION_WINDOW);
    }

    #[test]
    fn a_pressed_budget_narrows_stream_windows_and_leaves_room_per_request() {
        assert_eq!(stream_window(0, true), PREAUTH_STREAM_WINDOW);
        assert_eq!(stream_window(1, false), settings::STREAM_WINDOW);
        assert_eq!(stream_window(1, true), settings::PRESSED_STREAM_WINDOW);
        assert_eq!(pressed_headroom(0), settings::PRESSED_STREAM_WINDOW);
        assert_eq!(pressed_headroom(99), 100 * settings::PRESSED_STREAM_WINDOW);
        assert_eq!(pressed_headroom(100_000), 4 * settings::CONNECTION_WINDOW);
    }

    #[test]
    fn raises_leave_a_reserve_for_first_windows_and_the_rest_is_refused() {
        let first = u64::from(PREAUTH_CONNECTION_WINDOW);
        // Four first windows' worth: a quarter (one) is kept from raises.
        let budget = Arc::new(Budget::new(first * 4));
        let mut a = Grant::first(&budget).expect("first");
        let b = Grant::first(&budget).expect("second");
        // A raise takes what is left above the reserve, no more.
        assert_eq!(
            a.resize(connection_window(4)),
            PREAUTH_CONNECTION_WINDOW * 2
        );
        // Fully raised connections do not lock new ones out...
        let c = Grant::first(&budget).expect("from the reserve");
        // ...until the reserve is spent too.
        assert!(Grant::first(&budget).is_none());
        assert_eq!(a.resize(connection_window(0)), PREAUTH_CONNECTION_WINDOW);
        let d = Grant::first(&budget).expect("after the shrink");
        assert!(Grant::first(&budget).is_none());
        drop(b);
        let e = Grant::first(&budget).expect("after a release");
        drop((a, c, d, e));
        assert_eq!(*budget.left.lock().unwrap(), budget.total());
    }
}
