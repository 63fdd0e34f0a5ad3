//! The session's side of one carrier: what was sent on it ([`Link`]),
//! reading frames from it, staging and writing frames to it, and ending it
//! after the last frame.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncWrite;
use tokio_util::codec::Decoder as _;

use super::{Cut, State};
use crate::session::carrier::Carrier;
use crate::session::frame::{self, Frame, FrameCodec, CLOSE_DONE, MAX_DATA, MAX_FRAME};
use crate::session::out::Out;
use crate::session::replay::Replay;
use crate::session::{Config, PREAUTH_READ};
use crate::transport::stream;

/// Frames staged for the carrier at most (then writes wait for it).
const OUT_HIGH: usize = 4 * MAX_FRAME;
/// Room a busy session's frame buffer grows by. At a frame's worth (the
/// first allocation still is) growing it copied the partial frame it held
/// every frame or so: about 0.4 copies per byte received, measured with
/// callgrind (`realloc` under `State::drive` and `FrameCodec::decode`).
const RBUF_BLOCK: usize = 8 * MAX_FRAME;
/// The payload of the DATA frames this side sends: with an ACK and its own
/// header before it, a frame fits one HTTP/2 write, so a peer reading from
/// an HTTP/2 stream gets each payload as a chunk of its own and takes it
/// without a copy (`read_carrier`).
const SEND_DATA: usize = if MAX_DATA < stream::MAX_WRITE - 64 {
    MAX_DATA
} else {
    stream::MAX_WRITE - 64
};
/// Bytes read from the carrier per poll before yielding to other tasks
/// (each read takes at most a frame, or from an HTTP/2 stream one chunk as
/// it arrived), so a bulk session's driver holds its worker for about two
/// frames' worth at a time, not 2 MiB (32 reads), while a neighbour's bytes
/// wait (`postern bench --quick`, beside a bulk transfer, with the copy
/// buffer at 64 KiB: p50 3.1 / 2.0 ms at 32 reads, 0.88 / 0.75 ms with 4
/// and the smaller buffer together).
const READ_BUDGET: usize = 2 * MAX_FRAME;
/// Reads per poll at most, however small.
const READS_PER_POLL: usize = 8;
/// How long an ACK may wait for a frame to ride with once the receiver has
/// read everything (see `State::stage`). A request's ACK then goes with its
/// answer: each side of an idle 1-byte ping-pong used to write its outer
/// socket twice per round trip (the echo, then an ACK on its own, which the
/// peer had to wake for, read, decrypt and decode). Short next to what it
/// keeps in the peer's replay buffer being of any weight.
pub(crate) const ACK_DELAY: Duration = Duration::from_millis(10);

/// An ACK not yet sent, on an idle carrier (see [`ACK_DELAY`]).
enum AckWait {
    /// None waits.
    No,
    /// Waiting at most until this fires.
    Until(Pin<Box<tokio::time::Sleep>>),
    /// The wait is over: the ACK goes on its own.
    Over,
}

/// The current carrier and what has been sent on it.
pub(super) struct Link {
    pub(super) io: Box<dyn Carrier>,
    pub(super) rbuf: BytesMut,
    pub(super) out: Out,
    /// Next offset to send on this carrier.
    pub(super) sent: u64,
    pub(super) fin_sent: bool,
    pub(super) close_sent: bool,
    /// The last ACK value sent on this carrier.
    pub(super) acked_sent: Option<u64>,
    /// Whether an unsent ACK waits for something to ride with.
    ack_wait: AckWait,
    pub(super) read_idle: bool,
    pub(super) unflushed: bool,
}

impl Link {
    pub(super) fn new(
        io: Box<dyn Carrier>,
        sent: u64,
        fin_sent: bool,
        acked_sent: Option<u64>,
    ) -> Link {
        Link {
            io,
            rbuf: BytesMut::new(),
            out: Out::default(),
            sent,
            fin_sent,
            close_sent: false,
            acked_sent,
            ack_wait: AckWait::No,
            read_idle: false,
            unflushed: false,
        }
    }
}

impl State {
    pub(super) fn pump_read(
        &mut self,
        link: &mut Link,
        config: &Config,
        cx: &mut Context<'_>,
    ) -> Result<(), Cut> {
        let mut taken = 0;
        for _ in 0..READS_PER_POLL {
            if taken >= READ_BUDGET {
                break;
            }
            loop {
                match FrameCodec.decode(&mut link.rbuf) {
                    Ok(Some(frame)) => self.apply(frame, config)?,
                    Ok(None) => break,
                    Err(e) => return Err(Cut::Protocol(e.to_string())),
                }
            }
            if self.preauth_read.is_some_and(|n| n >= PREAUTH_READ) {
                // Left in the HTTP/2 stream, within its window, until the
                // peer is authenticated (`SessionHandle::authenticated`).
                return Ok(());
            }
            if link.rbuf.capacity() - link.rbuf.len() < MAX_DATA {
                // Decoded payloads still share the buffer, so growing it
                // allocates anew and copies the partial frame it holds: a
                // session that has received more than a frame gets room for
                // several at a time, so that copy is rare.
                let room = if self.received >= MAX_DATA as u64 && self.preauth_read.is_none() {
                    RBUF_BLOCK
                } else {
                    MAX_FRAME
                };
                link.rbuf.reserve(room);
            }
            if !self.inbox_has_room(config, cx) {
                // The budget is full: the frames stay in HTTP/2, whose
                // window then holds the peer back (docs/protocol.md §7).
                return Ok(());
            }
            match read_carrier(link, cx) {
                Poll::Ready(Ok((n, frame))) => {
                    link.read_idle = false;
                    taken += n;
                    if let Some(read) = &mut self.preauth_read {
                        *read += n;
                    }
                    if let Some(frame) = frame {
                        self.stats.uncopied += 1;
                        self.apply(frame, config)?;
                    }
                }
                Poll::Pending => {
                    link.read_idle = true;
                    return Ok(());
                }
                // A carrier that ends without CLOSE is a cut, never an end.
                Poll::Ready(Err(cut)) => return Err(cut),
            }
        }
        // More may be waiting: let other tasks run, then come back.
        cx.waker().wake_by_ref();
        Ok(())
    }

    pub(super) fn pump_write(
        &mut self,
        link: &mut Link,
        config: &Config,
        cx: &mut Context<'_>,
    ) -> Result<(), Cut> {
        loop {
            if link.out.len() < OUT_HIGH {
                self.stage(link, config);
            }
            if link.out.is_empty() {
                if let AckWait::Until(at) = &mut link.ack_wait {
                    if at.as_mut().poll(cx).is_ready() {
                        link.ack_wait = AckWait::Over;
                        continue;
                    }
                }
                break;
            }
            match link.out.poll_write(&mut link.io, cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return Err(Cut::Lost),
                Poll::Ready(Ok(_)) => link.unflushed = true,
            }
        }
        if link.unflushed {
            match Pin::new(&mut link.io).poll_flush(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(_)) => return Err(Cut::Lost),
                Poll::Ready(Ok(())) => link.unflushed = false,
            }
        }
        if link.close_sent {
            // After CLOSE the carrier carries nothing more: end it cleanly.
            let _ = Pin::new(&mut link.io).poll_shutdown(cx);
        }
        Ok(())
    }

    /// Encodes what is due on the carrier: an ACK, DATA, FIN, CLOSE.
    fn stage(&mut self, link: &mut Link, config: &Config) {
        let ack = self.consumed_units();
        let idle = self.inbox.is_empty() && link.read_idle;
        let due = match link.acked_sent {
            None => true,
            Some(last) if last == ack => false,
            // Every eighth of the window keeps a busy peer from stalling;
            // the peer's FIN read, or an application that reads no more,
            // is the session ending and is told at once; an idle moment
            // flushes the rest so the peer's replay buffer drains, after
            // at most ACK_DELAY, or sooner with a frame to ride with.
            Some(last) => {
                ack - last >= (config.window as u64 / 8).max(1)
                    || self.eof_read
                    || self.draining
                    // DATA, FIN or CLOSE go out now: it rides with them.
                    || link.sent.max(self.replay.base()) < self.replay.end()
                    || (self.fin_queued && !link.fin_sent)
                    || (self.close_queued.is_some() && !link.close_sent)
                    || (idle && matches!(link.ack_wait, AckWait::Over))
            }
        };
        if due {
            frame::put_ack(link.out.ctl(), ack);
            link.acked_sent = Some(ack);
        }
        if link.acked_sent == Some(ack) {
            link.ack_wait = AckWait::No;
        } else if idle && matches!(link.ack_wait, AckWait::No) {
            link.ack_wait = AckWait::Until(Box::pin(tokio::time::sleep(ACK_DELAY)));
        }
        // What the peer has acknowledged it has, whichever carrier brought
        // the ACK (one arriving late on a retired carrier can pass the
        // offset a resume named), is not sent again.
        link.sent = link.sent.max(self.replay.base());
        while link.out.len() < OUT_HIGH && link.sent < self.replay.end() {
            let piece = self.replay.read_at(link.sent, SEND_DATA);
            frame::put_data_header(link.out.ctl(), link.sent, piece.len());
            link.sent += piece.len() as u64;
            link.out.push(piece);
        }
        if self.fin_queued && !link.fin_sent && link.sent == self.replay.end() && !self.fin_acked()
        {
            frame::put_fin(link.out.ctl(), link.sent);
            link.fin_sent = true;
        }
        if let Some(code) = self.close_queued {
            if !link.close_sent && (code != CLOSE_DONE || link.fin_sent || self.fin_acked()) {
                frame::put_close(link.out.ctl(), code);
                link.close_sent = true;
            }
        }
    }
}

/// Everything written has been handed to the carrier and flushed.
pub(super) fn flushed(link: &Link, replay: &Replay) -> bool {
    link.out.is_empty() && !link.unflushed && link.sent == replay.end()
}

/// One read from the carrier into the link's frame buffer. An HTTP/2
/// stream hands over its chunk as it is: a DATA frame whose header the
/// buffer holds and whose payload is the chunk's front is decoded without
/// copying that payload (and returned), the rest is appended. Says how many
/// bytes came in. A carrier that ends, or fails, without CLOSE is a cut.
fn read_carrier(
    link: &mut Link,
    cx: &mut Context<'_>,
) -> Poll<Result<(usize, Option<Frame>), Cut>> {
    // The boxed carrier itself, not the box (which is a `Carrier` too).
    let Some(stream) = (*link.io).as_h2() else {
        return match ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut link.io),
            cx,
            &mut link.rbuf
        )) {
            Ok(0) | Err(_) => Poll::Ready(Err(Cut::Lost)),
            Ok(n) => Poll::Ready(Ok((n, None))),
        };
    };
    let mut chunk = match ready!(stream.poll_chunk(cx)) {
        Ok(chunk) if !chunk.is_empty() => chunk,
        Ok(_) | Err(_) => return Poll::Ready(Err(Cut::Lost)),
    };
    let n = chunk.len();
    let frame = FrameCodec
        .decode_data_from(&mut link.rbuf, &mut chunk)
        .map_err(|e| Cut::Protocol(e.to_string()))?;
    link.rbuf.extend_from_slice(&chunk);
    Poll::Ready(Ok((n, frame)))
}

/// Ends a carrier after the session's last frame: what is still staged,
/// our END_STREAM, then
/// whatever the peer still sends until its own end (bounded), so the frames
/// queued on it reach the peer and no front end sees a reset.
pub(super) fn linger(link: Link, lingering: &tokio_util::task::TaskTracker) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let Link { mut io, out, .. } = link;
    lingering.spawn_on(
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let ending = async {
                for piece in out.into_pieces() {
                    if io.write_all(&piece).await.is_err() {
                        return;
                    }
                }
                let _ = io.shutdown().await;
                let mut sink = [0u8; 1024];
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(LINGER, ending).await;
        },
        &runtime,
    );
}

/// How long an ended carrier waits for the peer's end of it.
pub(super) use crate::session::carried::LINGER;
