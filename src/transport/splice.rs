//! The byte path of an established tunnel: a bidirectional copy that honours
//! half-close in each direction, counts bytes, and says how it ended; a
//! bulk copy takes turns, on its worker and on the CPU.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

/// Copy buffer per direction, and so the most one poll of a pump reads,
/// encrypts or decrypts before it yields (see `Pump::poll`). Every tunnel
/// of a connection shares one worker thread, so this is what a small
/// exchange finds ahead of it there. Measured with `postern bench --quick`
/// on 2 cores (1-byte ping-pong beside a bulk download / upload on the same
/// connection, p50; bulk CPU client + server): 256 KiB 5.0 / 4.9 ms and
/// 3.3–3.7 s/GB; 64 KiB 0.88 / 0.75 ms; 32 KiB 0.53 / 0.45 ms and 2.8–3.2
/// s/GB; 16 KiB 0.47 / 0.33 ms but 3.5–4.3 s/GB. (An older measurement,
/// before the pumps yielded, had favoured 256 KiB for CPU.) The buffer is
/// allocated at the first read and never zeroed, and idle tunnels do not
/// pay for it: untouched pages are not resident.
pub const COPY_BUF: usize = 32 * 1024;

/// Bytes moved by a finished tunnel.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    /// Bytes from the local (client-side app or backend) socket into the tunnel.
    pub inbound: u64,
    /// Bytes from the tunnel out to the local socket.
    pub outbound: u64,
}

/// Copies both ways until both directions have ended (EOF is passed on as a
/// half-close), or either side fails. The totals are kept even on failure.
///
/// This is `tokio::io::copy_bidirectional` with one difference that
/// measured: tokio zeroes its two buffers for every tunnel (512 KiB at this
/// size), which was 9 % of the server's CPU while it set up tunnels at full
/// rate; these buffers are filled straight from the socket instead.
pub(crate) async fn splice<A, B>(a: &mut A, b: &mut B) -> (io::Result<()>, Totals)
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut inbound = Pump::default();
    let mut outbound = Pump::default();
    let result = std::future::poll_fn(|cx| {
        let a_to_b = inbound.poll(cx, &mut *a, &mut *b);
        let b_to_a = outbound.poll(cx, &mut *b, &mut *a);
        match (a_to_b, b_to_a) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await;
    let totals = Totals {
        inbound: inbound.moved,
        outbound: outbound.moved,
    };
    (result, totals)
}

/// One direction of a splice: read into the buffer, write it out, flush
/// before waiting for more input, and pass EOF on as a shutdown.
#[derive(Default)]
struct Pump {
    buf: BytesMut,
    eof: bool,
    done: bool,
    need_flush: bool,
    moved: u64,
}

impl Pump {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        // Neither side yields on its own while data flows: a tokio socket's
        // cooperative budget would only end the loop after 128 writes, and
        // on the receiving side of a bulk tunnel (whose HTTP/2 stream holds
        // megabytes ready) one poll decrypted and copied for milliseconds
        // while the connection task, and every other tunnel on the worker,
        // waited. So the pump yields after a copy buffer's worth (see
        // `COPY_BUF` for what that size bought; before this yield, p50
        // beside a bulk download was 13–16 ms).
        let mut moved_now = 0;
        loop {
            if moved_now >= COPY_BUF {
                offer_cpu();
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if !self.eof {
                if self.buf.is_empty() {
                    // Empty: this reuses the whole allocation (or makes it).
                    self.buf.reserve(COPY_BUF);
                }
                if self.buf.len() < self.buf.capacity() {
                    match poll_read_buf(Pin::new(&mut *r), cx, &mut self.buf) {
                        Poll::Ready(Ok(0)) => self.eof = true,
                        Poll::Ready(Ok(n)) => self.moved += n as u64,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending if self.buf.is_empty() => {
                            // Nothing to write until more arrives: push out
                            // what the writer holds first.
                            if self.need_flush {
                                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                                self.need_flush = false;
                            }
                            return Poll::Pending;
                        }
                        Poll::Pending => {}
                    }
                }
            }
            while !self.buf.is_empty() {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.buf.advance(n);
                moved_now += n;
                self.need_flush = true;
            }
            if self.eof {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Offers the CPU to threads the kernel woke while this one worked
/// (`sched_yield`), at the end of a turn a bulk pump stops for its share,
/// at most once per [`OFFER_EVERY`] on a thread; with nothing else
/// runnable it returns at once.
///
/// The yield to tokio above lets the worker's other tasks run; this one
/// is for the threads of other processes: a ping's echo in the backend, the
/// SSH client reading its byte. Traced with `perf record -e sched:*` during
/// `postern bench --scenario beside` on 2 CPUs, the slow round trips
/// (> 3 ms) were a woken backend or application thread waiting 1–6 ms in
/// the run queue of a CPU where a Postern worker ran bulk work (the kernel
/// let the worker finish its slice). Measured, p99 beside a bulk download /
/// upload (`--quick`, alternating runs): 3.2–5.3 / 5.2–5.3 ms without,
/// 1.3–2.8 / 1.2–1.6 ms offering at every turn, 1.3–2.0 / 1.6–2.0 ms at
/// most every 200 µs; one-tunnel download 340–502 MB/s offering at every
/// turn against 496–591 every 200 µs (and 491–511 without).
fn offer_cpu() {
    thread_local! {
        static LAST_OFFER: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    if LAST_OFFER.with(|last| offer_due(last, Instant::now())) {
        #[cfg(test)]
        tests::OFFERS.with(|n| n.set(n.get() + 1));
        std::thread::yield_now();
    }
}

/// The least time between two CPU offers on one thread (see [`offer_cpu`]).
const OFFER_EVERY: Duration = Duration::from_micros(200);

/// Whether an offer is due at `now`; if so, `now` becomes the last one.
fn offer_due(last: &Cell<Option<Instant>>, now: Instant) -> bool {
    let due = last
        .get()
        .map_or(true, |at| now.saturating_duration_since(at) >= OFFER_EVERY);
    if due {
        last.set(Some(now));
    }
    due
}

/// Closes a socket with RST instead of FIN, so that a reset on the far side
/// of the tunnel reaches the local peer as a reset.
pub(crate) fn abort(sock: &TcpStream) {
    let _ = sock.set_zero_linger();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        /// How often this thread's pumps offered the CPU (`offer_cpu`).
        pub(super) static OFFERS: Cell<usize> = const { Cell::new(0) };
    }

    /// Data both ways through small pipes (so writes wait and the buffer is
    /// reused), EOF passed on as a half-close, an answer that starts only
    /// after it, and the byte counts.
    #[tokio::test]
    async fn splice_moves_both_ways_passes_eof_on_and_counts() {
        let (mut app, mut a) = tokio::io::duplex(4096);
        let (mut b, mut far) = tokio::io::duplex(4096);
        let upload: Vec<u8> = (0..3 * COPY_BUF + 123)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let sent = upload.clone();
        let app_side = tokio::spawn(async move {
            app.write_all(&sent).await.unwrap();
            app.shutdown().await.unwrap();
            let mut answer = Vec::new();
            app.read_to_end(&mut answer).await.unwrap();
            answer
        });
        let far_side = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            // Answers only once the upload's EOF has arrived.
            far.write_all(&got[..1000]).await.unwrap();
            far.shutdown().await.unwrap();
            got
        });
        let (result, totals) = splice(&mut a, &mut b).await;
        result.unwrap();
        assert_eq!(far_side.await.unwrap(), upload);
        assert_eq!(app_side.await.unwrap(), upload[..1000]);
        assert_eq!(
            totals,
            Totals {
                inbound: upload.len() as u64,
                outbound: 1000
            }
        );
    }

    /// Records the size of every read that returned bytes.
    struct Reads<R> {
        inner: R,
        sizes: Vec<usize>,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Reads<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            let n = buf.filled().len() - before;
            if n > 0 {
                self.sizes.push(n);
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Takes every write whole and records its size.
    #[derive(Default)]
    struct Writes(Vec<usize>);

    impl AsyncWrite for Writes {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.push(buf.len());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// With more than a turn's worth waiting, each poll moves one copy
    /// buffer and wakes the task to go on (so the other tunnels of its
    /// worker get their turn); the last poll moves the rest and, with
    /// nothing left to read, waits without waking itself.
    #[tokio::test]
    async fn each_turn_moves_one_copy_buffer_wakes_the_task_and_offers_the_cpu() {
        let offers = || OFFERS.with(|n| n.get());
        let waiting = 3 * COPY_BUF + 100;
        let (mut app, local) = tokio::io::duplex(4 * COPY_BUF);
        app.write_all(&vec![7u8; waiting]).await.unwrap();
        let mut local = Reads {
            inner: local,
            sizes: Vec::new(),
        };
        let mut tunnel = Writes::default();
        let wakes = std::sync::Arc::new(Wakes(Default::default()));
        let waker = std::task::Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let woken = || wakes.0.load(std::sync::atomic::Ordering::Relaxed);
        let mut pump = Pump::default();
        for turn in 1..=3 {
            assert!(pump.poll(&mut cx, &mut local, &mut tunnel).is_pending());
            assert_eq!(tunnel.0.iter().sum::<usize>(), turn * COPY_BUF);
            assert_eq!(
                woken(),
                turn,
                "a turn that stops for its share wakes the task"
            );
            assert!(
                (1..=turn).contains(&offers()),
                "and offers the CPU to other threads, at most once a turn"
            );
        }
        let offered = offers();
        assert!(pump.poll(&mut cx, &mut local, &mut tunnel).is_pending());
        assert_eq!(tunnel.0, [COPY_BUF, COPY_BUF, COPY_BUF, 100]);
        assert_eq!(local.sizes, [COPY_BUF, COPY_BUF, COPY_BUF, 100]);
        assert_eq!(
            woken(),
            3,
            "waiting for input, the pump does not wake itself"
        );
        assert_eq!(offers(), offered, "nor offer the CPU: it is about to sleep");
        assert_eq!(pump.moved, waiting as u64);
    }

    #[test]
    fn the_cpu_is_offered_at_most_once_per_interval() {
        let last = Cell::new(None);
        let start = Instant::now();
        assert!(offer_due(&last, start), "the first turn offers");
        assert!(!offer_due(&last, start + OFFER_EVERY / 2));
        assert!(!offer_due(
            &last,
            start + OFFER_EVERY - Duration::from_nanos(1)
        ));
        assert!(offer_due(&last, start + OFFER_EVERY));
        assert!(!offer_due(&last, start + OFFER_EVERY + OFFER_EVERY / 2));
        assert!(offer_due(&last, start + 3 * OFFER_EVERY));
    }

    #[tokio::test]
    async fn splice_reports_a_failing_side_with_the_bytes_moved_so_far() {
        let (mut app, mut a) = tokio::io::duplex(4096);
        let (mut b, far) = tokio::io::duplex(4096);
        drop(far);
        app.write_all(b"hello").await.unwrap();
        let (result, totals) = splice(&mut a, &mut b).await;
        assert!(result.is_err(), "writing to a closed pipe must fail");
        assert_eq!(totals.inbound, 5);
    }
}
