//! A userspace delay relay that emulates a network round-trip time on
//! loopback (the kernel here has no netem).
//!
//! Each chunk read is stamped with `arrival + RTT/2` and queued; a separate
//! writer sends it at that time. Reading never waits for writing, so the
//! relay adds delay without limiting throughput (the queue is the "wire").
//! The upstream connect waits 1.5 RTT, which is when a real server would
//! accept (SYN, SYN-ACK, ACK) and when the client's first bytes would
//! arrive; without it a raw TCP baseline would be an RTT too fast.
//!
//! The relay runs on plain threads with blocking sockets: a thread sleeps to
//! within tens of microseconds of its deadline, while the runtime's timer
//! rounds every wait up to the next millisecond — at 20 ms RTT that added
//! up to 5 % per one-way trip and made every "RTTs" figure too high.

// The relay runs on plain threads, where blocking sleeps are the point.
#![allow(clippy::disallowed_methods)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Chunks in flight per direction: at 64 KiB a chunk this holds far more
/// than a 20 ms RTT's worth at loopback speeds, so it never throttles.
const QUEUE: usize = 8192;
const READ: usize = 64 * 1024;

/// Starts a relay to `target` delaying each direction by `rtt / 2`; returns
/// its address. It stops accepting when `shutdown` fires; relayed
/// connections end when their peers close them.
pub(super) async fn spawn(
    target: SocketAddr,
    rtt: Duration,
    shutdown: CancellationToken,
) -> io::Result<SocketAddr> {
    Ok(spawn_cuttable(target, rtt, shutdown).await?.0)
}

/// The relay's open connections, to cut them all at once.
#[derive(Clone, Default)]
pub(super) struct Cutter(Arc<Mutex<Vec<TcpStream>>>);

impl Cutter {
    /// Drops every connection open through the relay, both sides (what a
    /// front end that dies or a network that changes does to a tunnel).
    pub(super) fn cut(&self) {
        for sock in self.0.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = sock.shutdown(Shutdown::Both);
        }
    }

    fn keep(&self, sock: &TcpStream) {
        if let Ok(clone) = sock.try_clone() {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).push(clone);
        }
    }
}

/// Like [`spawn`], with a [`Cutter`] for the connections it relays.
pub(super) async fn spawn_cuttable(
    target: SocketAddr,
    rtt: Duration,
    shutdown: CancellationToken,
) -> io::Result<(SocketAddr, Cutter)> {
    let cutter = Cutter::default();
    let kept = cutter.clone();
    let addr = accept_on_thread("bench-relay", shutdown, move |sock| {
        let kept = kept.clone();
        let _ = thread::Builder::new()
            .name("bench-relay-conn".into())
            .spawn(move || connection(sock, target, rtt, &kept));
    })?;
    Ok((addr, cutter))
}

/// Listens on an ephemeral loopback port and hands each accepted socket to
/// `serve` on a plain thread named `name`, until `shutdown` fires; returns
/// the address.
pub(super) fn accept_on_thread(
    name: &str,
    shutdown: CancellationToken,
    mut serve: impl FnMut(TcpStream) + Send + 'static,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let stopped = Arc::new(AtomicBool::new(false));
    let stop = stopped.clone();
    thread::Builder::new().name(name.into()).spawn(move || {
        for sock in listener.incoming() {
            if stop.load(Ordering::Acquire) {
                return;
            }
            if let Ok(sock) = sock {
                serve(sock);
            }
        }
    })?;
    tokio::spawn(async move {
        shutdown.cancelled().await;
        stopped.store(true, Ordering::Release);
        // Wakes the accepting thread so that it sees the flag.
        let _ = tokio::net::TcpStream::connect(addr).await;
    });
    Ok(addr)
}

fn connection(
    inbound: TcpStream,
    target: SocketAddr,
    rtt: Duration,
    cutter: &Cutter,
) -> io::Result<()> {
    let one_way = rtt / 2;
    inbound.set_nodelay(true)?;
    cutter.keep(&inbound);
    // The client may send before the emulated handshake ends (its connect
    // returned at once): those bytes are stamped now, not after the connect.
    let (up_tx, up_rx) = mpsc::sync_channel(QUEUE);
    let upload = reader(inbound.try_clone()?, up_tx, one_way);
    thread::sleep(one_way * 3);
    let upstream = match TcpStream::connect(target) {
        Ok(s) => s,
        Err(e) => {
            let _ = inbound.shutdown(Shutdown::Both);
            return Err(e);
        }
    };
    upstream.set_nodelay(true)?;
    cutter.keep(&upstream);
    let (down_tx, down_rx) = mpsc::sync_channel(QUEUE);
    let download = reader(upstream.try_clone()?, down_tx, one_way);
    let send_up = thread::spawn(move || writer(up_rx, upstream));
    writer(down_rx, inbound);
    for t in [upload, download, send_up] {
        let _ = t.join();
    }
    Ok(())
}

/// A stamped chunk; `None` is the half-close.
type Stamped = (Instant, Option<Vec<u8>>);

/// Reads chunks as they come, on a thread of its own, and queues each with
/// its delivery time.
fn reader(
    mut r: TcpStream,
    tx: mpsc::SyncSender<Stamped>,
    delay: Duration,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; READ];
        loop {
            let chunk = match r.read(&mut buf) {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(buf[..n].to_vec()),
            };
            let end = chunk.is_none();
            if tx.send((Instant::now() + delay, chunk)).is_err() || end {
                return;
            }
        }
    })
}

/// Writes each queued chunk at its delivery time.
fn writer(rx: mpsc::Receiver<Stamped>, mut w: TcpStream) {
    for (at, chunk) in rx {
        let now = Instant::now();
        if at > now {
            thread::sleep(at - now);
        }
        match chunk {
            Some(bytes) => {
                if w.write_all(&bytes).is_err() {
                    // Unblocks the reader of this socket too.
                    let _ = w.shutdown(Shutdown::Both);
                    return;
                }
            }
            None => {
                let _ = w.shutdown(Shutdown::Write);
                return;
            }
        }
    }
}
