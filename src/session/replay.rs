//! The send side's replay buffer: every byte the application wrote that the
//! peer has not yet acknowledged, so a new carrier can resend from wherever
//! the peer says it got to.
//!
//! Bounded by a charge rather than a byte count: each held chunk costs its
//! bytes plus [`CHUNK_OVERHEAD`], so an application that writes one byte at
//! a time to a peer that never acknowledges cannot make the chunk list grow
//! past the same bound as bulk data.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

/// What one held chunk costs beyond its bytes (a `Bytes` handle and its
/// share of an allocation, rounded up).
pub(super) const CHUNK_OVERHEAD: usize = 64;

/// Bytes `[base, base + held)` of the outgoing stream.
#[derive(Debug)]
pub(crate) struct Replay {
    /// Frozen chunks, oldest first; `tail` follows them.
    chunks: VecDeque<Bytes>,
    /// Written but not yet frozen (coalesces small writes).
    tail: BytesMut,
    base: u64,
    held: usize,
    charge: usize,
    cap: usize,
}

impl Replay {
    pub(crate) fn new(cap: usize) -> Self {
        Replay {
            chunks: VecDeque::new(),
            tail: BytesMut::new(),
            base: 0,
            held: 0,
            charge: 0,
            cap,
        }
    }

    /// The first byte still held (everything before it is acknowledged).
    pub(crate) fn base(&self) -> u64 {
        self.base
    }

    /// One past the last byte written.
    pub(crate) fn end(&self) -> u64 {
        self.base + self.held as u64
    }

    /// Bytes held, overhead included: what this buffer costs.
    pub(crate) fn charge(&self) -> usize {
        self.charge
    }

    /// Takes as much of `data` as the bound allows; 0 means full.
    pub(crate) fn push(&mut self, data: &[u8]) -> usize {
        let tail_charge = if self.tail.is_empty() {
            CHUNK_OVERHEAD
        } else {
            0
        };
        let room = self.cap.saturating_sub(self.charge + tail_charge);
        let n = room.min(data.len());
        if n == 0 {
            return 0;
        }
        if self.tail.capacity() - self.tail.len() < n {
            self.tail.reserve(n.max(super::frame::MAX_DATA));
        }
        self.tail.extend_from_slice(&data[..n]);
        self.held += n;
        self.charge += n + tail_charge;
        n
    }

    /// Drops everything before `to` (clamped to what is held).
    pub(crate) fn ack(&mut self, to: u64) {
        let mut drop = (to.saturating_sub(self.base) as usize).min(self.held);
        self.base += drop as u64;
        self.held -= drop;
        while drop > 0 {
            let Some(front) = self.chunks.front_mut() else {
                self.tail.advance(drop);
                self.charge -= drop;
                if self.tail.is_empty() {
                    self.charge -= CHUNK_OVERHEAD;
                }
                return;
            };
            let n = drop.min(front.len());
            front.advance(n);
            self.charge -= n;
            drop -= n;
            if front.is_empty() {
                self.chunks.pop_front();
                self.charge -= CHUNK_OVERHEAD;
            }
        }
    }

    /// Up to `max` bytes starting at `from` (`base <= from < end`), as one
    /// contiguous piece; the tail is frozen into a chunk when reached.
    pub(crate) fn read_at(&mut self, from: u64, max: usize) -> Bytes {
        debug_assert!(from >= self.base && from < self.end());
        let mut skip = (from - self.base) as usize;
        for chunk in &self.chunks {
            if skip < chunk.len() {
                let n = (chunk.len() - skip).min(max);
                return chunk.slice(skip..skip + n);
            }
            skip -= chunk.len();
        }
        // Freezing keeps the tail's spare capacity for the next writes.
        let frozen = self.tail.split().freeze();
        let n = (frozen.len() - skip).min(max);
        let piece = frozen.slice(skip..skip + n);
        self.chunks.push_back(frozen);
        piece
    }
}
