//! The floor under Postern's figures: two plain TCP relays in the places of
//! `postern client` and `postern server` (app → relay → relay → backend),
//! each a read/write copy of [`COPY_BUF`] bytes at a time on blocking
//! threads, no TLS, no HTTP/2. What they cost is what three loopback TCP
//! hops and two more programs on the path cost this machine; the bulk CPU
//! rows and the idle round trip are read against it.
//!
//! Their CPU is counted per thread (`/proc/self/task/TID/stat`), so the
//! benchmark's own threads in this process are not in it.

// The relays run on plain threads with blocking sockets, on purpose.
#![allow(clippy::disallowed_methods)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

use tokio_util::sync::CancellationToken;

use super::procs::{cpu_of, Cpu};
use super::relay;
use crate::transport::splice::COPY_BUF;

/// The CPU of a set of threads, those still running and those ended.
#[derive(Clone, Default)]
pub(super) struct Meter(Arc<Mutex<Threads>>);

#[derive(Default)]
struct Threads {
    /// `/proc/self/task/TID/stat` of each running thread.
    live: Vec<PathBuf>,
    /// CPU time of the threads that have ended.
    ended: Cpu,
}

impl Meter {
    /// User + system CPU seconds of every thread counted so far.
    pub(super) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        self.cpu().map(Cpu::total)
    }

    /// User and system CPU time of every thread counted so far.
    pub(super) fn cpu(&self) -> anyhow::Result<Cpu> {
        let threads = self.lock();
        let mut total = threads.ended;
        for stat in &threads.live {
            total = total + cpu_of(stat)?;
        }
        Ok(total)
    }

    /// Runs `f` on a new thread whose CPU this meter counts.
    fn spawn(&self, name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let meter = self.clone();
        thread::Builder::new().name(name.into()).spawn(move || {
            let stat = std::fs::read_link("/proc/thread-self")
                .map(|task| PathBuf::from("/proc").join(task).join("stat"));
            if let Ok(stat) = &stat {
                meter.lock().live.push(stat.clone());
            }
            f();
            if let Ok(stat) = stat {
                // Under the lock, so that no reading counts this thread
                // twice or not at all.
                let mut threads = meter.lock();
                threads.ended = threads.ended + cpu_of(&stat).unwrap_or_default();
                threads.live.retain(|s| *s != stat);
            }
        })?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Threads> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Starts two plain relays in a row in front of `target`; returns the
/// first one's address and the meter of both.
pub(super) fn spawn_pair(
    target: SocketAddr,
    shutdown: CancellationToken,
) -> io::Result<(SocketAddr, Meter)> {
    let meter = Meter::default();
    let second = spawn_relay(target, &meter, shutdown.clone())?;
    let first = spawn_relay(second, &meter, shutdown)?;
    Ok((first, meter))
}

/// One plain relay to `target`: every accepted connection is copied both
/// ways on two threads the meter counts, half-closes passed on.
fn spawn_relay(
    target: SocketAddr,
    meter: &Meter,
    shutdown: CancellationToken,
) -> io::Result<SocketAddr> {
    let meter = meter.clone();
    relay::accept_on_thread("bench-floor", shutdown, move |sock| {
        let _ = connection(sock, target, &meter);
    })
}

fn connection(inbound: TcpStream, target: SocketAddr, meter: &Meter) -> io::Result<()> {
    let upstream = TcpStream::connect(target)?;
    for sock in [&inbound, &upstream] {
        sock.set_nodelay(true)?;
    }
    let (up_from, up_to) = (inbound.try_clone()?, upstream.try_clone()?);
    meter.spawn("bench-floor-up", move || copy(up_from, up_to))?;
    meter.spawn("bench-floor-down", move || copy(upstream, inbound))?;
    Ok(())
}

/// Copies until end of input, then half-closes the output; an error ends
/// both directions.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// Bytes go through both relays unchanged in both directions, half-closes
    /// pass, and the relays' threads are counted (busy ones show CPU).
    #[tokio::test(flavor = "multi_thread")]
    async fn the_pair_relays_both_ways_and_meters_its_threads() {
        let stop = CancellationToken::new();
        let echo = TcpListener::bind("127.0.0.1:0").unwrap();
        let target = echo.local_addr().unwrap();
        let echoing = thread::spawn(move || {
            let (mut s, _) = echo.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            io::copy(&mut s, &mut w).unwrap();
            w.shutdown(Shutdown::Write).unwrap();
        });
        let (addr, meter) = spawn_pair(target, stop.clone()).unwrap();
        let total = 64 << 20;
        let got = tokio::task::spawn_blocking(move || {
            let s = TcpStream::connect(addr).unwrap();
            let mut r = s.try_clone().unwrap();
            let reader = thread::spawn(move || {
                let mut back = Vec::new();
                r.read_to_end(&mut back).unwrap();
                back
            });
            let mut w = s;
            let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
            for _ in 0..total >> 20 {
                w.write_all(&block).unwrap();
            }
            w.shutdown(Shutdown::Write).unwrap();
            reader.join().unwrap()
        })
        .await
        .unwrap();
        echoing.join().unwrap();
        assert_eq!(got.len(), total);
        assert!(got
            .iter()
            .enumerate()
            .all(|(i, b)| *b == ((i % (1 << 20)) % 251) as u8));
        // 64 MiB copied four times over loopback takes more than a tick.
        assert!(meter.cpu_seconds().unwrap() > 0.0);
        stop.cancel();
    }
}
