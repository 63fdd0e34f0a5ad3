//! Busy polling (`--busy-poll`): a worker that wakes from sleep keeps
//! looking at its sockets for a while before it may sleep again, as Linux's
//! `net.core.busy_poll` does for a NIC's queue.
//!
//! An idle round trip through Postern wakes a sleeping thread four times
//! more than one straight to the backend: the client for the application's
//! byte, the server for it, the server for the backend's answer, the client
//! for the server's. On a VM each wake of an idle CPU is an interrupt the
//! hypervisor delivers, tens of microseconds; two plain relays in a row pay
//! the same (the bench's "raw: 2 relays" rows), so that is where Postern's
//! idle latency sat. A worker still polling when the answer comes back
//! takes it without being woken: the server catches the backend's answer,
//! the client the server's. Measured with `postern bench --quick --scenario
//! latency` on 2 cores (idle 1-byte round trip p50, alternating runs):
//! 99.6 and 125 µs without, 83.6 and 65.8 with 100 µs, 54.3 with 200 µs,
//! while two plain relays took 118–133 µs.
//!
//! The cost is CPU: after every wake from sleep a worker polls for the whole
//! window (one `epoll_wait` with a zero timeout, then `sched_yield`, so that a
//! thread woken on this CPU runs at once), so an exchange that wakes a
//! worker costs it up to the window in CPU time, and a worker woken more
//! often than that never sleeps. A busy worker is unchanged: it polls its
//! sockets between tasks anyway. So it is off by default, which suits a
//! front end that bills and scales on CPU, and worth turning on where
//! cores are spare and a round trip matters (an interactive client, a
//! database's clients).
//!
//! The mechanism uses only tokio's stable hooks: when the runtime is about
//! to park inside the window, the park hook wakes a task that does nothing
//! else, so the runtime polls its driver without blocking and comes back.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use tokio::runtime::{Builder, Runtime};

/// The longest window `--busy-poll` accepts: beyond it a woken worker would
/// spin for long enough to be plainly a mistake (Linux suggests 50 µs for
/// `busy_poll`).
pub(crate) const MAX_WINDOW: Duration = Duration::from_millis(10);

thread_local! {
    /// The end of this worker's current window, if it polls.
    static UNTIL: Cell<Option<Instant>> = const { Cell::new(None) };
    /// Set when the worker goes to sleep, so that its wake opens a window.
    static SLEEPING: Cell<bool> = const { Cell::new(false) };
    /// The task that keeps the runtime from parking.
    static KEEPER: RefCell<Option<Waker>> = const { RefCell::new(None) };
}

/// `--busy-poll`: an interval (see [`crate::duration::parse_interval`]) up
/// to [`MAX_WINDOW`].
pub(crate) fn parse_flag(s: &str) -> Result<Duration, String> {
    let d = crate::duration::parse_interval(s)?;
    if d > MAX_WINDOW {
        return Err(format!(
            "{s:?}: at most {MAX_WINDOW:?}; a worker polls this long after every wake"
        ));
    }
    Ok(d)
}

/// Builds the runtime of `builder`, polling for `window` after each wake
/// (a zero window changes nothing).
pub(crate) fn build(mut builder: Builder, window: Duration) -> std::io::Result<Runtime> {
    if window.is_zero() {
        return builder.build();
    }
    let runtime = builder
        .on_thread_park(move || before_park(window))
        .on_thread_unpark(move || after_unpark(window))
        .build()?;
    // The task the park hook wakes so that the runtime does not block.
    runtime.spawn(poll_fn(|cx| {
        KEEPER.with(|k| {
            let mut k = k.borrow_mut();
            if !k.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *k = Some(cx.waker().clone());
            }
        });
        Poll::<()>::Pending
    }));
    Ok(runtime)
}

fn before_park(window: Duration) {
    let now = Instant::now();
    // The first park of a thread opens a window as a wake does.
    let until = UNTIL.get().unwrap_or_else(|| now + window);
    if now < until {
        UNTIL.set(Some(until));
        KEEPER.with(|k| {
            if let Some(w) = &*k.borrow() {
                w.wake_by_ref();
            }
        });
        // Another thread of this CPU (the backend's, woken by what this
        // worker wrote) runs now rather than when the kernel preempts us.
        std::thread::yield_now();
    } else {
        SLEEPING.set(true);
    }
}

fn after_unpark(window: Duration) {
    if SLEEPING.replace(false) {
        UNTIL.set(Some(Instant::now() + window));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_is_an_interval_bounded_by_the_window() {
        assert_eq!(parse_flag("0"), Ok(Duration::ZERO));
        assert_eq!(parse_flag("10ms"), Ok(Duration::from_millis(10)));
        let err = parse_flag("11ms").unwrap_err();
        assert!(err.contains("at most 10ms"), "{err}");
        assert!(parse_flag("5x").is_err());
    }
}
