//! [`SessionHandle`]: attaching carriers, keying and watching a session
//! from outside the application's reads and writes (the client's reconnect
//! loop, the server's registry and the task that drives the carrier).

use std::task::Poll;

use tokio::sync::watch;

use super::{Accepted, End, Phase, SessionHandle, Side, Stats, Wakers};
use crate::session::carrier::Carrier;
use crate::session::handshake::{ResumeKey, ResumeRequest, ResumeResponse, SessionId};
use crate::session::limits::Refusal;

impl SessionHandle {
    /// Drives the carrier when the application does not (it may be busy
    /// elsewhere, or only writing): reads frames into the inbox (at most the
    /// window), sends acknowledgements, notices a cut and the end of the
    /// grace period. Returns when the session ends. The side that resumes
    /// runs it beside its reconnect loop, so a cut is seen at once.
    pub async fn drive(&self) {
        std::future::poll_fn(|cx| {
            Wakers::set(&self.shared.wakers.driver, cx.waker());
            self.shared.with(Side::Driver, |st, _, _| {
                if st.end.is_some() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        })
        .await
    }

    /// The session's id, once known.
    pub fn id(&self) -> Option<SessionId> {
        self.shared.lock().id
    }

    /// Sets the id the server named in its `200` (client side); an id that
    /// is already set stays.
    pub fn set_id(&self, id: SessionId) {
        self.shared.lock().id.get_or_insert(id);
        self.shared.id_known.notify_waiters();
    }

    /// The session's id, waiting until it is known.
    pub async fn known_id(&self) -> SessionId {
        loop {
            let notified = self.shared.id_known.notified();
            tokio::pin!(notified);
            // Registered before the check, so a set_id in between is seen.
            notified.as_mut().enable();
            if let Some(id) = self.id() {
                return id;
            }
            notified.await;
        }
    }

    /// Installs the resume key: after the inner handshake (exported), or
    /// from the plain tunnel's `200`. Until then a cut ends the session.
    pub fn set_key(&self, key: ResumeKey) {
        self.shared.lock().key = Some(key);
        self.authenticated();
    }

    /// The peer is authenticated (the inner handshake is done, keyed or
    /// not): the carrier is read up to the window from here on.
    pub fn authenticated(&self) {
        let lifted = self.shared.lock().preauth_read.take().is_some();
        if lifted {
            // Reads stopped at the cap wait for nothing else to start again.
            self.shared.wake_all();
        }
    }

    /// Attached, detached or ended; `changed()` wakes on each transition.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.shared.phase.subscribe()
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.shared.phase.borrow()
    }

    /// Resumes and bytes resent so far.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats
    }

    /// The client's resume request for a new carrier, if the session can
    /// resume (id and key known, not ended).
    pub fn resume_request(&self) -> Option<ResumeRequest> {
        let st = self.shared.lock();
        if st.end.is_some() {
            return None;
        }
        let (id, key) = (st.id?, st.key.as_ref()?);
        Some(ResumeRequest::new(
            key,
            id,
            st.generation,
            st.received_units(),
        ))
    }

    /// Client side: the server accepted `request` on `carrier` and answered
    /// `response`; checks the server's proof and offset, then attaches.
    /// Whether it replaced a carrier that was still up: the session ends
    /// that one itself (our END_STREAM at once, then it reads the peer's
    /// last frames on it).
    pub fn complete_resume(
        &self,
        carrier: impl Carrier,
        request: &ResumeRequest,
        response: &ResumeResponse,
    ) -> Result<bool, Refusal> {
        let shared = &self.shared;
        let replaced = {
            let mut st = shared.lock();
            let key = st.key.as_ref().ok_or(Refusal::UnknownSession)?;
            if st.end.is_some() || st.id != Some(request.id) {
                return Err(Refusal::UnknownSession);
            }
            if st.generation != request.generation {
                return Err(Refusal::AlreadyAttached {
                    current: st.generation,
                    named: request.generation,
                });
            }
            if !response.verify(key, &request.id, request.generation + 1) {
                return Err(Refusal::WrongProof);
            }
            st.check_offset(response.received)?;
            st.attach(shared, Box::new(carrier), response.received, true)
        };
        shared.wake_all();
        Ok(replaced)
    }

    /// Ends the session from outside the application's calls: CLOSE `code`
    /// on the current carrier (the session ends once it is sent), or at once
    /// when detached.
    pub fn close(&self, code: u32) {
        let shared = &self.shared;
        {
            let mut st = shared.lock();
            if st.link.is_some() {
                st.close_queued.get_or_insert(code);
            } else {
                st.finish(
                    End::Abandoned("session closed while detached".into()),
                    &shared.config,
                    &shared.phase,
                );
            }
        }
        shared.wake_all();
    }

    /// Ends the session because whoever resumes it gave up (`why` is what
    /// the application's reads and writes fail with).
    pub fn abandon(&self, why: String) {
        let shared = &self.shared;
        shared
            .lock()
            .finish(End::Abandoned(why), &shared.config, &shared.phase);
        shared.wake_all();
    }

    /// Server side: checks `request` (proof, generation, offset) without
    /// touching the session, then attaches `carrier` and returns the signed
    /// answer and whether it replaced a carrier that was still up. The
    /// session reads that one to its end and ends it after the peer's
    /// END_STREAM (the client's frames sent before it knew of the move
    /// still count).
    pub fn accept_resume(
        &self,
        carrier: impl Carrier,
        request: &ResumeRequest,
    ) -> Result<(ResumeResponse, bool), Refusal> {
        let mut carrier = Some(carrier);
        let (response, replaced) = self.accept_resume_with(request, |_| carrier.take())?;
        Ok((response, replaced.unwrap_or(false)))
    }

    /// [`SessionHandle::accept_resume`] for a carrier that exists only once
    /// the answer is known (an HTTP/2 stream's send half comes with its
    /// response headers): `make` runs under the session's lock with the
    /// signed answer, so no other resume can slip in between. `None` from
    /// `make` (the stream is already gone) attaches nothing: the outer
    /// `Option` of the result is then `None`.
    pub fn accept_resume_with<C: Carrier>(
        &self,
        request: &ResumeRequest,
        make: impl FnOnce(&ResumeResponse) -> Option<C>,
    ) -> Result<Accepted, Refusal> {
        let shared = &self.shared;
        let answer = {
            let mut st = shared.lock();
            let (Some(key), None) = (st.key.clone(), &st.end) else {
                return Err(Refusal::UnknownSession);
            };
            if st.id != Some(request.id) {
                return Err(Refusal::UnknownSession);
            }
            if !request.verify(&key) {
                return Err(Refusal::WrongProof);
            }
            if st.generation != request.generation {
                return Err(Refusal::AlreadyAttached {
                    current: st.generation,
                    named: request.generation,
                });
            }
            st.check_offset(request.received)?;
            let response =
                ResumeResponse::new(&key, &request.id, st.generation + 1, st.received_units());
            let replaced = make(&response)
                .map(|carrier| st.attach(shared, Box::new(carrier), request.received, false));
            (response, replaced)
        };
        shared.wake_all();
        Ok(answer)
    }
}
