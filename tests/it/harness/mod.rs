//! Shared harness for the end-to-end tests: certificates, counting backends,
//! and the whole client -> (front end) -> server -> backend stack on
//! ephemeral loopback ports, configured through the real flag parser.

pub(crate) mod api;
pub(crate) mod caddy;
pub(crate) mod child;
pub(crate) mod early_watch;
pub(crate) mod haproxy;
pub(crate) mod hooks;
pub(crate) mod mitmproxy;
pub(crate) mod peer;
pub(crate) mod rawh2;
mod stack;
pub(crate) mod tinyproxy;
mod trust;

pub(crate) use api::*;
pub(crate) use hooks::*;
pub(crate) use stack::*;
pub(crate) use trust::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bound for any single test step: only there to turn a hang into a failure.
pub(crate) const LIMIT: Duration = Duration::from_secs(60);

/// A scratch directory (a [`tempfile::TempDir`], removed on drop) with
/// the two things the tests do in one: name a file in it, write one.
pub(crate) struct TempDir(tempfile::TempDir);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("postern-test-{tag}-"))
            .tempdir()
            .expect("temp dir");
        TempDir(dir)
    }

    /// The directory itself.
    pub(crate) fn root(&self) -> &Path {
        self.0.path()
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    pub(crate) fn write(&self, name: &str, contents: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write fixture");
        p.display().to_string()
    }
}

/// The certificates of a test: one CA, a server leaf for "localhost", a client leaf.
pub(crate) struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

pub(crate) const CLIENT_ID: &str = "spiffe://test.postern/client";

impl Pki {
    pub(crate) fn new() -> Pki {
        let dir = TempDir::new("pki");
        let bundle = pki::bundle(
            &["localhost".into()],
            &[CLIENT_ID.into()],
            KeyAlg::EcdsaP256,
        )
        .expect("bundle");
        dir.write("ca.pem", &bundle.ca.cert_pem());
        write_pair(&dir, "server", &bundle.server);
        write_pair(&dir, "client", &bundle.client);
        let front = bundle
            .ca
            .issue(&LeafSpec::server(&["localhost"]))
            .expect("front cert");
        write_pair(&dir, "front", &front);
        Pki { dir, ca: bundle.ca }
    }

    pub(crate) fn p(&self, name: &str) -> String {
        self.dir.path(name).display().to_string()
    }
}

pub(crate) fn write_pair(dir: &TempDir, name: &str, issued: &Issued) {
    dir.write(&format!("{name}.pem"), &issued.cert_pem);
    dir.write(&format!("{name}-key.pem"), &issued.key_pem);
}

/// What the test backend does with each connection.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Backend {
    /// Echo everything; half-close after the client does.
    Echo,
    /// Read to EOF, then answer with the SHA-256 of what arrived, then close:
    /// the answer can only come back if the half-close got through.
    HashAfterEof,
    /// Write a banner first, then close.
    Banner,
}

/// A loopback backend that counts the connections it accepts.
pub(crate) struct TestBackend {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
}

impl TestBackend {
    pub(crate) async fn start(kind: Backend) -> TestBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let accepts = Arc::new(AtomicUsize::new(0));
        let count = accepts.clone();
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    match kind {
                        Backend::Echo => {
                            let (mut r, mut w) = sock.split();
                            let _ = tokio::io::copy(&mut r, &mut w).await;
                            let _ = w.shutdown().await;
                        }
                        Backend::HashAfterEof => {
                            let mut all = Vec::new();
                            if sock.read_to_end(&mut all).await.is_ok() {
                                let digest = Sha256::digest(&all);
                                let _ = sock.write_all(hex(&digest).as_bytes()).await;
                                let _ = sock.shutdown().await;
                            }
                        }
                        Backend::Banner => {
                            let _ = sock.write_all(BANNER.as_bytes()).await;
                            let _ = sock.shutdown().await;
                        }
                    }
                });
            }
        });
        TestBackend { addr, accepts }
    }

    pub(crate) fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// An address nothing listens on.
pub(crate) async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// Runs one banner tunnel (h2c, inner mTLS) with the certificate set in
/// `dir` (ca.pem, server.pem/-key, client.pem/-key, server named localhost);
/// returns what the app read and the server's report of the tunnel.
pub(crate) async fn banner_with_files(dir: &Path) -> (Vec<u8>, TunnelReport) {
    let p = |f: &str| dir.join(f).display().to_string();
    let backend = TestBackend::start(Backend::Banner).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) = start_server(
        backend.addr,
        &[
            "--cert",
            &p("server.pem"),
            "--key",
            &p("server-key.pem"),
            "--client-ca",
            &p("ca.pem"),
        ],
        &shutdown,
    )
    .await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let client_flags = [
        "--cert",
        &p("client.pem"),
        "--key",
        &p("client-key.pem"),
        "--ca",
        &p("ca.pem"),
        "--server-name",
        "localhost",
    ];
    let client = start_client(&url, &client_flags, &shutdown).await;
    let got = read_all(client).await.expect("read through the tunnel");
    let report = next_report(&mut reports).await;
    shutdown.cancel();
    (got, report)
}

/// An open local connection through the client, checked with one round trip.
pub(crate) async fn open_echo(client: SocketAddr, tag: u64) -> TcpStream {
    let mut sock = TcpStream::connect(client).await.expect("connect client");
    sock.set_nodelay(true).expect("nodelay");
    echo(&mut sock, tag).await;
    sock
}

/// Sends a chunk on an open echo tunnel and checks it comes back intact.
pub(crate) async fn echo(sock: &mut TcpStream, seed: u64) {
    let data = random_bytes(64 * 1024, seed);
    let mut back = vec![0u8; data.len()];
    let (mut r, mut w) = sock.split();
    let both = async { tokio::join!(w.write_all(&data), r.read_exact(&mut back)) };
    let (wr, rd) = tokio::time::timeout(LIMIT, both).await.expect("echo hung");
    wr.expect("echo write");
    rd.expect("echo read");
    assert!(back == data, "echo {seed} came back altered");
}

/// `count` tunnels through `addr` to a hashing backend, each sending 500 KB
/// of random bytes from `seed` on: each must come back as its SHA-256
/// (`log` tells what went wrong otherwise).
pub(crate) async fn hashed_round_trips(
    addr: SocketAddr,
    seed: u64,
    count: u64,
    log: &dyn Fn() -> String,
) {
    for seed in seed..seed + count {
        let data = random_bytes(500_000, seed);
        let back = round_trip(addr, &data).await.expect("hashed round trip");
        assert_eq!(String::from_utf8_lossy(&back), sha256(&data), "{}", log());
    }
}

/// Writes `data` to `addr`, half-closes, and reads everything that comes back.
pub(crate) async fn round_trip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut sock = TcpStream::connect(addr).await?;
    sock.set_nodelay(true)?;
    let (mut r, mut w) = sock.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut back = Vec::new();
    let read = r.read_to_end(&mut back);
    let (wr, rd) = tokio::time::timeout(LIMIT, async { tokio::join!(write, read) })
        .await
        .map_err(|_| std::io::Error::other("round trip timed out"))?;
    rd?;
    // A write error after the peer closed is fine if the read side finished.
    let _ = wr;
    Ok(back)
}

/// Connects to `addr` and reads until the peer closes (EOF or reset).
pub(crate) async fn read_all(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut sock = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(LIMIT, sock.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timed out: connection left hanging"))??;
    Ok(buf)
}

pub(crate) fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Opens `n` concurrent tunnels to `addr`, tunnel `i` echoing
/// `size_of(i)` random bytes seeded with `seed + i`, and asserts that each
/// comes back intact (by SHA-256). Returns how many completed.
pub(crate) async fn echo_many(
    addr: SocketAddr,
    n: u64,
    seed: u64,
    size_of: fn(u64) -> usize,
) -> u64 {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(async move {
            let data = random_bytes(size_of(i), seed + i);
            let back = round_trip(addr, &data).await.expect("echo");
            (sha256(&back), sha256(&data))
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        let (got, want) = r.expect("task");
        assert_eq!(got, want);
        done += 1;
    }
    done
}

pub(crate) fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Polls `check` every 20 ms until it holds, for at most [`LIMIT`]; false
/// if it never did.
pub(crate) async fn poll<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// The kernel's send and receive queue lengths (bytes written and not yet
/// acknowledged, bytes received and not yet read) of the established IPv4
/// connection with local port `local` (and remote port `remote`, if
/// given), from /proc/net/tcp.
pub(crate) fn tcp_queues(local: u16, remote: Option<u16>) -> Option<(u64, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next()?, 16).ok();
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if port(f.get(1)?)? != local || *f.get(3)? != "01" {
            return None;
        }
        if remote.is_some_and(|r| port(f[2]) != Some(r)) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}
