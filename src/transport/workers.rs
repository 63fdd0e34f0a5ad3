//! Worker threads, each a single-threaded runtime: an accepted connection
//! and everything it carries (its HTTP/2 connection, every tunnel on it, the
//! backend or application sockets) live on one thread.
//!
//! A tunnel's bytes pass between tasks at every hop (socket reader, TLS,
//! the HTTP/2 connection task, the other socket). On a work-stealing runtime
//! each hop may wake a task on another thread, which costs a futex wake and
//! a cache-cold CPU. Keeping a connection on one thread, as Envoy and nginx
//! do with their workers, removes those wake-ups. Measured with `postern
//! bench` on 2 cores (both processes, bulk, 512 MiB): CPU per GB fell from
//! 3.3–3.8 to 2.8–3.3 s/GB and throughput rose accordingly; 1-byte
//! ping-pong lost a wake-up per hop (see docs/performance.md).
//!
//! The trade-off: one HTTP/2 connection is served by one core. A front end
//! that multiplexes many tunnels over a single connection gets one core's
//! worth of throughput for them; many connections spread over all workers.

use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{warn, Instrument, Span};

use super::busy_poll;

/// Task polls between two looks at the sockets (tokio's default is 61).
/// A busy tunnel is always ready to run, so its HTTP/2 connection task only
/// learns of new input at these looks; until then the bytes wait in the
/// kernel, and a small exchange on the same connection waits behind them.
/// Measured with `postern bench` (1-byte ping-pong beside a bulk download on
/// the same connection, p50): 61: 22–26 ms, 8: 9–11 ms, 4: 7 ms, 1: 5 ms;
/// bulk CPU per GB was the same at 8 and 61 (2.4–2.8 s/GB); 4 cost about
/// 5 % more. Measured again once the pumps yielded every 64 KiB (`--quick`,
/// beside a download / upload, p50): 8: 4.2 / 4.9 ms, 2: 3.1 / 3.2 ms; with
/// the smaller pump quanta a look every two polls costs no CPU per GB that
/// the bulk rows can tell from noise (one `epoll_wait` per 64 KiB or so).
const EVENT_INTERVAL: u32 = 2;

/// The default worker count: one per CPU this process may use.
pub fn default_count() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// A fixed set of worker threads; dropping it stops them (tasks still
/// running on them are dropped, so callers wait for their work first).
pub struct Workers {
    workers: Vec<Worker>,
    stop: CancellationToken,
}

struct Worker {
    handle: Handle,
    /// Connections (server) or tunnels (client) currently on this worker.
    load: Arc<AtomicUsize>,
}

impl Workers {
    /// Starts `count` (at least one) worker threads named `name-N`, each
    /// polling for `busy_poll` after it wakes (see [`busy_poll`]; zero:
    /// never).
    pub fn start(count: usize, name: &str, busy_poll: Duration) -> std::io::Result<Workers> {
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        for i in 0..count.max(1) {
            let mut builder = tokio::runtime::Builder::new_current_thread();
            builder.enable_all().event_interval(EVENT_INTERVAL);
            let runtime = busy_poll::build(builder, busy_poll)?;
            let handle = runtime.handle().clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || runtime.block_on(stop.cancelled()))?;
            workers.push(Worker {
                handle,
                load: Arc::default(),
            });
        }
        Ok(Workers { workers, stop })
    }

    /// Number of workers.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Always false: there is at least one worker. (Beside `len`, as
    /// clippy asks; the tests use it.)
    #[allow(dead_code)]
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Picks a worker: the first whose load is below `fill` (so that work
    /// packs onto few threads, and with it onto few pooled connections),
    /// else the least loaded. `fill = 1` spreads work evenly.
    pub fn pick(&self, fill: usize) -> usize {
        let loads = self.workers.iter().map(|w| w.load.load(Ordering::Relaxed));
        if let Some(i) = loads.clone().position(|l| l < fill) {
            return i;
        }
        loads
            .enumerate()
            .min_by_key(|&(_, l)| l)
            .map_or(0, |(i, _)| i)
    }

    /// Moves `sock` to worker `index` and runs `work` with it there. The
    /// worker's load counts the work until it ends. `span` is entered on the
    /// worker, so log lines keep their context.
    pub fn run<F, Fut>(&self, index: usize, sock: TcpStream, span: Span, work: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let worker = &self.workers[index % self.workers.len()];
        // A tokio socket belongs to the runtime that registered it; it moves
        // as a plain (still non-blocking) socket and is registered again on
        // the worker.
        let sock = match sock.into_std() {
            Ok(sock) => sock,
            Err(e) => {
                let _enter = span.enter();
                warn!(error = %e, "cannot hand the connection to a worker");
                return;
            }
        };
        let load = Load::new(worker.load.clone());
        worker.handle.spawn(
            async move {
                let _load = load;
                match TcpStream::from_std(sock) {
                    Ok(sock) => work(sock).await,
                    Err(e) => warn!(error = %e, "cannot register the connection on a worker"),
                }
            }
            .instrument(span),
        );
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Counts one unit of work on a worker while alive.
struct Load(Arc<AtomicUsize>);

impl Load {
    fn new(count: Arc<AtomicUsize>) -> Load {
        count.fetch_add(1, Ordering::Relaxed);
        Load(count)
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn work_runs_on_the_chosen_worker_and_load_is_counted() {
        let workers = Workers::start(2, "test-worker", Duration::ZERO).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (names, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for expected in [0, 0, 1] {
            // fill = 2: two pack onto worker 0, the third goes to worker 1.
            assert_eq!(workers.pick(2), expected);
            let client = TcpStream::connect(addr).await.unwrap();
            let (sock, _) = listener.accept().await.unwrap();
            let names = names.clone();
            workers.run(expected, sock, Span::none(), move |mut sock| async move {
                let name = std::thread::current().name().unwrap().to_owned();
                names.send(name).unwrap();
                // Echo one byte, then hold the connection until EOF.
                let mut b = [0u8; 1];
                sock.read_exact(&mut b).await.unwrap();
                sock.write_all(&b).await.unwrap();
                let _ = sock.read(&mut b).await;
            });
            clients.push(client);
        }
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(seen.recv().await.unwrap());
        }
        got.sort();
        assert_eq!(got, ["test-worker-0", "test-worker-0", "test-worker-1"]);
        for c in &mut clients {
            c.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"x");
        }
        // All three still open: worker 0 holds two, worker 1 one.
        let loads = |w: &Workers| -> Vec<usize> {
            w.workers
                .iter()
                .map(|w| w.load.load(Ordering::Relaxed))
                .collect()
        };
        assert_eq!(loads(&workers), [2, 1]);
        assert_eq!(workers.pick(1), 1, "least loaded once none is below fill");
        assert_eq!(workers.pick(3), 0, "first below fill");
        drop(clients);
        // Loads drop back to zero as the work ends.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while loads(&workers) != [0, 0] {
            assert!(std::time::Instant::now() < deadline, "loads never fell");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod busy_poll_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Times worker 0 of a fresh set went to sleep while it echoed
    /// `exchanges` bytes, one at a time, each awaited by the peer.
    async fn sleeps_while_echoing(busy_poll: Duration, exchanges: usize) -> u64 {
        let workers = Workers::start(1, "test-busy-poll", busy_poll).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (sock, _) = listener.accept().await.unwrap();
        workers.run(0, sock, Span::none(), |mut sock| async move {
            let mut b = [0u8; 1];
            while sock.read_exact(&mut b).await.is_ok() {
                if sock.write_all(&b).await.is_err() {
                    break;
                }
            }
        });
        let metrics = workers.workers[0].handle.metrics();
        let mut b = [0u8; 1];
        // One exchange first: the worker has registered the socket and
        // opened its window.
        peer.write_all(b"x").await.unwrap();
        peer.read_exact(&mut b).await.unwrap();
        let before = metrics.worker_park_count(0);
        for i in 0..exchanges {
            peer.write_all(&[i as u8]).await.unwrap();
            peer.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i as u8);
        }
        metrics.worker_park_count(0) - before
    }

    #[tokio::test]
    async fn a_busy_polling_worker_takes_the_next_exchange_without_sleeping() {
        // Each exchange waits for the peer, so a worker that does not poll
        // sleeps in most of them (in some the next byte is already there
        // when it looks at its sockets between tasks).
        let exchanges = 50;
        let plain = sleeps_while_echoing(Duration::ZERO, exchanges).await;
        assert!(plain >= exchanges as u64 / 2, "slept {plain} times");
        // With a window far longer than the test, it never sleeps again.
        let polling = sleeps_while_echoing(Duration::from_secs(60), exchanges).await;
        assert_eq!(polling, 0, "a busy-polling worker slept");
    }
}
