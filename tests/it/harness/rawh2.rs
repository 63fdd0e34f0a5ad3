//! A deliberately dumb HTTP/2 client that writes frames byte by byte, so the
//! attack tests can send what no well-behaved library would: resets right
//! after HEADERS, endless CONTINUATION frames, floods of SETTINGS and PING.
//!
//! Header blocks use HPACK "literal without indexing, new name" with raw
//! (non-Huffman) strings: valid for any decoder and needing no table state.
//! Incoming frames are only classified (type, flags, stream), never decoded.

// The frame-type and flag table below is kept whole, used or not.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::watch;

pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;

pub(crate) const CANCEL: u32 = 0x8;
pub(crate) const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame: the 9-byte header plus payload.
pub(crate) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    assert!(len < 1 << 24, "frame payload too long");
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `first` holds the
/// bits above the prefix.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut value: usize) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

fn hpack_str(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0x00, 7, s.len());
    out.extend_from_slice(s);
}

/// A header block of literal fields without indexing, new names.
pub(crate) fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        hpack_str(&mut out, name.as_bytes());
        hpack_str(&mut out, value.as_bytes());
    }
    out
}

/// The request headers of a tunnel POST to `/`.
pub(crate) fn post_block() -> Vec<u8> {
    header_block(&[
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "localhost"),
    ])
}

/// What the server has sent on one connection, as seen by the reader task.
#[derive(Debug, Default, Clone)]
pub(crate) struct Seen {
    /// Frames received, by type.
    pub frames: HashMap<u8, usize>,
    /// Error code of the server's GOAWAY, if it sent one.
    pub goaway: Option<u32>,
    /// Streams the server reset, with the error code.
    pub resets: HashMap<u32, u32>,
    /// Streams the server answered with HEADERS; the flag says END_STREAM,
    /// which for this server means "not a tunnel" (4xx/5xx with a body, or
    /// an error answered at once).
    pub responses: HashMap<u32, bool>,
    /// The server closed the TCP connection (EOF or reset).
    pub closed: bool,
    /// Each stream's DATA payloads, concatenated (padding is not expected).
    pub bodies: HashMap<u32, Vec<u8>>,
    /// Streams the server ended with END_STREAM on a DATA frame.
    pub ended: std::collections::HashSet<u32>,
}

/// One whole frame at the start of a buffer of frames as they arrive.
pub(crate) struct Frame<'a> {
    pub kind: u8,
    pub flags: u8,
    /// The stream id, reserved bit cleared.
    pub stream: u32,
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The frame `buf` starts with, once all of it is in (its length on
    /// the wire is `9 + payload.len()`).
    pub(crate) fn first(buf: &'a [u8]) -> Option<Frame<'a>> {
        let len = u32::from_be_bytes([0, *buf.first()?, *buf.get(1)?, *buf.get(2)?]) as usize;
        let payload = buf.get(9..9 + len)?;
        Some(Frame {
            kind: buf[3],
            flags: buf[4],
            stream: u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff,
            payload,
        })
    }
}

/// A raw HTTP/2 connection: writes go straight to the socket; a background
/// task reads and classifies everything the server sends.
pub(crate) struct RawConn {
    pub write: OwnedWriteHalf,
    pub seen: Arc<Mutex<Seen>>,
    changed: watch::Receiver<u64>,
}

impl RawConn {
    /// Connects and sends nothing yet.
    pub(crate) async fn connect(addr: SocketAddr) -> RawConn {
        let sock = TcpStream::connect(addr).await.expect("connect to server");
        sock.set_nodelay(true).expect("nodelay");
        let (mut read, write) = sock.into_split();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (tx, changed) = watch::channel(0u64);
        let state = seen.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = match read.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut s = state.lock().unwrap();
                while let Some(Frame {
                    kind,
                    flags,
                    stream,
                    payload,
                }) = Frame::first(&buf)
                {
                    let len = payload.len();
                    *s.frames.entry(kind).or_default() += 1;
                    match kind {
                        GOAWAY if len >= 8 => {
                            s.goaway = Some(u32::from_be_bytes([
                                payload[4], payload[5], payload[6], payload[7],
                            ]));
                        }
                        RST_STREAM if len == 4 => {
                            let code = u32::from_be_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]);
                            s.resets.insert(stream, code);
                        }
                        HEADERS => {
                            s.responses.insert(stream, flags & END_STREAM != 0);
                        }
                        DATA => {
                            s.bodies
                                .entry(stream)
                                .or_default()
                                .extend_from_slice(payload);
                            if flags & END_STREAM != 0 {
                                s.ended.insert(stream);
                            }
                        }
                        _ => {}
                    }
                    buf.drain(..9 + len);
                }
                drop(s);
                tx.send_modify(|v| *v += 1);
            }
            state.lock().unwrap().closed = true;
            tx.send_modify(|v| *v += 1);
        });
        RawConn {
            write,
            seen,
            changed,
        }
    }

    /// Connects, sends the client preface and an empty SETTINGS frame.
    pub(crate) async fn handshake(addr: SocketAddr) -> RawConn {
        let mut c = RawConn::connect(addr).await;
        c.send(PREFACE).await.expect("preface");
        c.send(&frame(SETTINGS, 0, 0, &[])).await.expect("settings");
        c
    }

    /// Writes raw bytes; an error means the server closed the connection.
    pub(crate) async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write.write_all(bytes).await
    }

    /// A copy of what has been seen so far.
    pub(crate) fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded by `limit`) until `cond` holds on what has been seen.
    pub(crate) async fn wait_for(
        &mut self,
        limit: std::time::Duration,
        what: &str,
        cond: impl Fn(&Seen) -> bool,
    ) -> Seen {
        let wait = async {
            loop {
                {
                    let s = self.seen.lock().unwrap();
                    if cond(&s) {
                        return s.clone();
                    }
                    if s.closed {
                        // Nothing more will arrive.
                        return s.clone();
                    }
                }
                if self.changed.changed().await.is_err() {
                    return self.seen();
                }
            }
        };
        let s = tokio::time::timeout(limit, wait)
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for: {what}"));
        assert!(cond(&s), "connection closed before: {what}; saw {s:?}");
        s
    }

    /// Waits until the server closes the TCP connection.
    pub(crate) async fn wait_closed(&mut self, limit: std::time::Duration, what: &str) -> Seen {
        self.wait_for(limit, what, |s| s.closed).await
    }
}
