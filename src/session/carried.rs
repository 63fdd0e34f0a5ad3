//! How a tunnel ends what its bytes run over, on either side: the HTTP/2
//! stream itself (the plain byte stream), or a resumable [`Session`] over
//! it. One trait, so the client and the server end tunnels the same way.

use std::future::Future;
use std::io;
use std::time::Duration;

use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{ResumeKey, Session};
use crate::transport::stream::H2Stream;

/// The longest a carrier is kept after its tunnel's end so that a last
/// flight (an alert, a CLOSE) reaches the peer: an HTTP/2 stack drops what
/// a reset stream still had queued.
pub(crate) const LINGER: Duration = Duration::from_secs(2);

/// How long a session's clean end may wait for the peer's acknowledgements
/// (a peer that is cut meanwhile has the grace period to resume first).
pub(crate) const FINISH_LIMIT: Duration = Duration::from_secs(30);

/// Why a tunnel ends its carrier without a clean finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Abort {
    /// The backend (or route) could not be reached: a reset the client
    /// passes on to its application.
    Refused,
    /// The copy failed: the connection on this side was reset.
    Failed,
    /// Cut short by a limit (idle timeout, lifetime).
    Cancelled,
}

/// The ways a tunnel ends its carrier.
pub(crate) trait Carried: AsyncRead + AsyncWrite + Unpin + Send {
    /// After a failed inner handshake: let the alert reach the peer.
    fn linger(self) -> impl Future<Output = ()> + Send;
    /// The inner TLS carries half-closes from here on (the server's
    /// END_STREAM may then wait for the client's).
    fn defer_end(&mut self) {}
    /// After a clean copy: end without cutting what the peer still reads.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
    /// Ends the tunnel as a reset, telling the peer why where it can.
    fn abort(&mut self, why: Abort) -> impl Future<Output = ()> + Send;
    /// The inner handshake is done: key resumes from it.
    fn keyed<D: Sync>(
        &mut self,
        tls: &rustls::ConnectionCommon<D>,
    ) -> impl Future<Output = ()> + Send;
    /// The step after every copy: a clean end if it was clean, else `why`.
    fn end_after(&mut self, copied: &io::Result<()>, why: Abort) -> impl Future<Output = ()> + Send
    where
        Self: Sized,
    {
        async move {
            match copied {
                Ok(()) => self.finish().await,
                Err(_) => self.abort(why).await,
            }
        }
    }
}

impl Carried for H2Stream {
    async fn linger(self) {
        H2Stream::linger(self).await
    }
    fn defer_end(&mut self) {
        self.defer_end_stream();
    }
    async fn finish(&mut self) {
        H2Stream::finish(self).await
    }
    async fn abort(&mut self, why: Abort) {
        match why {
            // CONNECT_ERROR is what RFC 9113 §8.5 prescribes for a failed
            // CONNECT target; the client turns it into a reset of its socket.
            Abort::Refused => self.reset(Reason::CONNECT_ERROR),
            // Dropping an unfinished stream resets it.
            Abort::Failed => {}
            Abort::Cancelled => self.reset(Reason::CANCEL),
        }
    }
    async fn keyed<D: Sync>(&mut self, _: &rustls::ConnectionCommon<D>) {}
}

impl Carried for Session {
    async fn linger(mut self) {
        let _ = tokio::time::timeout(LINGER, async {
            let _ = self.shutdown().await;
            let _ = self.flush().await;
        })
        .await;
    }
    // A session's FIN is a frame of its own: nothing to hold back.
    async fn finish(&mut self) {
        // Bounded: a peer cut meanwhile has the grace period to come back,
        // and the session ends by itself when that passes.
        let _ = tokio::time::timeout(FINISH_LIMIT, Session::finish(self)).await;
    }
    async fn abort(&mut self, _: Abort) {
        // CLOSE with a reset code: the peer resets its side at once instead
        // of waiting the grace period for a resume that cannot come.
        let _ = tokio::time::timeout(LINGER, self.reset()).await;
    }
    async fn keyed<D: Sync>(&mut self, tls: &rustls::ConnectionCommon<D>) {
        let handle = self.handle();
        // The peer is authenticated: the carrier may read past a handshake's
        // worth now, key or no key (a server's cap; a client has none).
        handle.authenticated();
        // A client's session started before its `200` learns its id from
        // the head, which arrived before the ServerHello but may not have
        // been handed over yet: the task that does so runs beside this one.
        // A server's knows it from the start.
        let Ok(id) = tokio::time::timeout(LINGER, handle.known_id()).await else {
            return;
        };
        // Without a key (export failed) a cut simply ends the session.
        if let Ok(key) = ResumeKey::exported(tls, &id) {
            handle.set_key(key);
        }
    }
}
