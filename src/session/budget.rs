//! The process-wide budget of what sessions hold (replay buffers and
//! inboxes, attached or detached), shared by every session of a server or
//! a client.
//!
//! Each session direction holds [`FLOOR`] without asking, so no session is
//! ever stopped outright by its neighbours (an ACK always has room to
//! arrive, a write always has room for a frame); everything above the floor
//! is drawn in [`CHUNK`]s. A writer that cannot draw waits; a carrier reader
//! that cannot draw stops taking frames, and HTTP/2 flow control then holds
//! the peer back. Whoever frees bytes wakes every waiter and the first to
//! poll wins: no queue, so no fairness above the floor, but a session that
//! waits keeps moving at its floor's pace meanwhile.
//!
//! Readers that stop taking frames leave them in their HTTP/2 streams, and
//! those frames hold the connection's window, which every stream of the
//! connection shares: a few stalled streams would stop the rest, new
//! tunnels' handshakes included. So the pool also says when it is
//! [`Pool::pressure`]d (a draw failed; until a quarter is free again), and
//! each HTTP/2 connection then narrows its stream windows and widens its
//! connection window ([`crate::transport::settings::Pressure`]).

use std::sync::Mutex;
use std::task::Waker;

use super::frame::MAX_FRAME;

/// What a direction of a session may hold without drawing: two frames, so
/// the peer's ACKs and one frame of data always fit.
pub(crate) const FLOOR: usize = 2 * MAX_FRAME;

/// How much a session draws (and gives back) at a time: few enough trips
/// to the lock on a bulk transfer, small next to any useful budget.
pub(crate) const CHUNK: usize = 256 * 1024;

/// A byte budget shared by sessions.
#[derive(Debug)]
pub struct Pool {
    state: Mutex<PoolState>,
    total: usize,
    /// Whether a draw has failed since a quarter of the pool was last free.
    pressed: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug)]
struct PoolState {
    left: usize,
    waiting: Vec<Waker>,
}

impl Pool {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Pool {
        Pool {
            state: Mutex::new(PoolState {
                left: bytes,
                waiting: Vec::new(),
            }),
            total: bytes,
            pressed: tokio::sync::watch::Sender::new(false),
        }
    }

    /// No bound (tools and tests that run one session).
    pub fn unbounded() -> Pool {
        Pool::new(usize::MAX)
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Whether the pool is pressed: true from a failed draw until a quarter
    /// of it is free again.
    pub(crate) fn pressure(&self) -> tokio::sync::watch::Receiver<bool> {
        self.pressed.subscribe()
    }

    /// Bytes not drawn now.
    pub fn left(&self) -> usize {
        self.lock().left
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Draws `bytes`, or registers `waker` for the next release and draws
    /// nothing.
    pub(crate) fn draw(&self, bytes: usize, waker: &Waker) -> bool {
        let mut st = self.lock();
        if st.left >= bytes {
            st.left -= bytes;
            return true;
        }
        if !st.waiting.iter().any(|w| w.will_wake(waker)) {
            st.waiting.push(waker.clone());
        }
        self.pressed
            .send_if_modified(|p| !std::mem::replace(p, true));
        false
    }

    /// Gives back `bytes` and wakes whoever waits.
    pub(crate) fn give(&self, bytes: usize) {
        if bytes == 0 {
            return;
        }
        let waiting = {
            let mut st = self.lock();
            st.left = st.left.saturating_add(bytes).min(self.total);
            if st.left >= self.total / 4 {
                self.pressed.send_if_modified(std::mem::take);
            }
            std::mem::take(&mut st.waiting)
        };
        for w in waiting {
            w.wake();
        }
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::unbounded()
    }
}

/// One direction's draw from the pool.
#[derive(Debug, Default)]
pub(crate) struct Drawn(usize);

impl Drawn {
    /// What the direction may hold now.
    pub(crate) fn limit(&self) -> usize {
        FLOOR + self.0
    }

    /// Makes room for `held + want` if the pool allows (a chunk at a time);
    /// false means full, with `waker` told when the pool frees bytes.
    pub(crate) fn grow(&mut self, pool: &Pool, held: usize, want: usize, waker: &Waker) -> bool {
        while held + want > self.limit() {
            if !pool.draw(CHUNK, waker) {
                return false;
            }
            self.0 += CHUNK;
        }
        true
    }

    /// Gives back what `held` no longer needs, keeping a chunk of slack so
    /// a steady flow does not draw and give on every frame.
    pub(crate) fn trim(&mut self, pool: &Pool, held: usize) {
        let need = held.saturating_sub(FLOOR).div_ceil(CHUNK) * CHUNK + CHUNK;
        if self.0 > need {
            pool.give(self.0 - need);
            self.0 = need;
        }
    }

    /// Gives back everything (the session ended).
    pub(crate) fn release(&mut self, pool: &Pool) {
        pool.give(std::mem::take(&mut self.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noop;
    impl std::task::Wake for Noop {
        fn wake(self: std::sync::Arc<Self>) {}
    }

    #[test]
    fn draws_above_the_floor_wait_for_releases() {
        let pool = Pool::new(2 * CHUNK);
        let waker = &Waker::from(std::sync::Arc::new(Noop));
        let (mut a, mut b) = (Drawn::default(), Drawn::default());
        assert!(a.grow(&pool, 0, FLOOR, waker), "the floor is free");
        assert!(a.grow(&pool, FLOOR, 2 * CHUNK, waker));
        assert_eq!(pool.left(), 0);
        let pressure = pool.pressure();
        assert!(!*pressure.borrow(), "no draw has failed yet");
        assert!(!b.grow(&pool, FLOOR, 1, waker), "the budget is spent");
        assert!(*pressure.borrow(), "a failed draw presses the pool");
        a.trim(&pool, 0);
        assert!(!*pressure.borrow(), "a quarter of it is free again");
        assert!(b.grow(&pool, FLOOR, 1, waker), "after a trim");
        a.release(&pool);
        b.release(&pool);
        assert_eq!(pool.left(), pool.total());
    }
}
