//! The WebSocket transport (docs/protocol.md, "WebSocket transport"): one
//! RFC 6455 connection carries one tunnel, its bytes in binary messages.
//!
//! Both sides meet WebSocket at an HTTP/2 stream of their own: the client's
//! gateway (`client::gateway`) turns each tunnel stream of an in-process
//! HTTP/2 connection into a WebSocket, and the server's HTTP/1.1 side
//! (`server::http1`) turns each WebSocket back into a stream of an
//! in-process HTTP/2 connection served like any other. So sessions, resume,
//! identity, routes, windows and metrics are the HTTP/2 code's, unchanged;
//! [`pump`] is the one place that knows how a stream's ends map onto
//! messages and close codes:
//!
//! - a binary message of one or more bytes is DATA;
//! - an empty binary message is END_STREAM (this direction's half-close);
//! - a side that has sent and received the empty message closes with 1000;
//! - close 1000 ends what is still open as END_STREAM would; close
//!   4000 + N resets the stream with HTTP/2 error code N (4008 CANCEL,
//!   4010 CONNECT_ERROR); any other close, or a connection lost without
//!   one, resets it with CANCEL: a cut, which a session resumes.
//!
//! Pings are the keepalive (the client's `--keepalive`, the server's
//! `--websocket-ping`): a side that pings and hears nothing for two
//! intervals drops the connection. Messages and frames are bounded by
//! [`MAX_MESSAGE`], so what one connection buffers before authentication
//! stays within the pre-authentication windows of the stream behind it.

use std::future::poll_fn;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The largest message (and frame) a side sends or accepts: a larger one
/// closes the connection with 1009. Writes of a tunnel are cut to this.
pub(crate) const MAX_MESSAGE: usize = 64 * 1024;

/// The largest HTTP/1.1 head either side reads (request or response).
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// How long a closing side waits for the peer's close before it drops the
/// connection.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// Receive windows of the in-process HTTP/2 hops behind a WebSocket. The
/// hop has no latency to fill, so a few messages' worth keeps it busy; and
/// it is what a slow WebSocket peer can make a stream hold.
pub(crate) const HOP_WINDOW: u32 = 4 * MAX_MESSAGE as u32;

/// Headers the upgrade request and the `101` carry themselves, or that
/// belong to one hop only: neither side passes them between the WebSocket
/// and the HTTP/2 stream it stands for.
const HOP_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "host",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "content-length",
    "sec-websocket-key",
    "sec-websocket-accept",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-protocol",
];

/// `headers` without the hop-by-hop and WebSocket ones.
pub(crate) fn passed(headers: &http::HeaderMap) -> http::HeaderMap {
    let mut out = http::HeaderMap::new();
    for (name, value) in headers {
        if !HOP_HEADERS.contains(&name.as_str()) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// The bounds every Postern WebSocket runs under.
pub(crate) fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(MAX_MESSAGE + 16)
        .write_buffer_size(0)
        .max_write_buffer_size(2 * MAX_MESSAGE + 64)
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// A WebSocket over `io` after its handshake; `read` is what arrived behind
/// the handshake's head.
pub(crate) async fn after_handshake<S>(io: S, read: Vec<u8>, role: Role) -> WebSocketStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    WebSocketStream::from_partially_read(io, read, role, Some(config())).await
}

/// Reads an HTTP/1.1 head (up to its blank line) from `io`: the head, and
/// whatever came behind it.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(io: &mut S) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = find_blank_line(&buf) {
            let rest = buf.split_off(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("HTTP/1.1 head longer than {MAX_HEAD} bytes"),
            ));
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before the end of the HTTP/1.1 head",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find_blank_line(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// The close code that carries an HTTP/2 reset with `reason`.
pub(crate) fn close_code(reason: Reason) -> u16 {
    let n = u32::from(reason);
    if reason == Reason::NO_ERROR {
        1000
    } else if n <= 999 {
        4000 + n as u16
    } else {
        4000 + u32::from(Reason::CANCEL) as u16
    }
}

/// How a close code ends the stream behind: `None` as END_STREAM (1000),
/// else a reset with the reason it carries.
pub(crate) fn reset_reason(code: u16) -> Option<Reason> {
    match code {
        1000 => None,
        4000..=4999 => Some(Reason::from(u32::from(code - 4000))),
        _ => Some(Reason::CANCEL),
    }
}

/// How the WebSocket's reading side ended, for the side that writes to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Up {
    Open,
    /// The peer sent its empty message (its half-close).
    Ended,
    /// The peer closed or the connection is gone: nothing more is sent.
    Closed,
}

/// Carries one HTTP/2 stream (`send`, `recv`) over `ws` until both are
/// done, mapping ends and resets as the module says; pings every
/// `keepalive` if given.
pub(crate) async fn pump<S>(
    ws: WebSocketStream<S>,
    mut send: SendStream<Bytes>,
    mut recv: RecvStream,
    keepalive: Option<Duration>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut tx, mut rx) = ws.split();
    let heard = AtomicBool::new(true);
    let (up_tx, mut up_rx) = watch::channel(Up::Open);
    let (down_tx, mut down_rx) = watch::channel(false);
    // WebSocket to stream.
    let up = async {
        let reading = async {
            let mut ended = false;
            while let Some(msg) = rx.next().await {
                heard.store(true, Ordering::Relaxed);
                match msg {
                    Ok(Message::Binary(data)) if ended => {
                        drop(data);
                        send.send_reset(Reason::PROTOCOL_ERROR);
                        return;
                    }
                    Ok(Message::Binary(data)) if data.is_empty() => {
                        ended = true;
                        let _ = send.send_data(Bytes::new(), true);
                        up_tx.send_replace(Up::Ended);
                    }
                    Ok(Message::Binary(data)) => {
                        if send_all(&mut send, data).await.is_err() {
                            // The stream is gone; the other half says why.
                            return;
                        }
                    }
                    Ok(Message::Ping(_) | Message::Pong(_)) => {}
                    Ok(Message::Close(frame)) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        match reset_reason(code) {
                            None if !ended => {
                                let _ = send.send_data(Bytes::new(), true);
                            }
                            None => {}
                            Some(reason) => send.send_reset(reason),
                        }
                        return;
                    }
                    // Text is not part of the mapping; raw frames never
                    // come out of a read.
                    Ok(Message::Text(_) | Message::Frame(_)) => {
                        send.send_reset(Reason::PROTOCOL_ERROR);
                        return;
                    }
                    Err(_) => break,
                }
            }
            // Gone without a close: a cut.
            send.send_reset(Reason::CANCEL);
        };
        // Once the writing half is done, the peer's close (or its last
        // messages) get a bound.
        let bounded = async {
            let _ = down_rx.wait_for(|done| *done).await;
            tokio::time::sleep(CLOSE_WAIT).await;
        };
        tokio::select! {
            () = reading => {}
            () = bounded => send.send_reset(Reason::CANCEL),
        }
        up_tx.send_replace(Up::Closed);
    };
    // Stream to WebSocket.
    let down = async {
        let mut ping = keepalive.map(|every| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let mut pinged = false;
        let mut sent_end = false;
        loop {
            tokio::select! {
                data = poll_fn(|cx| recv.poll_data(cx)), if !sent_end => match data {
                    Some(Ok(data)) => {
                        // Released once sent: the window bounds what waits here.
                        let len = data.len();
                        let mut sent = true;
                        for piece in pieces(data) {
                            sent = sent && tx.send(Message::Binary(piece)).await.is_ok();
                        }
                        let _ = recv.flow_control().release_capacity(len);
                        if !sent {
                            break;
                        }
                    }
                    None => {
                        sent_end = true;
                        if tx.send(Message::Binary(Bytes::new())).await.is_err() {
                            break;
                        }
                    }
                    Some(Err(e)) => {
                        if *up_rx.borrow() != Up::Closed {
                            let code = close_code(e.reason().unwrap_or(Reason::CANCEL));
                            let _ = tx.send(close(code)).await;
                        }
                        break;
                    }
                },
                _ = tick(&mut ping) => {
                    if pinged && !heard.swap(false, Ordering::Relaxed) {
                        // Two intervals without a word: the path is dead.
                        break;
                    }
                    heard.store(false, Ordering::Relaxed);
                    pinged = true;
                    if tx.send(Message::Ping(Bytes::new())).await.is_err() {
                        break;
                    }
                }
                changed = up_rx.changed() => {
                    let up = *up_rx.borrow();
                    if changed.is_err() || up == Up::Closed {
                        break;
                    }
                }
            }
            if sent_end && *up_rx.borrow() != Up::Open {
                if *up_rx.borrow() == Up::Ended {
                    let _ = tx.send(close(1000)).await;
                }
                break;
            }
        }
        down_tx.send_replace(true);
    };
    tokio::join!(up, down);
}

/// The next keepalive tick, never without keepalive.
async fn tick(ping: &mut Option<tokio::time::Interval>) {
    match ping {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Data cut to messages of at most [`MAX_MESSAGE`].
fn pieces(mut data: Bytes) -> impl Iterator<Item = Bytes> {
    std::iter::from_fn(move || {
        (!data.is_empty()).then(|| data.split_to(data.len().min(MAX_MESSAGE)))
    })
}

fn close(code: u16) -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: "".into(),
    }))
}

/// Sends `data` on `send` as its window allows.
async fn send_all(send: &mut SendStream<Bytes>, mut data: Bytes) -> Result<(), h2::Error> {
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(Reason::STREAM_CLOSED)),
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, false)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_carry_reset_reasons_both_ways() {
        for reason in [
            Reason::CANCEL,
            Reason::CONNECT_ERROR,
            Reason::REFUSED_STREAM,
        ] {
            assert_eq!(reset_reason(close_code(reason)), Some(reason));
        }
        assert_eq!(close_code(Reason::CONNECT_ERROR), 4010);
        assert_eq!(reset_reason(1000), None);
        assert_eq!(reset_reason(1001), Some(Reason::CANCEL));
        assert_eq!(reset_reason(1006), Some(Reason::CANCEL));
    }

    #[test]
    fn data_is_cut_to_bounded_messages() {
        let sizes: Vec<usize> = pieces(Bytes::from(vec![0u8; 2 * MAX_MESSAGE + 1]))
            .map(|p| p.len())
            .collect();
        assert_eq!(sizes, [MAX_MESSAGE, MAX_MESSAGE, 1]);
    }

    #[test]
    fn the_head_ends_at_its_blank_line() {
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_blank_line(b"GET / HTTP/1.1\r\n"), None);
    }
}
