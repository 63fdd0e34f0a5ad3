//! What a session has staged for its carrier.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use super::carrier::Carrier;
use bytes::{Buf, Bytes, BytesMut};

/// Frames staged for the carrier, in order: control frames and DATA headers
/// are encoded into `ctl`, DATA payloads stay the replay buffer's own
/// `Bytes`, and the carrier gets them as one vectored write (no copy here).
#[derive(Default)]
pub(super) struct Out {
    pieces: VecDeque<Bytes>,
    /// Bytes in `pieces`.
    queued: usize,
    ctl: BytesMut,
}

/// Pieces handed to one vectored write at most.
const OUT_SLICES: usize = 16;

impl Out {
    pub(super) fn len(&self) -> usize {
        self.queued + self.ctl.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where control frames and DATA headers are encoded.
    pub(super) fn ctl(&mut self) -> &mut BytesMut {
        &mut self.ctl
    }

    /// Moves what `ctl` holds into the queue.
    pub(super) fn seal(&mut self) {
        if !self.ctl.is_empty() {
            let piece = self.ctl.split().freeze();
            self.queued += piece.len();
            self.pieces.push_back(piece);
        }
    }

    /// Queues `payload` after everything encoded so far.
    pub(super) fn push(&mut self, payload: Bytes) {
        self.seal();
        self.queued += payload.len();
        self.pieces.push_back(payload);
    }

    /// Drops the first `n` bytes (written).
    pub(super) fn advance(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.pieces.front_mut() else {
                return;
            };
            if n < front.len() {
                front.advance(n);
                return;
            }
            n -= front.len();
            self.pieces.pop_front();
        }
    }

    /// Writes as much as the carrier takes in one write: an HTTP/2 stream
    /// takes the payloads as they are, any other carrier as one vectored
    /// write.
    pub(super) fn poll_write(
        &mut self,
        io: &mut Box<dyn Carrier>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        self.seal();
        // The boxed carrier itself, not the box (which is a `Carrier` too).
        let io: &mut dyn Carrier = &mut **io;
        let written = if let Some(stream) = io.as_h2() {
            ready!(stream.poll_write_owned(cx, self.pieces.iter().take(OUT_SLICES)))?
        } else {
            let mut slices = [io::IoSlice::new(&[]); OUT_SLICES];
            let mut k = 0;
            for (slot, piece) in slices.iter_mut().zip(&self.pieces) {
                *slot = io::IoSlice::new(piece);
                k += 1;
            }
            ready!(Pin::new(io).poll_write_vectored(cx, &slices[..k]))?
        };
        self.advance(written);
        Poll::Ready(Ok(written))
    }

    /// Everything, for a carrier that is ending.
    pub(super) fn into_pieces(mut self) -> VecDeque<Bytes> {
        self.seal();
        self.pieces
    }
}
