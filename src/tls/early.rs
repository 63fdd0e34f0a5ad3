//! TLS 1.3 early data (0-RTT) on the outer hop: the server's TLS stream,
//! which hands the client's 0-RTT data to HTTP/2 the moment it arrives, and
//! the client's deadline for a handshake that 0-RTT leaves running.
//!
//! A client that resumes a session may send its first bytes (the HTTP/2
//! preface, the tunnel's POST and the inner ClientHello) with its
//! ClientHello. That saves a round trip only if the server acts on them
//! before the client's Finished, one round trip later. tokio-rustls's
//! acceptor serves early data neither before nor after the handshake, so
//! this is a small `AsyncRead`/`AsyncWrite` over [`rustls::ServerConnection`]
//! of our own: [`accept`] returns as soon as the server's flight is out when
//! early data was accepted, reads yield the early data first and then the
//! ordinary data, and writes before the client's Finished go out as 0.5-RTT
//! data ([`rustls::ServerConfig::send_half_rtt_data`]).
//!
//! [`Finishing`] is the client's side: a 0-RTT connect returns before the
//! handshake ends, and the connect's deadline still has to hold.
//!
//! Why that is safe here: rustls accepts early data only with stateful
//! resumption, where every ticket is used once (a replayed ClientHello
//! finds its ticket gone and falls back to a full handshake); and what
//! early data can carry is a POST that starts an inner mTLS handshake, which
//! reaches no backend until the client proves its key in a later flight.

use std::future::Future;
use std::io::{self, BufRead, Read, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A server-side TLS stream over `IO`.
pub struct ServerTls<IO> {
    io: IO,
    conn: ServerConnection,
    /// The peer's side of the socket has ended.
    eof: bool,
    /// close_notify has been queued.
    closing: bool,
    /// Early data taken out of rustls as it arrives (at most
    /// [`super::EARLY_DATA_LIMIT`]), read from the start; empty: none came.
    early: io::Cursor<Vec<u8>>,
    /// When a handshake that [`accept`] left to finish (0-RTT) must be done.
    finish_by: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Runs the server handshake on `io` until it completes or, when the client's
/// early data was accepted, until the server's flight is written and the
/// first early bytes are in. The whole handshake gets `limit`: one that is
/// not done by then fails here, or in a later read if it was left running.
pub async fn accept<IO>(
    config: Arc<ServerConfig>,
    io: IO,
    limit: Duration,
) -> io::Result<ServerTls<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + limit;
    let conn = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut tls = ServerTls {
        io,
        conn,
        eof: false,
        closing: false,
        early: io::Cursor::default(),
        finish_by: None,
    };
    tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| tls.poll_handshake(cx)))
        .await
        .map_err(|_| late())??;
    if tls.conn.is_handshaking() {
        tls.finish_by = Some(Box::pin(tokio::time::sleep_until(deadline)));
    }
    Ok(tls)
}

fn late() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the TLS handshake did not finish in time",
    )
}

impl<IO> ServerTls<IO> {
    /// How the handshake went: `"early_data"` (a resumption whose first
    /// requests came with the ClientHello), `"resumed"` or `"full"`. Known
    /// when [`accept`] returns.
    pub fn kind(&self) -> &'static str {
        if !self.early.get_ref().is_empty() {
            "early_data"
        } else if self.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            "resumed"
        } else {
            "full"
        }
    }

    /// The protocol ALPN chose (`h2`, `http/1.1`), if any; known when
    /// [`accept`] returns.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The socket (tests hold back what it sends).
    #[cfg(test)]
    fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// The TLS connection (tests look at its handshake).
    #[cfg(test)]
    fn connection(&self) -> &ServerConnection {
        &self.conn
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerTls<IO> {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            // Our flight first: the client is waiting for it.
            ready!(self.poll_send(cx))?;
            // Early data first: it may have come in the same read as the
            // client's Finished.
            if !self.early.get_ref().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the client closed the connection during the TLS handshake",
                )));
            }
            ready!(self.poll_receive(cx))?;
        }
    }

    /// `Pending`, or the error of a handshake left running past its limit.
    fn poll_finish_by(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.conn.is_handshaking() {
            self.finish_by = None;
        }
        match &mut self.finish_by {
            Some(at) => at.as_mut().poll(cx).map(|()| Err(late())),
            None => Poll::Pending,
        }
    }

    /// Writes every TLS record rustls has queued.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut sink = Blocking {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut sink) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Reads TLS records from the socket and processes them.
    fn poll_receive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut source = Blocking {
            io: &mut self.io,
            cx,
        };
        match self.conn.read_tls(&mut source) {
            Ok(0) => self.eof = true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            Err(e) => return Poll::Ready(Err(e)),
        }
        let handshaking = self.conn.is_handshaking();
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert saying why; the peer should hear it.
            let _ = self.poll_send(cx);
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
        }
        // Early data comes only before the client's Finished: it moves out
        // of rustls as it is decrypted, ahead of all other data.
        if let (true, Some(mut early)) = (handshaking, self.conn.early_data()) {
            // Reads until rustls has no more (not an end of stream).
            early.read_to_end(self.early.get_mut())?;
        }
        Poll::Ready(Ok(()))
    }

    /// Moves plaintext out of rustls into `buf`: early data first (it
    /// precedes all other data on the connection), then ordinary data.
    /// `None`: none yet; `Some(Ok(0))`: close_notify, the end of the stream.
    ///
    /// Both are copied into `buf`'s unfilled part as it stands, from
    /// rustls's own buffer (`BufRead`) and from [`Self::early`]: zeroing that
    /// part first for `Read::read` (`initialize_unfilled`) set HTTP/2's whole
    /// spare read buffer on every read, 1.8 bytes per byte received
    /// (callgrind, the server of a 32 MiB upload).
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> Option<io::Result<usize>> {
        // A cursor's `fill_buf` is what it has left; it cannot fail.
        let early = match self.early.fill_buf() {
            Ok(rest) if !rest.is_empty() => put(buf, rest),
            _ => 0,
        };
        if early > 0 {
            self.early.consume(early);
            return Some(Ok(early));
        }
        let mut reader = self.conn.reader();
        match reader.fill_buf() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => Some(Err(e)),
            Ok(chunk) => {
                let n = put(buf, chunk);
                reader.consume(n);
                Some(Ok(n))
            }
        }
    }
}

/// Copies as much of `chunk` as `buf` has room for; returns how much.
fn put(buf: &mut ReadBuf<'_>, chunk: &[u8]) -> usize {
    let n = chunk.len().min(buf.remaining());
    buf.put_slice(&chunk[..n]);
    n
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for ServerTls<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if let Some(done) = this.take_plaintext(buf) {
                done?;
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Whatever rustls has to say (tickets, alerts) goes along; a
            // full socket is the writer's business.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if this.poll_receive(cx)?.is_pending() {
                return this.poll_finish_by(cx);
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> ServerTls<IO> {
    /// Hands `n` bytes (what `take` gave rustls) to the socket as far as it
    /// takes them; bytes rustls took are delivered later if it is full.
    fn poll_put(
        &mut self,
        cx: &mut Context<'_>,
        mut take: impl FnMut(&mut ServerConnection) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            let n = take(&mut self.conn)?;
            let sent = self.poll_send(cx);
            if n > 0 {
                if let Poll::Ready(Err(e)) = sent {
                    return Poll::Ready(Err(e));
                }
                return Poll::Ready(Ok(n));
            }
            ready!(sent)?;
            if self.conn.is_handshaking() && !self.conn.wants_write() {
                // rustls holds our data until the client's Finished (no
                // 0.5-RTT data on this connection): read on to it.
                ready!(self.poll_receive(cx))?;
                continue;
            }
            if !self.conn.wants_write() {
                // rustls takes nothing though its buffer is empty: an empty
                // write, or a connection that is closing.
                return Poll::Ready(Ok(0));
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ServerTls<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_put(cx, |conn| conn.writer().write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_put(cx, |conn| conn.writer().write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.closing {
            this.conn.send_close_notify();
            this.closing = true;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The client side: a TLS stream whose handshake a 0-RTT connect left
/// running, which must end by the connect's deadline (a front end that took
/// the ClientHello and then stalls would otherwise hold every tunnel put on
/// the connection until its own timeout).
pub struct Finishing<IO> {
    tls: tokio_rustls::client::TlsStream<IO>,
    by: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> Finishing<IO> {
    /// `tls`, whose handshake (if still running) gets `limit` more.
    pub fn new(tls: tokio_rustls::client::TlsStream<IO>, limit: Duration) -> Self {
        let by = tls
            .get_ref()
            .1
            .is_handshaking()
            .then(|| Box::pin(tokio::time::sleep(limit)));
        Finishing { tls, by }
    }
}

impl<IO: Unpin> Finishing<IO> {
    /// `poll` on the stream, whose `Pending` becomes the error of a
    /// handshake past its deadline once that has passed.
    fn poll_in_time<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(
            Pin<&mut tokio_rustls::client::TlsStream<IO>>,
            &mut Context<'_>,
        ) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let done = poll(Pin::new(&mut self.tls), cx);
        if done.is_ready() {
            return done;
        }
        if !self.tls.get_ref().1.is_handshaking() {
            self.by = None;
        }
        match &mut self.by {
            Some(by) => by.as_mut().poll(cx).map(|()| Err(late())),
            None => Poll::Pending,
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for Finishing<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_in_time(cx, |tls, cx| tls.poll_read(cx, buf))
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Finishing<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_in_time(cx, |tls, cx| tls.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_in_time(cx, |tls, cx| tls.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut()
            .poll_in_time(cx, |tls, cx| tls.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tls).poll_shutdown(cx)
    }
}

/// The socket as blocking `Read`/`Write` for rustls: `Pending` becomes
/// `WouldBlock` (with the waker registered).
struct Blocking<'a, 'b, IO> {
    io: &'a mut IO,
    cx: &'a mut Context<'b>,
}

impl<IO: AsyncRead + Unpin> Read for Blocking<'_, '_, IO> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

impl<IO: AsyncWrite + Unpin> Write for Blocking<'_, '_, IO> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        pending_blocks(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        pending_blocks(Pin::new(&mut *self.io).poll_write_vectored(self.cx, bufs))
    }

    fn flush(&mut self) -> io::Result<()> {
        pending_blocks(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

fn pending_blocks<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

#[cfg(test)]
mod tests;
