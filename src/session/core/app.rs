//! The application's side of a session: `AsyncRead` and `AsyncWrite`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{flushed, Session, Side, Wakers};
use crate::session::budget::CHUNK;
use crate::session::replay::CHUNK_OVERHEAD;

impl AsyncRead for Session {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Wakers::set(&self.shared.wakers.read, cx.waker());
        self.shared.with(Side::Read, |st, sh, cx| {
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            if st.inbox_len > 0 {
                while buf.remaining() > 0 {
                    let Some(front) = st.inbox.front_mut() else {
                        break;
                    };
                    let n = front.len().min(buf.remaining());
                    buf.put_slice(&front[..n]);
                    front.advance(n);
                    if front.is_empty() {
                        st.inbox.pop_front();
                    }
                    st.inbox_len -= n;
                    st.consumed += n as u64;
                }
                st.drive(sh, cx, false);
                return Poll::Ready(Ok(()));
            }
            if st.peer_fin {
                if !st.eof_read {
                    st.eof_read = true;
                    st.drive(sh, cx, false);
                }
                return Poll::Ready(Ok(()));
            }
            if st.end.is_some() {
                return Poll::Ready(Ok(()));
            }
            Poll::Pending
        })
    }
}

impl AsyncWrite for Session {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Wakers::set(&self.shared.wakers.write, cx.waker());
        self.shared.with(Side::Write, |st, sh, cx| {
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            if st.fin_queued || st.end.is_some() || st.peer_done {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "session: write after shutdown",
                )));
            }
            if bufs.iter().all(|b| b.is_empty()) {
                return Poll::Ready(Ok(0));
            }
            // Detached, nothing is taken: a detached session's memory stays
            // what it was charged when it detached.
            if st.link.is_none() {
                return Poll::Pending;
            }
            // Above its floor the replay buffer grows only as the budget
            // allows; a full one makes the writer wait for a release.
            let want = bufs.iter().map(|b| b.len()).sum::<usize>().min(CHUNK) + CHUNK_OVERHEAD;
            let held = st.replay.charge();
            st.drawn_out.grow(&sh.config.budget, held, want, cx.waker());
            let mut room = st.drawn_out.limit().saturating_sub(held + CHUNK_OVERHEAD);
            let mut n = 0;
            for b in bufs {
                let part = &b[..b.len().min(room)];
                let took = st.replay.push(part);
                n += took;
                room -= took;
                if took < b.len() {
                    break;
                }
            }
            if n == 0 {
                return Poll::Pending;
            }
            st.drive(sh, cx, false);
            Poll::Ready(Ok(n))
        })
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Ready once every byte written has been handed to a carrier.
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Wakers::set(&self.shared.wakers.write, cx.waker());
        self.shared.with(Side::Write, |st, _, _| {
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            match &st.link {
                _ if st.end.is_some() => Poll::Ready(Ok(())),
                Some(l) if flushed(l, &st.replay) => Poll::Ready(Ok(())),
                _ => {
                    st.flush_waiting = true;
                    Poll::Pending
                }
            }
        })
    }

    /// Queues the FIN (a half-close), delivered exactly once, across cuts.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Wakers::set(&self.shared.wakers.write, cx.waker());
        self.shared.with(Side::Write, |st, sh, cx| {
            if let Some(e) = st.error() {
                return Poll::Ready(Err(e));
            }
            if !st.fin_queued {
                st.fin_queued = true;
                st.drive(sh, cx, false);
            }
            Poll::Ready(Ok(()))
        })
    }
}
