//! A userspace delay relay that emulates a network round-trip time on
//! loopback (the kernel here has no netem).
//!
//! Each chunk read is stamped with `arrival + RTT/2` and queued; a separate
//! writer sends it at that time. Reading never waits for writing, so the
//! relay adds delay without limiting throughput (the queue is the "wire").
//! The upstream connect waits 1.5 RTT, which is when a real server would
//! accept (SYN, SYN-ACK, ACK) and when the client's first bytes would
//! arrive; without it a raw TCP baseline would be an RTT too fast.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks in flight per direction: at 64 KiB a chunk this holds far more
/// than a 20 ms RTT's worth at loopback speeds, so it never throttles.
const QUEUE: usize = 8192;
const READ: usize = 64 * 1024;

/// Starts a relay to `target` delaying each direction by `rtt / 2`; returns
/// its address.
pub async fn spawn(
    target: SocketAddr,
    rtt: Duration,
    shutdown: CancellationToken,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let sock = tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, _)) => sock,
                    Err(_) => { tokio::task::yield_now().await; continue; }
                },
                _ = shutdown.cancelled() => return,
            };
            let stop = shutdown.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = connection(sock, target, rtt) => {}
                    _ = stop.cancelled() => {}
                }
            });
        }
    });
    Ok(addr)
}

async fn connection(inbound: TcpStream, target: SocketAddr, rtt: Duration) -> io::Result<()> {
    let one_way = rtt / 2;
    inbound.set_nodelay(true)?;
    let (ir, iw) = inbound.into_split();
    // The client may send before the emulated handshake ends (its connect
    // returned at once): those bytes are stamped now, not after the connect.
    let (up_tx, up_rx) = mpsc::channel(QUEUE);
    let upload = reader(ir, up_tx, one_way);
    let rest = async move {
        tokio::time::sleep(one_way * 3).await;
        let upstream = TcpStream::connect(target).await?;
        upstream.set_nodelay(true)?;
        let (ur, uw) = upstream.into_split();
        let (down_tx, down_rx) = mpsc::channel(QUEUE);
        tokio::join!(
            writer(up_rx, uw),
            reader(ur, down_tx, one_way),
            writer(down_rx, iw)
        );
        Ok::<_, io::Error>(())
    };
    let (_, r) = tokio::join!(upload, rest);
    r
}

/// A stamped chunk; `None` is the half-close.
type Stamped = (Instant, Option<Bytes>);

/// Reads chunks as they come and queues each with its delivery time.
async fn reader<R: AsyncRead + Unpin>(mut r: R, tx: mpsc::Sender<Stamped>, delay: Duration) {
    let mut buf = BytesMut::with_capacity(READ);
    loop {
        buf.reserve(READ);
        let chunk = match r.read_buf(&mut buf).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(buf.split().freeze()),
        };
        let end = chunk.is_none();
        if tx.send((Instant::now() + delay, chunk)).await.is_err() || end {
            return;
        }
    }
}

/// Writes each queued chunk at its delivery time.
async fn writer<W: AsyncWrite + Unpin>(mut rx: mpsc::Receiver<Stamped>, mut w: W) {
    while let Some((at, chunk)) = rx.recv().await {
        if at > Instant::now() {
            tokio::time::sleep_until(at).await;
        }
        let done = match chunk {
            Some(bytes) => w.write_all(&bytes).await.is_err(),
            None => {
                let _ = w.shutdown().await;
                true
            }
        };
        if done {
            return;
        }
    }
}
