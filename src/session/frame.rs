//! The session framing: what travels inside a carrier once resume is
//! negotiated. Every frame is `type: u8 | length: u24 | payload`, big-endian,
//! so a cut carrier (which ends mid-frame or between frames without a
//! `FIN`/`CLOSE`) is never mistaken for a half-close or a clean end.
//!
//! | type | name  | payload                          |
//! |------|-------|----------------------------------|
//! | 0x01 | DATA  | offset: u64, then 1..=64 KiB     |
//! | 0x02 | ACK   | consumed: u64                    |
//! | 0x03 | FIN   | offset: u64 (the final length)   |
//! | 0x04 | CLOSE | code: u32                        |
//!
//! See docs/protocol.md, "Resume", for the rules each side follows.

use std::io;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Largest DATA payload. A TLS record is at most ~16 KiB, so 64 KiB keeps
/// the header overhead at 12 bytes per 64 KiB (0.02 %) while bounding what a
/// receiver must buffer before it can check a frame: one frame.
pub(crate) const MAX_DATA: usize = 64 * 1024;

/// Type and length.
pub(crate) const HEADER: usize = 4;

/// The largest frame on the wire, header included.
pub(crate) const MAX_FRAME: usize = HEADER + 8 + MAX_DATA;

const DATA: u8 = 0x01;
const ACK: u8 = 0x02;
const FIN: u8 = 0x03;
const CLOSE: u8 = 0x04;

/// A `CLOSE` code: the sender is done with the session (its data was all
/// acknowledged, the peer's `FIN` received); not an error.
pub(crate) const CLOSE_DONE: u32 = 0;
/// A `CLOSE` code: the application connection behind the sender was reset.
pub(crate) const CLOSE_RESET: u32 = 1;
/// A `CLOSE` code: the sender received a malformed frame or offset.
pub(crate) const CLOSE_PROTOCOL: u32 = 2;
/// A `CLOSE` code: the sender gave up on the session (grace expired, limits).
pub(crate) const CLOSE_ABANDONED: u32 = 3;

/// One session frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// Application bytes starting at `offset` in the sender's byte stream.
    Data {
        /// Position of the first payload byte.
        offset: u64,
        /// 1 to [`MAX_DATA`] bytes.
        payload: Bytes,
    },
    /// Cumulative: the receiver's application has consumed this many units
    /// (bytes, plus one for the `FIN` once it has read the end).
    Ack {
        /// Units consumed.
        consumed: u64,
    },
    /// The sender's stream ends after `offset` bytes (a half-close).
    Fin {
        /// The stream's final length.
        offset: u64,
    },
    /// The session ends: [`CLOSE_DONE`] cleanly, anything else as a reset.
    Close {
        /// Why.
        code: u32,
    },
}

/// A malformed frame: what was wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A type byte this version does not define.
    #[error("session frame: unknown type 0x{0:02x}")]
    UnknownType(u8),
    /// A fixed-size frame whose length field disagrees.
    #[error("session {kind} frame: length {len}, expected {expected}")]
    BadLength {
        /// The frame's name.
        kind: &'static str,
        /// The length field.
        len: usize,
        /// What that type requires.
        expected: usize,
    },
    /// A DATA frame with an empty or oversized payload.
    #[error("session DATA frame: {0} payload bytes, expected 1 to {MAX_DATA}")]
    DataSize(usize),
    /// A DATA frame whose end does not fit in 64 bits.
    #[error("session DATA frame: offset {0} overflows")]
    Overflow(u64),
    /// The carrier failed while reading.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<FrameError> for io::Error {
    fn from(e: FrameError) -> io::Error {
        match e {
            FrameError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e),
        }
    }
}

/// The codec for [`Frame`]s (tokio-util's `Decoder`/`Encoder`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = FrameError;

    /// Checks the header as soon as its 4 bytes are in, so garbage fails
    /// before any payload is buffered, and never buffers more than one frame.
    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        let Some((kind, len)) = header(src)? else {
            return Ok(None);
        };
        if src.len() < HEADER + len {
            src.reserve(HEADER + len - src.len());
            return Ok(None);
        }
        src.advance(HEADER);
        let mut body = src.split_to(len);
        Ok(Some(match kind {
            DATA => {
                let offset = body.get_u64();
                data(offset, body.freeze())?
            }
            ACK => Frame::Ack {
                consumed: body.get_u64(),
            },
            FIN => Frame::Fin {
                offset: body.get_u64(),
            },
            _ => Frame::Close {
                code: body.get_u32(),
            },
        }))
    }
}

impl FrameCodec {
    /// A DATA frame of which `src` holds exactly the header and offset,
    /// completed from the front of `more` without copying the payload (an
    /// HTTP/2 peer that writes a frame's payload as a DATA frame of its own
    /// delivers it as one chunk). `None`, with nothing taken, when `src` is
    /// not such a header or `more` is too short: the caller appends `more`
    /// to `src` and decodes as usual.
    pub(crate) fn decode_data_from(
        &mut self,
        src: &mut BytesMut,
        more: &mut Bytes,
    ) -> Result<Option<Frame>, FrameError> {
        if src.len() != HEADER + 8 {
            return Ok(None);
        }
        let Some((DATA, len)) = header(src)? else {
            return Ok(None);
        };
        let size = len - 8;
        if more.len() < size {
            return Ok(None);
        }
        let offset = (&src[HEADER..]).get_u64();
        src.clear();
        data(offset, more.split_to(size)).map(Some)
    }
}

fn data(offset: u64, payload: Bytes) -> Result<Frame, FrameError> {
    if offset.checked_add(payload.len() as u64).is_none() {
        return Err(FrameError::Overflow(offset));
    }
    Ok(Frame::Data { offset, payload })
}

/// The type and length of the frame `src` starts with, checked as soon as
/// its 4 bytes are in, so garbage fails before any payload is buffered.
fn header(src: &[u8]) -> Result<Option<(u8, usize)>, FrameError> {
    if src.len() < HEADER {
        return Ok(None);
    }
    let kind = src[0];
    let len = usize::from(src[1]) << 16 | usize::from(src[2]) << 8 | usize::from(src[3]);
    let fixed = |name, expected| {
        if len == expected {
            Ok(())
        } else {
            Err(FrameError::BadLength {
                kind: name,
                len,
                expected,
            })
        }
    };
    match kind {
        DATA if len <= 8 || len > 8 + MAX_DATA => {
            return Err(FrameError::DataSize(len.saturating_sub(8)))
        }
        DATA => {}
        ACK => fixed("ACK", 8)?,
        FIN => fixed("FIN", 8)?,
        CLOSE => fixed("CLOSE", 4)?,
        other => return Err(FrameError::UnknownType(other)),
    }
    Ok(Some((kind, len)))
}

impl Encoder<Frame> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> io::Result<()> {
        match frame {
            Frame::Data { offset, payload } => {
                if payload.is_empty() || payload.len() > MAX_DATA {
                    return Err(FrameError::DataSize(payload.len()).into());
                }
                put_data(dst, offset, &payload);
            }
            Frame::Ack { consumed } => put_u64(dst, ACK, consumed),
            Frame::Fin { offset } => put_u64(dst, FIN, offset),
            Frame::Close { code } => {
                put_header(dst, CLOSE, 4);
                dst.put_u32(code);
            }
        }
        Ok(())
    }
}

fn put_header(dst: &mut BytesMut, kind: u8, len: usize) {
    dst.put_u8(kind);
    dst.put_uint(len as u64, 3);
}

fn put_u64(dst: &mut BytesMut, kind: u8, value: u64) {
    put_header(dst, kind, 8);
    dst.put_u64(value);
}

/// Appends a DATA frame; `payload` is 1 to [`MAX_DATA`] bytes (the caller's
/// invariant: it slices the replay buffer so).
pub(crate) fn put_data(dst: &mut BytesMut, offset: u64, payload: &[u8]) {
    put_data_header(dst, offset, payload.len());
    dst.extend_from_slice(payload);
}

/// Appends a DATA frame's header and offset, for a payload of `len` bytes
/// that the caller sends right after (without copying it here).
pub(crate) fn put_data_header(dst: &mut BytesMut, offset: u64, len: usize) {
    debug_assert!(len > 0 && len <= MAX_DATA);
    put_header(dst, DATA, 8 + len);
    dst.put_u64(offset);
}

/// Appends an ACK frame.
pub(crate) fn put_ack(dst: &mut BytesMut, consumed: u64) {
    put_u64(dst, ACK, consumed);
}

/// Appends a FIN frame.
pub(crate) fn put_fin(dst: &mut BytesMut, offset: u64) {
    put_u64(dst, FIN, offset);
}

/// Appends a CLOSE frame.
pub(crate) fn put_close(dst: &mut BytesMut, code: u32) {
    put_header(dst, CLOSE, 4);
    dst.put_u32(code);
}
