//! Shared harness for the end-to-end tests: certificates, counting backends,
//! and the whole client -> (front end) -> server -> backend stack on
//! ephemeral loopback ports, configured through the real flag parser.

#![allow(dead_code)]

pub mod caddy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use postern::cmd::parse_args;
use postern::demo::front;
use postern::pki::{self, Ca, Issued, KeyAlg, LeafSpec};
use postern::server::TunnelReport;
use postern::tls::pem;
use postern::tls::{self, CertSlot};
use postern::{client, server};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Upper bound for any single test step: only there to turn a hang into a failure.
pub const LIMIT: Duration = Duration::from_secs(60);

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "postern-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn write(&self, name: &str, contents: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, contents).expect("write fixture");
        p.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The certificates of a test: one CA, a server leaf for "localhost", a client leaf.
pub struct Pki {
    pub dir: TempDir,
    pub ca: Ca,
}

pub const CLIENT_ID: &str = "spiffe://test.postern/client";

impl Pki {
    pub fn new() -> Pki {
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

    pub fn p(&self, name: &str) -> String {
        self.dir.path(name).display().to_string()
    }
}

pub fn write_pair(dir: &TempDir, name: &str, issued: &Issued) {
    dir.write(&format!("{name}.pem"), &issued.cert_pem);
    dir.write(&format!("{name}-key.pem"), &issued.key_pem);
}

/// What the test backend does with each connection.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// Echo everything; half-close after the client does.
    Echo,
    /// Read to EOF, then answer with the SHA-256 of what arrived, then close:
    /// the answer can only come back if the half-close got through.
    HashAfterEof,
    /// Write a banner first, then close.
    Banner,
}

/// A loopback backend that counts the connections it accepts.
pub struct TestBackend {
    pub addr: SocketAddr,
    pub accepts: Arc<AtomicUsize>,
}

impl TestBackend {
    pub async fn start(kind: Backend) -> TestBackend {
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
                            let _ = sock
                                .write_all(postern::server::backend::BANNER.as_bytes())
                                .await;
                            let _ = sock.shutdown().await;
                        }
                    }
                });
            }
        });
        TestBackend { addr, accepts }
    }

    pub fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// An address nothing listens on.
pub async fn dead_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// A running server (and optionally front end) plus a client pointed at it.
pub struct Stack {
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub front: Option<SocketAddr>,
    pub reports: mpsc::UnboundedReceiver<TunnelReport>,
    pub shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Starts `postern server` with `server_flags` (plus --backend) on loopback.
pub async fn start_server(
    backend: SocketAddr,
    server_flags: &[&str],
    shutdown: &CancellationToken,
) -> (SocketAddr, mpsc::UnboundedReceiver<TunnelReport>) {
    let backend = backend.to_string();
    let mut argv = vec!["--backend", backend.as_str()];
    argv.extend_from_slice(server_flags);
    let args: server::Args = parse_args("server", &argv).expect("server flags");
    let mut config = server::Config::from_args(&args, shutdown)
        .await
        .expect("server config");
    let rx = postern::testing::tunnel_reports(&mut config);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind server");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(server::serve(listener, Arc::new(config), shutdown.clone()));
    (addr, rx)
}

/// Starts the TLS-terminating front end in front of `upstream`.
pub async fn start_front(
    pki: &Pki,
    upstream: SocketAddr,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let key = pem::load_identity(&pki.dir.path("front.pem"), &pki.dir.path("front-key.pem"))
        .expect("front key");
    let config = tls::outer_server_config(CertSlot::new(key)).expect("front tls");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind front");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(front::serve(listener, config, upstream, shutdown.clone()));
    addr
}

/// Starts `postern client` for `url` with `client_flags`.
pub async fn start_client(
    url: &str,
    client_flags: &[&str],
    shutdown: &CancellationToken,
) -> SocketAddr {
    let mut argv = vec!["--url", url, "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(client_flags);
    let args: postern::cmd::client::Args = parse_args("client", &argv).expect("client flags");
    let forward = client::Forward::from_args(&args, url).expect("client config");
    start_forward(forward, shutdown).await
}

/// Serves an already-built forward on a loopback port.
pub async fn start_forward(forward: client::Forward, shutdown: &CancellationToken) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind client");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(client::serve(listener, Arc::new(forward), shutdown.clone()));
    addr
}

impl Stack {
    /// The full path with inner mTLS: client -> front end (TLS) -> h2c server -> backend.
    pub async fn via_front(pki: &Pki, backend: SocketAddr) -> Stack {
        Self::build(pki, backend, true, &[]).await
    }

    /// Client straight to the server over h2c (no front end).
    pub async fn direct(pki: &Pki, backend: SocketAddr) -> Stack {
        Self::build(pki, backend, false, &[]).await
    }

    /// Like `via_front`, with extra client flags (which may override the defaults).
    pub async fn build(
        pki: &Pki,
        backend: SocketAddr,
        via_front: bool,
        extra_client: &[&str],
    ) -> Stack {
        let shutdown = CancellationToken::new();
        let (server, reports) = start_server(
            backend,
            &[
                "--cert",
                &pki.p("server.pem"),
                "--key",
                &pki.p("server-key.pem"),
                "--client-ca",
                &pki.p("ca.pem"),
            ],
            &shutdown,
        )
        .await;
        let (front, url) = if via_front {
            let f = start_front(pki, server, &shutdown).await;
            (Some(f), format!("https://localhost:{}/", f.port()))
        } else {
            (None, format!("http://127.0.0.1:{}/", server.port()))
        };
        let defaults = [
            ("--cert", pki.p("client.pem")),
            ("--key", pki.p("client-key.pem")),
            ("--ca", pki.p("ca.pem")),
            ("--tls-ca", pki.p("ca.pem")),
            ("--server-name", "localhost".to_owned()),
        ];
        // A flag given in `extra_client` replaces the default one.
        let mut flags: Vec<String> = defaults
            .into_iter()
            .filter(|(flag, _)| !extra_client.contains(flag))
            .flat_map(|(flag, value)| [flag.to_owned(), value])
            .collect();
        flags.extend(extra_client.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let client = start_client(&url, &flags, &shutdown).await;
        Stack {
            client,
            server,
            front,
            reports,
            shutdown,
        }
    }

    /// The next finished-tunnel report from the server.
    pub async fn report(&mut self) -> TunnelReport {
        tokio::time::timeout(LIMIT, self.reports.recv())
            .await
            .expect("timed out waiting for a tunnel report")
            .expect("server stopped")
    }
}

/// Runs one banner tunnel (h2c, inner mTLS) with the certificate set in
/// `dir` (ca.pem, server.pem/-key, client.pem/-key, server named localhost);
/// returns what the app read and the server's report of the tunnel.
pub async fn banner_with_files(dir: &Path) -> (Vec<u8>, TunnelReport) {
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
    let report = tokio::time::timeout(LIMIT, reports.recv())
        .await
        .expect("timed out waiting for a tunnel report")
        .expect("server stopped");
    shutdown.cancel();
    (got, report)
}

/// Writes `data` to `addr`, half-closes, and reads everything that comes back.
pub async fn round_trip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
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
pub async fn read_all(addr: SocketAddr) -> std::io::Result<Vec<u8>> {
    let mut sock = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(LIMIT, sock.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::other("read timed out: connection left hanging"))??;
    Ok(buf)
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub fn sha256(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
