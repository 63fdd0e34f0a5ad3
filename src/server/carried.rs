//! What a tunnel's byte stream runs over: the HTTP/2 stream itself (today's
//! byte stream), or a resumable [`Session`] over it when the client asked
//! for one. The tunnel ends either the same way through [`Carried`].

use std::future::Future;
use std::time::Duration;

use h2::Reason;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::session::{ResumeKey, Session};
use crate::transport::stream::H2Stream;

/// How long a session's clean end may wait for the peer's acknowledgements
/// (a peer that is cut meanwhile has the grace period to resume first).
const FINISH_LIMIT: Duration = Duration::from_secs(30);

/// The ways a tunnel ends its carrier.
pub(crate) trait Carried: AsyncRead + AsyncWrite + Unpin + Send {
    /// After a failed inner handshake: let the alert reach the client.
    fn linger(self) -> impl Future<Output = ()> + Send;
    /// The backend could not be reached: a reset the client passes on.
    fn refuse(&mut self) -> impl Future<Output = ()> + Send;
    /// The inner TLS carries half-closes from here on.
    fn defer_end(&mut self);
    /// After a clean copy: end without cutting what the peer still reads.
    fn finish(&mut self) -> impl Future<Output = ()> + Send;
    /// The copy failed (the backend reset): pass it on.
    fn failed(&mut self) -> impl Future<Output = ()> + Send;
    /// Cut short (idle, lifetime): a reset.
    fn cancel(&mut self) -> impl Future<Output = ()> + Send;
    /// The inner handshake is done: key resumes from it.
    fn keyed(&mut self, tls: &rustls::ServerConnection);
}

impl Carried for H2Stream {
    async fn linger(self) {
        H2Stream::linger(self).await
    }
    async fn refuse(&mut self) {
        // CONNECT_ERROR is what RFC 9113 §8.5 prescribes for a failed
        // CONNECT target; the client turns it into a reset of its socket.
        self.reset(Reason::CONNECT_ERROR);
    }
    fn defer_end(&mut self) {
        self.defer_end_stream();
    }
    async fn finish(&mut self) {
        H2Stream::finish(self).await
    }
    // Dropping the stream does it, as before sessions.
    async fn failed(&mut self) {}
    async fn cancel(&mut self) {
        self.reset(Reason::CANCEL);
    }
    fn keyed(&mut self, _: &rustls::ServerConnection) {}
}

impl Carried for Session {
    async fn linger(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = self.shutdown().await;
            let _ = self.flush().await;
        })
        .await;
    }
    async fn refuse(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.reset()).await;
    }
    // A session's FIN is a frame of its own: nothing to hold back.
    fn defer_end(&mut self) {}
    async fn finish(&mut self) {
        let _ = tokio::time::timeout(FINISH_LIMIT, Session::finish(self)).await;
    }
    async fn failed(&mut self) {
        // A CLOSE, or the client would wait for a resume that cannot come.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.reset()).await;
    }
    async fn cancel(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.reset()).await;
    }
    fn keyed(&mut self, tls: &rustls::ServerConnection) {
        let handle = self.handle();
        handle.authenticated();
        if let Some(id) = handle.id() {
            // Without a key (export failed) a cut simply ends the session.
            if let Ok(key) = ResumeKey::exported(tls, &id) {
                handle.set_key(key);
            }
        }
    }
}
