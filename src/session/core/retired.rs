//! [`Retired`]: a carrier that a move replaced, read to its end (the
//! frames the peer sent on it before it knew of the move still count) and
//! then let go, in the order docs/protocol.md gives ("Ending a replaced
//! carrier").

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;

use super::link::{Link, LINGER};
use super::{Cut, Shared, State};
use crate::session::out::Out;

/// A carrier that a resume replaced while it was still up (a move,
/// make-before-break). Nothing more is written on it, but it is read to its
/// end: the peer went on sending on it until it learnt of the move, and
/// those frames (DATA, ACK, FIN, CLOSE) count as if they had come on the
/// new carrier. Its END_STREAM goes at once on the side that moved (the
/// client: it tells the peer it has finished with the old carrier), and on
/// the other side only after the peer's, so the mover never sees its old
/// carrier end before the new one is answered. Let go after `LINGER` at
/// most.
pub(super) struct Retired {
    link: Link,
    mover: bool,
    read_done: bool,
    shut: bool,
    until: Pin<Box<tokio::time::Sleep>>,
}

impl Retired {
    pub(super) fn new(mut link: Link, mover: bool) -> Retired {
        // Frames staged but not written are resent on the new carrier.
        link.out = Out::default();
        Retired {
            link,
            mover,
            read_done: false,
            shut: false,
            until: Box::pin(tokio::time::sleep(LINGER)),
        }
    }

    /// Whether the peer's end of it has been read.
    pub(super) fn reading(&self) -> bool {
        !self.read_done
    }

    /// Once the session is over: what is left of it lingers like an ended
    /// carrier.
    pub(super) fn into_link(self) -> Link {
        self.link
    }
}

impl State {
    /// Reads the retired carrier, if any, and ends it. A CLOSE with a reset
    /// code or a protocol error on it is the session's (`Err`). Once it has
    /// gone, a current carrier lost meanwhile detaches the session (or, if
    /// the last frames came on the retired one, it is done).
    pub(super) fn drive_retired(
        &mut self,
        shared: &Shared,
        cx: &mut Context<'_>,
    ) -> Result<(), Cut> {
        let Some(mut old) = self.retired.take() else {
            return Ok(());
        };
        if !self.pump_retired(&mut old, cx, shared)? {
            self.retired = Some(old);
            return Ok(());
        }
        // Lost, not yet detached: the detach waited for this end.
        if self.link.is_none() && self.grace.is_none() {
            self.detach(shared);
        }
        Ok(())
    }

    /// `true` once both ends of `old` are done (or its time is up).
    fn pump_retired(
        &mut self,
        old: &mut Retired,
        cx: &mut Context<'_>,
        shared: &Shared,
    ) -> Result<bool, Cut> {
        if old.until.as_mut().poll(cx).is_ready() {
            return Ok(true);
        }
        if !old.read_done {
            match self.pump_read(&mut old.link, &shared.config, cx) {
                Ok(()) => {}
                // Its end, or a failure: either way nothing more comes on it.
                Err(Cut::Lost) => old.read_done = true,
                Err(other) => return Err(other),
            }
        }
        if !old.shut && (old.read_done || old.mover) {
            match Pin::new(&mut old.link.io).poll_shutdown(cx) {
                Poll::Pending => return Ok(false),
                Poll::Ready(_) => old.shut = true,
            }
        }
        Ok(old.read_done && old.shut)
    }
}
