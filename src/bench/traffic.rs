//! The benchmark's traffic backend and the application side that drives it.
//!
//! Every connection starts with the backend sending one greeting byte (so it
//! is a server-speaks-first protocol, as the setup scenario needs); the app
//! then sends one operation byte, for upload and download followed by a
//! little-endian u64 length. Bulk bytes follow a fixed pseudo-random pattern
//! whose period (a prime) matches no record or frame size, so lost, doubled
//! or reordered chunks fail the check.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The byte the backend sends first on every connection.
pub(super) const GREETING: u8 = b'P';
/// App -> backend: `U` + u64 n, then n pattern bytes; the backend answers `K` (intact) or `X`.
pub(super) const UPLOAD: u8 = b'U';
/// App -> backend: `D` + u64 n; the backend sends n pattern bytes, then half-closes.
pub(super) const DOWNLOAD: u8 = b'D';
/// App -> backend: echo everything until EOF.
pub(super) const ECHO: u8 = b'E';
/// App -> backend: close at once.
pub(super) const QUIT: u8 = b'Q';

const PERIOD: usize = 131_071; // 2^17 - 1, a prime
/// Largest slice taken from the pattern at a time.
const CHUNK: usize = 64 * 1024;

fn pattern() -> &'static [u8] {
    static BLOCK: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block: Vec<u8> = (0..PERIOD)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        // One period plus a chunk's worth repeated, so any slice is contiguous.
        block.extend_from_within(..CHUNK);
        block
    })
}

/// The pattern bytes at stream `offset`, at most [`CHUNK`] long.
fn pattern_at(offset: u64, len: usize) -> &'static [u8] {
    let start = (offset % PERIOD as u64) as usize;
    &pattern()[start..start + len.min(CHUNK)]
}

/// Starts the backend on an ephemeral loopback port.
pub(super) async fn spawn_backend(shutdown: CancellationToken) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let sock = tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, _)) => sock,
                    // EMFILE and the like: the scenario sees the failure.
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            tokio::spawn(async move {
                let _ = serve(sock).await;
            });
        }
    });
    Ok(addr)
}

async fn serve(mut sock: TcpStream) -> io::Result<()> {
    sock.set_nodelay(true)?;
    sock.write_all(&[GREETING]).await?;
    let mut op = [0u8; 1];
    if sock.read(&mut op).await? == 0 {
        return Ok(());
    }
    match op[0] {
        UPLOAD => {
            let n = sock.read_u64_le().await?;
            let intact = sink(&mut sock, n).await?;
            sock.write_all(if intact { b"K" } else { b"X" }).await?;
        }
        DOWNLOAD => {
            let n = sock.read_u64_le().await?;
            source(&mut sock, n).await?;
        }
        ECHO => {
            // An interactive peer is a program of its own, not a task queued
            // behind this runtime's bulk transfers: it echoes on a thread.
            let sock = sock.into_std()?;
            sock.set_nonblocking(false)?;
            return tokio::task::spawn_blocking(move || echo_blocking(sock))
                .await
                .map_err(io::Error::other)?;
        }
        _ => {}
    }
    sock.shutdown().await
}

/// Writes `n` pattern bytes.
async fn source<W: AsyncWrite + Unpin>(w: &mut W, n: u64) -> io::Result<()> {
    let mut sent = 0u64;
    while sent < n {
        let len = (n - sent).min(CHUNK as u64) as usize;
        w.write_all(pattern_at(sent, len)).await?;
        sent += len as u64;
    }
    Ok(())
}

/// Reads exactly `n` bytes and says whether they were the pattern.
async fn sink<R: AsyncRead + Unpin>(r: &mut R, n: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    let mut got = 0u64;
    let mut intact = true;
    while got < n {
        let want = (n - got).min(CHUNK as u64) as usize;
        let k = r.read(&mut buf[..want]).await?;
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        intact &= buf[..k] == *pattern_at(got, k);
        got += k as u64;
    }
    Ok(intact)
}

/// Connects to `addr` (the client's listener, or the backend directly) and
/// waits for the greeting; returns the socket and the time to first byte.
pub(super) async fn connect(addr: SocketAddr) -> io::Result<(TcpStream, Duration)> {
    tokio::time::timeout(Duration::from_secs(30), connect_inner(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first byte within 30 s"))?
}

async fn connect_inner(addr: SocketAddr) -> io::Result<(TcpStream, Duration)> {
    let started = Instant::now();
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let first = sock.read_u8().await?;
    let elapsed = started.elapsed();
    if first != GREETING {
        return Err(io::Error::other(format!("bad greeting byte {first:#x}")));
    }
    Ok((sock, elapsed))
}

/// Uploads `n` bytes through a new connection; returns the time from the
/// first byte sent to the backend's verdict.
pub(super) async fn upload(addr: SocketAddr, n: u64) -> io::Result<Duration> {
    let (mut sock, _) = connect(addr).await?;
    let started = Instant::now();
    let mut head = vec![UPLOAD];
    head.extend_from_slice(&n.to_le_bytes());
    sock.write_all(&head).await?;
    source(&mut sock, n).await?;
    let verdict = sock.read_u8().await?;
    let elapsed = started.elapsed();
    if verdict != b'K' {
        return Err(io::Error::other("uploaded bytes arrived altered"));
    }
    Ok(elapsed)
}

/// Downloads and verifies `n` bytes through a new connection.
pub(super) async fn download(addr: SocketAddr, n: u64) -> io::Result<Duration> {
    let (mut sock, _) = connect(addr).await?;
    let started = Instant::now();
    let mut head = vec![DOWNLOAD];
    head.extend_from_slice(&n.to_le_bytes());
    sock.write_all(&head).await?;
    let intact = sink(&mut sock, n).await?;
    let elapsed = started.elapsed();
    if !intact {
        return Err(io::Error::other("downloaded bytes arrived altered"));
    }
    if sock.read_u8().await.is_ok() {
        return Err(io::Error::other("more bytes than requested arrived"));
    }
    Ok(elapsed)
}

/// Downloads (or, with `up`, uploads) without end, adding the bytes moved
/// to `count`, until `stop`.
pub(super) async fn stream_until(
    addr: SocketAddr,
    count: Arc<AtomicU64>,
    stop: CancellationToken,
    up: bool,
) -> io::Result<()> {
    let (mut sock, _) = connect(addr).await?;
    let mut head = vec![if up { UPLOAD } else { DOWNLOAD }];
    head.extend_from_slice(&u64::MAX.to_le_bytes());
    sock.write_all(&head).await?;
    if up {
        let mut sent = 0u64;
        loop {
            let chunk = pattern_at(sent, CHUNK);
            let k = tokio::select! {
                r = sock.write(chunk) => r?,
                _ = stop.cancelled() => return Ok(()),
            };
            sent += k as u64;
            count.fetch_add(k as u64, Ordering::Relaxed);
        }
    }
    let mut buf = vec![0u8; CHUNK];
    loop {
        let k = tokio::select! {
            r = sock.read(&mut buf) => r?,
            _ = stop.cancelled() => return Ok(()),
        };
        if k == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        count.fetch_add(k as u64, Ordering::Relaxed);
    }
}

/// Echoes until EOF on a blocking socket, then half-closes.
fn echo_blocking(mut sock: std::net::TcpStream) -> io::Result<()> {
    use std::io::{Read, Write};
    let mut buf = [0u8; 16 * 1024];
    loop {
        match sock.read(&mut buf)? {
            0 => return sock.shutdown(std::net::Shutdown::Write),
            n => sock.write_all(&buf[..n])?,
        }
    }
}

/// Opens an echo connection and times `samples` one-byte round trips (µs).
pub(super) async fn ping_pong(addr: SocketAddr, samples: usize) -> io::Result<Vec<f64>> {
    ping_pong_for(addr, samples, Duration::ZERO).await
}

/// Like [`ping_pong`], going on until `span` has passed as well (so that a
/// bulk transfer beside it is measured over a useful window).
pub(super) async fn ping_pong_for(
    addr: SocketAddr,
    samples: usize,
    span: Duration,
) -> io::Result<Vec<f64>> {
    let (mut sock, _) = connect(addr).await?;
    sock.write_all(&[ECHO]).await?;
    // The pings run on a thread of their own with a blocking socket, as an
    // interactive program beside a bulk one does: what they measure is the
    // path, not this runtime's queue behind the bulk transfer's tasks.
    let sock = sock.into_std()?;
    sock.set_nonblocking(false)?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))?;
    tokio::task::spawn_blocking(move || ping_blocking(sock, samples, span))
        .await
        .map_err(io::Error::other)?
}

fn ping_blocking(
    mut sock: std::net::TcpStream,
    samples: usize,
    span: Duration,
) -> io::Result<Vec<f64>> {
    use std::io::{Read, Write};
    let mut times = Vec::with_capacity(samples);
    let begun = Instant::now();
    let mut back = [0u8; 1];
    // One untimed round trip first: the tunnel's lazy set-up is not latency.
    for i in 0.. {
        if i > samples && begun.elapsed() >= span {
            break;
        }
        let started = Instant::now();
        sock.write_all(b".")?;
        sock.read_exact(&mut back)?;
        if back[0] != b'.' {
            return Err(io::Error::other("echo returned a different byte"));
        }
        if i > 0 {
            times.push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(times)
}

/// One short-lived connection: greeting down, `Q` up, wait for the close.
pub(super) async fn quick_exchange(addr: SocketAddr) -> io::Result<()> {
    let (mut sock, _) = connect(addr).await?;
    sock.write_all(&[QUIT]).await?;
    let mut rest = [0u8; 1];
    match sock.read(&mut rest).await? {
        0 => Ok(()),
        _ => Err(io::Error::other("unexpected bytes after QUIT")),
    }
}
