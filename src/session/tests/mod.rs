//! The session layer's tests, over real async I/O: tokio duplex pipes as
//! carriers, with a relay between the two ends standing in for the front
//! end, which cuts the carrier after a byte budget (anywhere, mid-frame
//! included). The helpers are here; the tests are in `wire`, `limits` and
//! `carriers`.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{Frame, FrameCodec, FrameError, MAX_DATA};
use super::*;

/// A bound for every test, so a bug shows as a failure, not a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// Two carrier ends joined by a relay that cuts both after `budget` bytes
/// (both directions counted), or never with `usize::MAX`.
fn relay(budget: usize) -> (DuplexStream, DuplexStream) {
    let (client, server, _) = gated_relay(budget);
    (client, server)
}

/// Holds back what a relay carries from the client to the server while
/// held (from the first byte it has not yet passed on).
struct Gate(tokio::sync::watch::Sender<bool>);

impl Gate {
    fn hold(&self) {
        self.0.send_replace(true);
    }
    fn release(&self) {
        self.0.send_replace(false);
    }
}

/// [`relay`] with a [`Gate`] on its client-to-server direction.
fn gated_relay(budget: usize) -> (DuplexStream, DuplexStream, Gate) {
    let (client, mut a) = tokio::io::duplex(64 * 1024);
    let (server, mut b) = tokio::io::duplex(64 * 1024);
    let (gate, mut held) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut left = budget;
        let (mut ab, mut ba) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        let mut gate_kept = true;
        while left > 0 {
            let want = left.min(ab.len());
            let open = !*held.borrow_and_update();
            tokio::select! {
                // A dropped gate stays as it was.
                changed = held.changed(), if gate_kept => gate_kept = changed.is_ok(),
                n = a.read(&mut ab[..want]), if open => match n {
                    Ok(n) if n > 0 => { if b.write_all(&ab[..n]).await.is_err() { return } left -= n }
                    _ => return,
                },
                n = b.read(&mut ba[..want]) => match n {
                    Ok(n) if n > 0 => { if a.write_all(&ba[..n]).await.is_err() { return } left -= n }
                    _ => return,
                },
            }
        }
        // Dropping both inner ends is the cut.
    });
    (client, server, Gate(gate))
}

fn config(window: usize) -> Config {
    Config {
        window,
        ..Config::with_grace(Duration::from_secs(30))
    }
}

/// A server registry, its session and the client's, on a first carrier
/// that survives `budget` bytes; both keyed.
fn pair(window: usize, budget: usize) -> (Registry, Session, Session) {
    let (registry, server, client, _) = gated_pair(window, budget);
    (registry, server, client)
}

/// [`pair`] with a [`Gate`] on the first carrier.
fn gated_pair(window: usize, budget: usize) -> (Registry, Session, Session, Gate) {
    let registry = Registry::new(config(window), Limits::default());
    let (c, s, gate) = gated_relay(budget);
    let server = registry.open(s);
    let id = server.handle().id().expect("server sessions have an id");
    let client = Session::new(config(window), c, Some(id));
    let key = ResumeKey::random();
    server.handle().set_key(key.clone());
    client.handle().set_key(key);
    // Each side drives its carrier beside its application, as a tunnel does.
    for handle in [server.handle(), client.handle()] {
        tokio::spawn(async move { handle.drive().await });
    }
    (registry, server, client, gate)
}

/// What the client's reconnect loop will do: on each detach, a new carrier
/// (with its own cut budget from `budgets`), resume on the server, complete
/// on the client. Returns the number of resumes once the session ends.
fn resumer(
    registry: Registry,
    client: SessionHandle,
    mut budgets: impl FnMut() -> usize + Send + 'static,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut watch = client.watch();
        let mut resumes = 0;
        loop {
            // Copied out first: a borrow held across the match would hold
            // the watch's lock while `complete_resume` publishes the phase.
            let phase = *watch.borrow_and_update();
            match phase {
                Phase::Ended => return resumes,
                Phase::Detached => {
                    let request = client.resume_request().expect("keyed and not ended");
                    let (c, s) = relay(budgets());
                    let (response, _) = registry.resume(&request, s).expect("resume accepted");
                    client
                        .complete_resume(c, &request, &response)
                        .expect("response verifies");
                    resumes += 1;
                }
                Phase::Attached { .. } => {}
            }
            if watch.changed().await.is_err() {
                return resumes;
            }
        }
    })
}

/// Writes `len` seeded pseudo-random bytes in random-sized writes, then
/// half-closes; returns their SHA-256.
async fn send(mut w: impl AsyncWrite + Unpin, len: usize, seed: u64) -> [u8; 32] {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 100_000];
    let mut left = len;
    while left > 0 {
        let n = rng.random_range(1..=buf.len()).min(left);
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n]).await.expect("write");
        hash.update(&buf[..n]);
        left -= n;
    }
    w.shutdown().await.expect("shutdown");
    hash.finalize().into()
}

/// Reads to EOF; returns the byte count and SHA-256.
async fn recv(mut r: impl AsyncRead + Unpin) -> (usize, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 37_000];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return (total, hash.finalize().into());
        }
        total += n;
        hash.update(&buf[..n]);
    }
}

/// Sends `len` bytes each way at once and checks both arrive whole.
async fn exchange(server: &mut Session, client: &mut Session, len: usize) {
    let (sr, sw) = tokio::io::split(server);
    let (cr, cw) = tokio::io::split(client);
    let (up, down, (up_n, up_got), (down_n, down_got)) =
        tokio::join!(send(cw, len, 1), send(sw, len, 2), recv(sr), recv(cr));
    assert_eq!((up_n, down_n), (len, len), "every byte arrived, none twice");
    assert_eq!(up, up_got, "client -> server SHA-256");
    assert_eq!(down, down_got, "server -> client SHA-256");
}

/// Reads exactly `n` bytes; `what` names the read if it stalls.
async fn read_n(s: &mut Session, n: usize, what: &str) -> Vec<u8> {
    let mut got = vec![0u8; n];
    tokio::time::timeout(LIMIT, s.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{what}: stalled"))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    got
}

/// Writes `data` and flushes it to the carrier.
async fn write_now(s: &mut Session, data: &[u8]) {
    s.write_all(data).await.expect("write");
    s.flush().await.expect("flush");
}

/// Polls one read once; `Some(error)` if it failed at once.
fn futures_poll(s: &mut Session, buf: &mut [u8]) -> Option<std::io::Error> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut rb = tokio::io::ReadBuf::new(buf);
    match std::pin::Pin::new(s).poll_read(&mut cx, &mut rb) {
        std::task::Poll::Ready(Err(e)) => Some(e),
        _ => None,
    }
}

mod carriers;
mod limits;
mod wire;
