//! The server's table of sessions: resumes find their session here by id.
//!
//! Detached sessions are what a flood would pile up (each holds a backend
//! connection and its buffers), so they are limited in count and in memory;
//! a session cut while the table is at its limits ends at once, as a tunnel
//! does without resume. A resume is refused (wrong proof, unknown session,
//! offset outside the replay window, already re-attached) by a lookup and
//! one HMAC, without touching the session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::carrier::Carrier;
use super::core::{Session, SessionHandle};
use super::handshake::{ResumeRequest, ResumeResponse, SessionId};
use super::limits::Budget;
pub(crate) use super::limits::{Limits, Refusal};
use super::Config;

type Table = Mutex<HashMap<SessionId, Weak<super::core::Shared>>>;

/// Removes a session from its registry when the session is dropped.
pub(crate) struct Registration {
    table: Weak<Table>,
    id: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&self.id);
        }
    }
}

/// Sessions by id, for resumes; one per server (shared by its workers).
#[derive(Clone)]
pub struct Registry {
    table: Arc<Table>,
    budget: Arc<Budget>,
    config: Config,
}

/// What a registry holds: for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Sessions in the table (attached or detached).
    pub sessions: usize,
    /// Detached sessions.
    pub detached: usize,
    /// Bytes the detached sessions hold.
    pub detached_bytes: usize,
}

impl Registry {
    /// An empty registry; every session it opens uses `config`.
    pub fn new(config: Config, limits: Limits) -> Registry {
        Registry {
            table: Arc::default(),
            budget: Arc::new(Budget {
                limits,
                detached: AtomicUsize::new(0),
                bytes: AtomicUsize::new(0),
            }),
            config,
        }
    }

    /// Whether the sessions' buffer budget is pressed (see
    /// [`super::budget::Pool::pressure`]).
    pub(crate) fn pressure(&self) -> tokio::sync::watch::Receiver<bool> {
        self.config.budget.pressure()
    }

    /// The grace period sessions get.
    pub fn grace(&self) -> Duration {
        self.config.grace
    }

    /// A new session on its first carrier, under a fresh id (for the `200`).
    pub fn open(&self, carrier: impl Carrier) -> Session {
        let mut carrier = Some(carrier);
        // `make` always succeeds here, so a session always comes back.
        self.open_with(|_| carrier.take())
            .unwrap_or_else(|| unreachable!("the carrier was given"))
    }

    /// A new session whose first carrier is made once its id is known (the
    /// `200` that carries the id is what opens an HTTP/2 stream's send
    /// half); `None` if `make` returns `None` (the stream is gone).
    pub fn open_with<C: Carrier>(
        &self,
        make: impl FnOnce(&SessionId) -> Option<C>,
    ) -> Option<Session> {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let id = loop {
            let id = SessionId::random();
            if !table.contains_key(&id) {
                break id;
            }
        };
        let carrier = make(&id)?;
        let session = Session::new(self.config.clone(), carrier, Some(id));
        table.insert(id, Arc::downgrade(&session.handle().shared));
        drop(table);
        let registration = Registration {
            table: Arc::downgrade(&self.table),
            id,
        };
        Some(session.registered(self.budget.clone(), registration))
    }

    /// Finds the session `request` names and, if every check passes,
    /// attaches `carrier` to it (true: in place of one still up). Refusals
    /// leave the session as it was.
    pub fn resume(
        &self,
        request: &ResumeRequest,
        carrier: impl Carrier,
    ) -> Result<(ResumeResponse, bool), Refusal> {
        let shared = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request.id)
            .and_then(Weak::upgrade)
            .ok_or(Refusal::UnknownSession)?;
        SessionHandle { shared }.accept_resume(carrier, request)
    }

    /// [`Registry::resume`] with the carrier made from the answer; see
    /// [`SessionHandle::accept_resume_with`].
    pub fn resume_with<C: Carrier>(
        &self,
        request: &ResumeRequest,
        make: impl FnOnce(&ResumeResponse) -> Option<C>,
    ) -> Result<super::core::Accepted, Refusal> {
        self.handle(request)?.accept_resume_with(request, make)
    }

    /// The session `request` names, if this registry holds it.
    fn handle(&self, request: &ResumeRequest) -> Result<SessionHandle, Refusal> {
        let shared = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&request.id)
            .and_then(Weak::upgrade)
            .ok_or(Refusal::UnknownSession)?;
        Ok(SessionHandle { shared })
    }

    /// Ends every session, for a server going away: attached ones are told
    /// with CLOSE, so their clients close the application's connection at
    /// once instead of resuming into a process that is gone; detached ones
    /// just end. Waits (at most `limit`) for the CLOSEs to leave.
    pub async fn close_all(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        let sessions: Vec<SessionHandle> = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter_map(Weak::upgrade)
            .map(|shared| SessionHandle { shared })
            .collect();
        for session in &sessions {
            session.close(super::frame::CLOSE_ABANDONED);
        }
        let ended = async {
            for session in &sessions {
                let mut watch = session.watch();
                let _ = watch.wait_for(|p| *p == super::Phase::Ended).await;
            }
        };
        let _ = tokio::time::timeout_at(deadline, ended).await;
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.config.settle(left).await;
    }

    /// Current totals.
    pub fn usage(&self) -> Usage {
        Usage {
            sessions: self.table.lock().unwrap_or_else(|e| e.into_inner()).len(),
            detached: self.budget.detached.load(Ordering::Acquire),
            detached_bytes: self.budget.bytes.load(Ordering::Acquire),
        }
    }
}
