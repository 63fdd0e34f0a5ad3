//! Who is woken when a session can progress: the application's reading
//! side, its writing side, and the driver task that runs beside them.

use std::sync::{Arc, Mutex};
use std::task::{Wake, Waker};

#[derive(Default)]
pub(super) struct Wakers {
    pub(super) read: Mutex<Option<Waker>>,
    pub(super) write: Mutex<Option<Waker>>,
    pub(super) driver: Mutex<Option<Waker>>,
}

/// Which caller drives the session: it is not woken for its own progress.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Read,
    Write,
    Driver,
}

impl Wakers {
    pub(super) fn set(slot: &Mutex<Option<Waker>>, waker: &Waker) {
        let mut slot = slot.lock().unwrap_or_else(|e| e.into_inner());
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    pub(super) fn wake(slot: &Mutex<Option<Waker>>) {
        if let Some(w) = slot.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            w.wake_by_ref();
        }
    }
}

impl Wake for Wakers {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    /// The carrier's readiness: the driver, when there is one, drives the
    /// session and wakes only the application side that can now progress
    /// (one task polled per event instead of three); without one, both
    /// application sides drive it.
    fn wake_by_ref(self: &Arc<Self>) {
        let driver = self.driver.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = driver.as_ref() {
            w.wake_by_ref();
            return;
        }
        drop(driver);
        Wakers::wake(&self.read);
        Wakers::wake(&self.write);
    }
}

impl Wakers {
    /// Everyone: for changes from outside the application's calls.
    pub(super) fn wake_everyone(&self) {
        Wakers::wake(&self.read);
        Wakers::wake(&self.write);
        Wakers::wake(&self.driver);
    }
}
