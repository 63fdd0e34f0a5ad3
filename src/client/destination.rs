//! The client's side of a destination request (docs/protocol.md §8): the
//! request leaves right after the inner handshake, and the answer is read
//! before any byte of the destination's reaches the application. A fixed
//! destination (`--to`) does not wait for the answer to send: what the
//! application writes meanwhile follows the request, so a protocol whose
//! client speaks first loses no round trip. A SOCKS5 or HTTP CONNECT
//! client is told the answer, in its own protocol, before it sends.

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{ready, Poll};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::destination::wire::{Answer, Code, Destination, ALPN, VERSION};

/// How long a tunnel waits for the server's answer beyond the inner
/// handshake (the server's own dial timeout is usually shorter).
pub(super) const ANSWER_LIMIT: Duration = Duration::from_secs(60);

/// Most bytes of the application's held while the answer is awaited.
const HOLD: usize = 64 * 1024;

/// What one tunnel asks for, and how its application hears the answer.
pub struct Ask<'a> {
    /// Where to.
    pub dest: &'a Destination,
    /// The bytes that tell the application the answer (SOCKS5 reply,
    /// HTTP status), written before any destination byte; `None`: a fixed
    /// destination, told nothing and not waited for.
    pub reply: Option<fn(&Answer) -> Vec<u8>>,
    /// Set once the application has been told.
    pub answered: AtomicBool,
}

impl<'a> Ask<'a> {
    /// An ask for `dest`; `reply` as the field says.
    pub fn new(dest: &'a Destination, reply: Option<fn(&Answer) -> Vec<u8>>) -> Ask<'a> {
        Ask {
            dest,
            reply,
            answered: AtomicBool::new(false),
        }
    }

    /// Sends the request over the finished inner handshake and reads the
    /// answer; `Ok` once the destination is connected, `Err` naming the
    /// refusal (the application told, where it can be).
    pub(super) async fn open<L, T>(
        &self,
        local: &mut L,
        tls: &mut T,
        alpn: Option<&[u8]>,
    ) -> anyhow::Result<()>
    where
        L: AsyncRead + AsyncWrite + Unpin,
        T: AsyncRead + AsyncWrite + Unpin,
    {
        if alpn != Some(ALPN) {
            let _ = tls.shutdown().await;
            let answer = Answer::new(Code::NoPolicy, "the server does not support destinations");
            self.tell(local, &answer).await;
            anyhow::bail!(
                "the server does not support destinations (it did not accept ALPN {}): upgrade it, or leave out --to/--socks5/--http-proxy",
                String::from_utf8_lossy(ALPN)
            );
        }
        tls.write_all(&self.dest.encode())
            .await
            .context("destination request")?;
        tls.flush().await.context("destination request")?;
        let read = async {
            if self.reply.is_some() {
                Answer::read(tls).await.map_err(anyhow::Error::from)
            } else {
                pipelined(local, tls).await
            }
        };
        let answer = tokio::time::timeout(ANSWER_LIMIT, read)
            .await
            .map_err(|_| {
                anyhow::anyhow!("no answer to the destination request in {ANSWER_LIMIT:?}")
            })?
            .with_context(|| format!("destination {}", self.dest))?;
        self.tell(local, &answer).await;
        if answer.code != Code::Connected {
            let _ = tls.shutdown().await;
            anyhow::bail!("destination {} refused by the server: {answer}", self.dest);
        }
        tracing::debug!(destination = %self.dest, dialled = %answer.text, "destination connected");
        Ok(())
    }

    /// Tells the application (once), if it has a protocol to be told in.
    pub(super) async fn tell<L: AsyncWrite + Unpin>(&self, local: &mut L, answer: &Answer) {
        let Some(reply) = self.reply else { return };
        if self.answered.swap(true, Ordering::Relaxed) {
            return;
        }
        let _ = local.write_all(&reply(answer)).await;
        let _ = local.flush().await;
    }
}

/// Reads the answer while passing what the application writes meanwhile
/// on to the tunnel (up to [`HOLD`] bytes at a time), never reading past
/// the answer's last byte.
async fn pipelined<L, T>(local: &mut L, tls: &mut T) -> anyhow::Result<Answer>
where
    L: AsyncRead + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut head = Vec::with_capacity(3);
    let mut need = 3usize;
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut local_open = true;
    let mut unflushed = false;
    let answer = poll_fn(|cx| loop {
        // The answer first: it may end the wait.
        let mut progressed = false;
        while head.len() < need {
            let mut tmp = [0u8; 258];
            let want = need - head.len();
            let mut rb = ReadBuf::new(&mut tmp[..want]);
            match Pin::new(&mut *tls).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Poll::Ready(Err(anyhow::anyhow!(
                        "the tunnel ended before the server's answer"
                    )))
                }
                Poll::Ready(Ok(())) => {
                    head.extend_from_slice(rb.filled());
                    if head.len() == 3 {
                        if head[0] != VERSION {
                            return Poll::Ready(Err(anyhow::anyhow!(
                                "malformed answer from the server"
                            )));
                        }
                        need = 3 + head[2] as usize;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => break,
            }
        }
        if head.len() >= 3 && head.len() == need {
            return Poll::Ready(Ok(Answer {
                code: Code::from_byte(head[1]),
                text: String::from_utf8_lossy(&head[3..]).into_owned(),
            }));
        }
        if !pending.is_empty() {
            match Pin::new(&mut *tls).poll_write(cx, &pending) {
                Poll::Ready(Ok(n)) => {
                    pending.drain(..n);
                    unflushed = true;
                    progressed = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Pending => {}
            }
        }
        if unflushed && pending.is_empty() {
            ready!(Pin::new(&mut *tls).poll_flush(cx))?;
            unflushed = false;
        }
        if local_open && pending.len() < HOLD {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *local).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => local_open = false,
                Poll::Ready(Ok(())) => {
                    pending.extend_from_slice(rb.filled());
                    progressed = true;
                }
                // The copy that follows meets it again.
                Poll::Ready(Err(_)) => local_open = false,
                Poll::Pending => {}
            }
        }
        if !progressed {
            return Poll::Pending;
        }
    })
    .await?;
    // What the application wrote meanwhile is the destination's.
    if answer.code == Code::Connected {
        tls.write_all(&pending).await?;
        tls.flush().await?;
    }
    Ok(answer)
}
