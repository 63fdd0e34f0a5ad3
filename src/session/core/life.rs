//! A session's life: made on its first carrier (or registered with the
//! server's table), then ended cleanly (`finish`), as a reset, or given up;
//! dropping it lets the carrier linger until its CLOSE is out.

use super::*;

impl Session {
    /// A new session on its first carrier. The client does not know the id
    /// yet (it comes in the `200`); the key comes after the inner handshake.
    pub fn new(config: Config, carrier: impl Carrier, id: Option<SessionId>) -> Session {
        let replay = Replay::new(config.window);
        let state = State {
            id,
            key: None,
            link: Some(Link::new(Box::new(carrier), 0, false, Some(0))),
            retired: None,
            generation: 1,
            end: None,
            grace: None,
            replay,
            fin_queued: false,
            close_queued: None,
            peer_acked: 0,
            inbox: VecDeque::new(),
            inbox_len: 0,
            received: 0,
            consumed: 0,
            peer_fin: false,
            eof_read: false,
            peer_done: false,
            draining: false,
            preauth_read: None,
            budget: None,
            charged: None,
            drawn_out: Drawn::default(),
            drawn_in: Drawn::default(),
            stats: Stats::default(),
            wake_read: false,
            wake_write: false,
            flush_waiting: false,
        };
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            wakers: Arc::new(Wakers::default()),
            phase: watch::Sender::new(Phase::Attached { generation: 1 }),
            id_known: tokio::sync::Notify::new(),
        });
        Session {
            shared,
            _registration: None,
        }
    }

    pub(crate) fn registered(
        mut self,
        budget: Arc<Budget>,
        registration: impl Send + Sync + 'static,
    ) -> Session {
        {
            let mut st = self.shared.lock();
            st.budget = Some(budget);
            // A server's session serves whoever opened the stream: until
            // its key proves the peer, it reads no more than a handshake.
            if st.key.is_none() {
                st.preauth_read = Some(0);
            }
        }
        self._registration = Some(Box::new(registration));
        self
    }

    /// The control handle.
    pub fn handle(&self) -> SessionHandle {
        SessionHandle {
            shared: self.shared.clone(),
        }
    }

    /// Ends the session as a reset: the peer's application reads and writes
    /// fail with `ConnectionReset` (what an RST is for a TCP connection).
    /// Sent on the current carrier if there is one; a detached session just
    /// ends, and the peer's resume then finds it gone.
    pub async fn reset(&mut self) {
        self.close_with(frame::CLOSE_RESET).await;
        let shared = self.shared.clone();
        shared.with(Side::Read, |st, sh, _| {
            st.finish(End::LocalReset, &sh.config, &sh.phase)
        });
    }

    /// After both directions have ended (the application wrote its FIN and
    /// read the peer's), waits until the peer has acknowledged everything,
    /// then tells it the session is over, so that neither side tries to
    /// resume a finished session. Callers bound it with a timeout.
    pub async fn finish(&mut self) {
        let shared = self.shared.clone();
        shared.with(Side::Read, |st, _, _| st.drain());
        std::future::poll_fn(|cx| {
            // Both slots: an ACK wakes writers, a FIN readers, and either
            // may complete the session.
            Wakers::set(&shared.wakers.read, cx.waker());
            Wakers::set(&shared.wakers.write, cx.waker());
            shared.with(Side::Driver, |st, _, _| {
                if st.end.is_some() || st.complete() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        })
        .await;
        self.close_with(CLOSE_DONE).await;
        shared.with(Side::Read, |st, sh, _| {
            st.finish(End::Done, &sh.config, &sh.phase)
        });
    }

    /// Queues CLOSE `code` and waits until the carrier took it (or is gone).
    async fn close_with(&mut self, code: u32) {
        let shared = self.shared.clone();
        std::future::poll_fn(|cx| {
            Wakers::set(&shared.wakers.read, cx.waker());
            shared.with(Side::Read, |st, sh, cx| {
                st.close_queued.get_or_insert(code);
                st.drive(sh, cx, false);
                match &st.link {
                    Some(link) if !(link.close_sent && link.out.is_empty()) && st.end.is_none() => {
                        Poll::Pending
                    }
                    _ => Poll::Ready(()),
                }
            })
        })
        .await;
    }
}

impl Drop for Session {
    /// An application that lets go of a live session abandons it: the peer
    /// is told with CLOSE (after whatever is already staged), so it ends its
    /// side at once instead of waiting out the grace period.
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut st = shared.lock();
        if st.end.is_none() {
            if let Some(link) = st.link.as_mut().filter(|l| !l.close_sent) {
                frame::put_close(link.out.ctl(), CLOSE_ABANDONED);
                link.close_sent = true;
            }
        }
        st.finish(
            End::Abandoned("session dropped".into()),
            &shared.config,
            &shared.phase,
        );
        // Nobody reads what is left: its share goes back now, not when the
        // last handle does.
        st.inbox.clear();
        st.inbox_len = 0;
        st.drawn_in.release(&shared.config.budget);
    }
}
