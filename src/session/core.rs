//! [`Session`]: one application byte stream over any number of carriers:
//! the state machine here, its control handle's methods in `handle`, the
//! side facing one carrier (frames in, frames out, lingering after CLOSE)
//! in `link`, what arriving frames do in `receive`, a carrier that a move
//! replaced in `retired`, the application's `AsyncRead`/`AsyncWrite` in
//! `app`, and a session's life from `new` to its last CLOSE in `life`.
//!
//! The application side sees `AsyncRead + AsyncWrite`. Underneath, bytes
//! travel as [`Frame`]s over the current carrier; written bytes stay in the
//! [`Replay`] buffer until the peer acknowledges them, and received bytes
//! wait in the inbox until the application reads them. When the carrier
//! fails, the session is *detached*: reads and writes pend (they do not
//! fail) until a new carrier is attached or the grace period ends.
//!
//! There is no task of its own: whichever application call polls the
//! session drives the carrier, with a waker that wakes both the reading and
//! the writing side, so a split session (reader and writer on different
//! tasks) makes progress either way.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::watch;

use super::budget::Drawn;
use super::carrier::Carrier;
use super::frame::{self, CLOSE_ABANDONED, CLOSE_DONE, CLOSE_PROTOCOL};
use super::handshake::{ResumeKey, ResumeResponse, SessionId};
use super::limits::{Budget, Refusal};
use super::replay::Replay;
use super::wake::{Side, Wakers};
use super::{Config, Phase, Stats};

mod app;
mod handle;
mod life;
mod link;
mod receive;
mod retired;

#[cfg(test)]
pub(crate) use link::ACK_DELAY;
use link::{flushed, linger, Link};
use retired::Retired;

/// An accepted resume made with `accept_resume_with`: the signed answer,
/// and `None` if the carrier could not be made, else whether it replaced a
/// carrier that was still up (which the session now reads to its end).
pub(super) type Accepted = (ResumeResponse, Option<bool>);

/// The application's side of a session.
pub struct Session {
    shared: Arc<Shared>,
    /// Whatever must go when the session does (its registry entry).
    _registration: Option<Box<dyn Send + Sync>>,
}

/// A handle for attaching carriers, keying and watching a session, held by
/// whoever reconnects (the client) or accepts resumes (the registry).
#[derive(Clone)]
pub struct SessionHandle {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    config: Config,
    state: Mutex<State>,
    wakers: Arc<Wakers>,
    phase: watch::Sender<Phase>,
    /// Told when the id becomes known (a client learns it from the `200`).
    id_known: tokio::sync::Notify,
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Both directions finished and acknowledged.
    Done,
    /// The peer sent CLOSE with this code.
    PeerReset(u32),
    /// We reset it (the application connection was reset).
    LocalReset,
    /// The peer broke the protocol.
    Protocol(String),
    /// Detached for the whole grace period.
    Expired,
    /// Cut with no way to resume (no grace, the detached limits, or the
    /// resumer gave up).
    Abandoned(String),
}

/// Why the carrier loop stopped.
enum Cut {
    Lost,
    Protocol(String),
    Reset(u32),
}

struct State {
    id: Option<SessionId>,
    key: Option<ResumeKey>,
    link: Option<Link>,
    /// The carrier a move replaced, read until its end.
    retired: Option<Retired>,
    generation: u64,
    end: Option<End>,
    grace: Option<Pin<Box<tokio::time::Sleep>>>,
    // Sending.
    replay: Replay,
    fin_queued: bool,
    close_queued: Option<u32>,
    /// Units the peer has acknowledged (bytes, plus one for our FIN).
    peer_acked: u64,
    // Receiving.
    inbox: VecDeque<Bytes>,
    inbox_len: usize,
    received: u64,
    consumed: u64,
    peer_fin: bool,
    eof_read: bool,
    peer_done: bool,
    /// The application reads no more (it is finishing): what arrives counts
    /// as consumed, so the peer's data and FIN are acknowledged. A TLS layer
    /// above stops reading at its close_notify, before the session's FIN.
    draining: bool,
    /// Bytes read from the carrier so far while the peer is not yet
    /// authenticated (no key), or `None` once reads are not capped: see
    /// [`super::PREAUTH_READ`].
    preauth_read: Option<usize>,
    // Accounting while detached.
    budget: Option<Arc<Budget>>,
    charged: Option<usize>,
    /// What the replay buffer and the inbox have drawn from the budget.
    drawn_out: Drawn,
    drawn_in: Drawn,
    stats: Stats,
    wake_read: bool,
    wake_write: bool,
    /// A flush is waiting for the carrier to take everything written.
    flush_waiting: bool,
}

impl State {
    /// Units received, as a resume names them: bytes, plus one for a FIN.
    fn received_units(&self) -> u64 {
        self.received + u64::from(self.peer_fin)
    }

    /// What the ACK says: consumed bytes, plus one once the FIN was read.
    fn consumed_units(&self) -> u64 {
        self.consumed + u64::from(self.eof_read)
    }

    fn fin_acked(&self) -> bool {
        self.fin_queued && self.peer_acked > self.replay.end()
    }

    /// Everything delivered both ways: nothing a resume could add.
    fn complete(&self) -> bool {
        self.peer_done || (self.fin_acked() && self.peer_fin)
    }

    /// Memory held for the session: what a detached one is charged.
    fn memory(&self) -> usize {
        self.replay.charge() + self.inbox_memory()
    }

    /// Whether the inbox may take one more frame from the carrier, drawing
    /// on the budget if it must; if not, `cx` is woken when the budget frees
    /// bytes (or the application's reads make room, as they always do).
    fn inbox_has_room(&mut self, config: &Config, cx: &Context<'_>) -> bool {
        let held = self.inbox_memory();
        self.draining
            || self
                .drawn_in
                .grow(&config.budget, held, frame::MAX_FRAME, cx.waker())
    }

    fn inbox_memory(&self) -> usize {
        self.inbox_len + self.inbox.len() * super::replay::CHUNK_OVERHEAD
    }

    /// Gives the budget back what the buffers no longer hold (the replay
    /// buffer's whole draw once the session has ended: nothing is resent;
    /// what is left unread stays charged until the application goes).
    fn trim(&mut self, config: &Config) {
        if self.end.is_some() {
            self.drawn_out.release(&config.budget);
        } else {
            self.drawn_out.trim(&config.budget, self.replay.charge());
        }
        let held = self.inbox_memory();
        self.drawn_in.trim(&config.budget, held);
    }

    fn error(&self) -> Option<io::Error> {
        use io::ErrorKind::*;
        let (kind, text) = match self.end.as_ref()? {
            End::Done => return None,
            End::PeerReset(code) => (
                ConnectionReset,
                format!("session reset by peer (code {code})"),
            ),
            End::LocalReset => (ConnectionReset, "session reset".into()),
            End::Protocol(why) => (InvalidData, format!("session protocol error: {why}")),
            End::Expired => (
                TimedOut,
                "session not resumed within the grace period".into(),
            ),
            End::Abandoned(why) => (ConnectionAborted, why.clone()),
        };
        Some(io::Error::new(kind, text))
    }

    fn finish(&mut self, end: End, config: &Config, phase: &watch::Sender<Phase>) {
        if self.end.is_none() {
            // After a CLOSE either way the carrier ends cleanly; dropping it
            // at once would reset the stream, and HTTP/2 discards what a
            // reset stream still had queued: the CLOSE itself.
            let closed = matches!(end, End::Done | End::PeerReset(_) | End::Protocol(_))
                || self.link.as_ref().is_some_and(|l| l.close_sent);
            if let (true, Some(link)) = (closed, self.link.take()) {
                linger(link, &config.lingering);
            }
            if let Some(old) = self.retired.take() {
                linger(old.into_link(), &config.lingering);
            }
            self.end = Some(end);
            self.link = None;
            self.grace = None;
            self.release();
            self.trim(config);
            phase.send_replace(Phase::Ended);
            self.wake_read = true;
            self.wake_write = true;
        }
    }

    fn release(&mut self) {
        if let (Some(budget), Some(bytes)) = (&self.budget, self.charged.take()) {
            budget.release(bytes);
        }
    }

    /// Polls the carrier both ways and the grace timer.
    fn drive(&mut self, shared: &Shared, cx: &mut Context<'_>, read: bool) {
        if self.end.is_some() {
            return;
        }
        // First what the peer sent before it knew of a move.
        if let Err(cut) = self.drive_retired(shared, cx) {
            return self.cut(cut, shared);
        }
        if let Some(mut link) = self.link.take() {
            let pumped = if read {
                self.pump_read(&mut link, &shared.config, cx)
            } else {
                Ok(())
            };
            match pumped.and_then(|()| self.pump_write(&mut link, &shared.config, cx)) {
                Ok(()) if link.close_sent && link.out.is_empty() && !link.unflushed => {
                    // Our CLOSE is on its way: the session is over.
                    let end = match self.close_queued {
                        Some(CLOSE_DONE) => End::Done,
                        Some(frame::CLOSE_RESET) => End::LocalReset,
                        _ => End::Abandoned("session closed".into()),
                    };
                    self.link = Some(link);
                    self.finish(end, &shared.config, &shared.phase);
                }
                Ok(()) => {
                    if self.flush_waiting && flushed(&link, &self.replay) {
                        self.flush_waiting = false;
                        self.wake_write = true;
                    }
                    self.link = Some(link);
                }
                Err(cut) => {
                    // A lost carrier goes; one that said why stays to linger,
                    // and so does one the peer ended after its CLOSE 0.
                    if !matches!(cut, Cut::Lost) || self.peer_done {
                        self.link = Some(link);
                    }
                    self.cut(cut, shared);
                }
            }
        }
        if self.link.is_none() && self.end.is_none() {
            if let Some(grace) = &mut self.grace {
                if grace.as_mut().poll(cx).is_ready() {
                    self.finish(End::Expired, &shared.config, &shared.phase);
                }
            }
        }
    }

    /// What a carrier's failure does to the session (a reset or protocol
    /// error on either carrier ends it; a lost current carrier detaches it).
    fn cut(&mut self, cut: Cut, shared: &Shared) {
        match cut {
            Cut::Lost if self.peer_done => self.answer_close(shared),
            // A retired carrier may still bring the frames that end the
            // session: the detach waits for its end (`drive_retired`).
            Cut::Lost if self.retired.as_ref().is_some_and(Retired::reading) => {}
            Cut::Lost => self.detach(shared),
            Cut::Reset(code) => self.finish(End::PeerReset(code), &shared.config, &shared.phase),
            Cut::Protocol(why) => {
                // Tell the peer why: the lingering carrier sends it.
                if let Some(link) = &mut self.link {
                    frame::put_close(link.out.ctl(), CLOSE_PROTOCOL);
                }
                self.finish(End::Protocol(why), &shared.config, &shared.phase);
            }
        }
    }

    /// The peer's CLOSE 0 came with the end of its carrier (its
    /// END_STREAM in the same read): answer as any receiver of CLOSE 0
    /// does, with ours, then END_STREAM while the carrier lingers. Dropping
    /// the carrier instead would reset the stream.
    fn answer_close(&mut self, shared: &Shared) {
        if let Some(link) = self.link.as_mut().filter(|l| !l.close_sent) {
            frame::put_close(link.out.ctl(), CLOSE_DONE);
            link.close_sent = true;
        }
        self.close_queued.get_or_insert(CLOSE_DONE);
        self.finish(End::Done, &shared.config, &shared.phase);
    }

    fn detach(&mut self, shared: &Shared) {
        if self.complete() {
            return self.finish(End::Done, &shared.config, &shared.phase);
        }
        if shared.config.grace.is_zero() || self.id.is_none() || self.key.is_none() {
            return self.finish(
                End::Abandoned("carrier lost before the session could resume".into()),
                &shared.config,
                &shared.phase,
            );
        }
        if let Some(budget) = &self.budget {
            let bytes = self.memory();
            if !budget.admit(bytes) {
                return self.finish(
                    End::Abandoned(
                        "carrier lost; too many detached sessions to keep this one".into(),
                    ),
                    &shared.config,
                    &shared.phase,
                );
            }
            self.charged = Some(bytes);
        }
        self.grace = Some(Box::pin(tokio::time::sleep(shared.config.grace)));
        self.stats.cuts += 1;
        shared.phase.send_replace(Phase::Detached);
        self.wake_read = true;
        self.wake_write = true;
    }

    /// Checks a resume's offset against what the replay buffer holds.
    fn check_offset(&self, received: u64) -> Result<(), Refusal> {
        let (base, end) = (
            self.replay.base(),
            self.replay.end() + u64::from(self.fin_queued),
        );
        if received < base || received > end {
            return Err(Refusal::OffsetOutsideWindow {
                received,
                base,
                end,
            });
        }
        Ok(())
    }

    /// Puts `io` in place of the current carrier (if any), which retires
    /// (`mover`: this side asked for the move); sending restarts at what the
    /// peer says it has received. Whether a carrier that was up was replaced.
    fn attach(
        &mut self,
        shared: &Shared,
        io: Box<dyn Carrier>,
        peer_received: u64,
        mover: bool,
    ) -> bool {
        let end = self.replay.end();
        let sent = peer_received.min(end);
        self.stats.resumes += 1;
        self.stats.resent += end - sent;
        self.generation += 1;
        self.grace = None;
        self.release();
        let old = self
            .link
            .replace(Link::new(io, sent, peer_received > end, None));
        shared.phase.send_replace(Phase::Attached {
            generation: self.generation,
        });
        self.wake_read = true;
        self.wake_write = true;
        match old {
            Some(link) => {
                // An older retired carrier still unread is let go (reset).
                self.retired = Some(Retired::new(link, mover));
                true
            }
            // Attached while detached, or while a lost carrier's detach
            // waits for the retired one: that one is still read.
            None => false,
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state with the carrier driven first, under a context
    /// whose waker wakes both application sides, then wakes the side that
    /// `f`'s caller is not (it returns or re-registers by itself).
    fn with<T>(&self, side: Side, f: impl FnOnce(&mut State, &Shared, &mut Context<'_>) -> T) -> T {
        let waker = Waker::from(self.wakers.clone());
        let mut cx = Context::from_waker(&waker);
        let mut state = self.lock();
        state.drive(self, &mut cx, true);
        let out = f(&mut state, self, &mut cx);
        state.trim(&self.config);
        let (read, write) = (
            std::mem::take(&mut state.wake_read),
            std::mem::take(&mut state.wake_write),
        );
        drop(state);
        if read && side != Side::Read {
            Wakers::wake(&self.wakers.read);
        }
        if write && side != Side::Write {
            Wakers::wake(&self.wakers.write);
        }
        out
    }

    /// A change from outside the application's calls (attach, key): both
    /// sides are woken to drive the session.
    fn wake_all(&self) {
        self.wakers.wake_everyone();
    }
}
