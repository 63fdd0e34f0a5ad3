//! Scheduling between the tunnels of one HTTP/2 connection, without timing:
//! while a bulk tunnel's writer is blocked (the socket is full, or its flow
//! control window is spent), a small write on a neighbouring stream of the
//! same connection must reach the socket ahead of the bulk bytes still
//! queued above it. Measured in bytes on an instrumented socket, not in
//! milliseconds: every byte the sender hands to its socket is logged, the
//! log is parsed as HTTP/2 frames, and the bulk DATA bytes that precede the
//! small stream's first DATA frame are counted.
//!
//! Both sides use Postern's own h2 settings and `H2Stream`, in both
//! directions (the server sending, as in a download, and the client, as in
//! an upload). The clock is paused, so "wait until everything is blocked"
//! is a sleep that returns only once no task can make progress.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use postern::testing::transport::settings;
use postern::testing::transport::stream::H2Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};

/// A socket whose writes can be held back (a full send buffer) and whose
/// written bytes are logged in order.
struct Tap {
    inner: DuplexStream,
    wire: Arc<Wire>,
}

#[derive(Default)]
pub(crate) struct Wire {
    pub(crate) log: Mutex<Vec<u8>>,
    /// While set, writes wait: the socket is full.
    full: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Wire {
    fn set_full(&self, full: bool) {
        self.full.store(full, Ordering::SeqCst);
        if !full {
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
    }

    pub(crate) fn logged(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

impl AsyncRead for Tap {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tap {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.wire.full.load(Ordering::SeqCst) {
            *self.wire.waker.lock().unwrap() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.wire.log.lock().unwrap().extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One HTTP/2 frame header as read back from the log.
#[derive(Debug)]
pub(crate) struct Frame {
    /// Offset of the frame header in the log.
    pub(crate) at: usize,
    pub(crate) kind: u8,
    pub(crate) stream: u32,
    pub(crate) len: usize,
}

pub(crate) const DATA: u8 = 0;
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(crate) fn frames(log: &[u8]) -> Vec<Frame> {
    let mut at = if log.starts_with(PREFACE) {
        PREFACE.len()
    } else {
        0
    };
    let mut out = Vec::new();
    while at + 9 <= log.len() {
        let h = &log[at..at + 9];
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        out.push(Frame {
            at,
            kind: h[3],
            stream,
            len,
        });
        at += 9 + len;
    }
    out
}

/// The two tunnels of one connection on the sending side, and the wire
/// their connection writes to.
pub(crate) struct Pair {
    /// Taken by the bulk writer.
    pub(crate) bulk: Option<H2Stream>,
    small: H2Stream,
    pub(crate) bulk_id: u32,
    small_id: u32,
    pub(crate) wire: Arc<Wire>,
    /// The receiving side's streams, bulk first (kept, and so their
    /// windows, alive).
    pub(crate) receivers: Vec<H2Stream>,
}

/// Connects an h2 client and server over an in-memory socket (the sender's
/// end tapped), opens two tunnels and returns the sender's ends.
pub(crate) async fn pair(server_sends: bool) -> Pair {
    let (c_io, s_io) = tokio::io::duplex(16 * 1024 * 1024);
    let wire = Arc::new(Wire::default());
    let tap = |inner| Tap {
        inner,
        wire: wire.clone(),
    };
    let (c_io, s_io): (Box<dyn Io>, Box<dyn Io>) = if server_sends {
        (Box::new(c_io), Box::new(tap(s_io)))
    } else {
        (Box::new(tap(c_io)), Box::new(s_io))
    };
    let server = tokio::spawn(async move {
        let mut conn = settings::server_builder()
            .handshake::<_, Bytes>(s_io)
            .await
            .unwrap();
        let mut streams = Vec::new();
        for _ in 0..2 {
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let id = u32::from(respond.stream_id());
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            streams.push((id, H2Stream::server(send, req.into_body())));
        }
        // Drives the connection from here on.
        tokio::spawn(async move { while let Some(Ok(_)) = conn.accept().await {} });
        streams
    });
    let (send, conn) = settings::client_builder()
        .handshake::<_, Bytes>(c_io)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut send = send.clone().ready().await.unwrap();
        let req = http::Request::post("http://tunnel/").body(()).unwrap();
        let (response, stream) = send.send_request(req, false).unwrap();
        let id = u32::from(stream.stream_id());
        clients.push((id, H2Stream::client(stream, response)));
    }
    let servers = server.await.unwrap();
    let (mut senders, receivers) = if server_sends {
        (servers, clients)
    } else {
        (clients, servers)
    };
    let receivers = receivers.into_iter().map(|(_, s)| s).collect();
    let (small_id, small) = senders.pop().unwrap();
    let (bulk_id, bulk) = senders.pop().unwrap();
    Pair {
        bulk: Some(bulk),
        small,
        bulk_id,
        small_id,
        wire,
        receivers,
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Returns once every task is blocked (the paused clock only advances then).
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Starts writing `n` bytes on the bulk tunnel; the counter says how many
/// the tunnel has taken so far.
fn start_bulk(mut bulk: H2Stream, n: usize) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let taken = Arc::new(AtomicU64::new(0));
    let count = taken.clone();
    let task = tokio::spawn(async move {
        // As the tunnel copy writes: a whole copy buffer at a time.
        let chunk = vec![0xb5u8; postern::testing::transport::splice::COPY_BUF];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            bulk.write_all(&chunk[..k]).await.unwrap();
            count.fetch_add(k as u64, Ordering::SeqCst);
            left -= k;
        }
        // Keeps the stream open: the test only looks at the wire.
        std::future::pending::<()>().await;
    });
    (taken, task)
}

/// Bulk DATA bytes on the wire from `from` (the log length when the small
/// write was made) up to the small stream's first DATA frame, and after it.
fn bulk_around_small(p: &Pair, from: usize) -> (usize, usize) {
    let log = p.wire.log.lock().unwrap();
    let frames = frames(&log);
    let small = frames
        .iter()
        .find(|f| f.kind == DATA && f.stream == p.small_id && f.len > 0)
        .expect("the small write never reached the socket");
    let bulk = |f: &&Frame| f.kind == DATA && f.stream == p.bulk_id && f.at >= from;
    let ahead = frames
        .iter()
        .filter(bulk)
        .filter(|f| f.at < small.at)
        .map(|f| f.len)
        .sum();
    let behind = frames
        .iter()
        .filter(bulk)
        .filter(|f| f.at > small.at)
        .map(|f| f.len)
        .sum();
    (ahead, behind)
}

/// The most bulk bytes a small write may find ahead of it once it has been
/// made: the bulk frame the connection was writing, and one more in the
/// turn-taking between streams, at 64 KiB each. The bulk writer itself had
/// 400 KiB and more queued (h2's send buffer), all of which went out first
/// when it wrote 256 KiB frames.
const AHEAD_BOUND: usize = 128 * 1024;

async fn small_write_overtakes_bulk_queued_behind_a_full_socket(server_sends: bool) {
    let mut p = pair(server_sends).await;
    settle().await;
    // The socket fills: nothing more is handed to it for now.
    p.wire.set_full(true);
    let from = p.wire.logged();
    let total = 4 * 1024 * 1024;
    let bulk = p.bulk.take().unwrap();
    let (taken, _task) = start_bulk(bulk, total);
    settle().await;
    let queued = taken.load(Ordering::SeqCst) as usize;
    assert!(
        queued > 0 && queued < total,
        "the bulk writer must be blocked with bytes queued (took {queued} of {total})"
    );
    p.small.write_all(b"p").await.unwrap();
    settle().await;
    p.wire.set_full(false);
    settle().await;
    let (ahead, behind) = bulk_around_small(&p, from);
    assert!(
        behind > 0,
        "bulk bytes must still have been queued behind the small write"
    );
    assert!(
        ahead <= AHEAD_BOUND,
        "{ahead} bulk bytes went to the socket ahead of the small write \
         (at most {AHEAD_BOUND}; {queued} were queued by the bulk writer)"
    );
}

#[tokio::test(start_paused = true)]
async fn small_write_overtakes_a_bulk_download_queued_behind_a_full_socket() {
    small_write_overtakes_bulk_queued_behind_a_full_socket(true).await;
}

#[tokio::test(start_paused = true)]
async fn small_write_overtakes_a_bulk_upload_queued_behind_a_full_socket() {
    small_write_overtakes_bulk_queued_behind_a_full_socket(false).await;
}

/// The other way a bulk writer blocks: its stream's window is spent because
/// the far side does not read. The small write goes out at once, with no
/// bulk byte between.
#[tokio::test(start_paused = true)]
async fn small_write_passes_a_bulk_writer_blocked_on_flow_control() {
    let mut p = pair(true).await;
    settle().await;
    let total = settings::STREAM_WINDOW as usize + 1024 * 1024;
    let bulk = p.bulk.take().unwrap();
    let (taken, _task) = start_bulk(bulk, total);
    settle().await;
    let queued = taken.load(Ordering::SeqCst) as usize;
    assert!(
        queued < total,
        "the bulk writer must be blocked by the window (took {queued} of {total})"
    );
    let from = p.wire.logged();
    p.small.write_all(b"p").await.unwrap();
    settle().await;
    let (ahead, _) = bulk_around_small(&p, from);
    assert_eq!(ahead, 0, "bulk bytes went out ahead of the small write");
}
