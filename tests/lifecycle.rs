//! Lifecycle: the server draining on SIGTERM under load (the real binary as a
//! child process), the client reconnecting when its front end (Caddy) or the
//! server behind it restarts, a front end ending a tunnel at its request
//! timeout, and HTTP/2 keepalive through Caddy.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use common::caddy::{self, Caddy, Options};
use common::*;
use postern::cmd::parse_args;
use postern::server::TunnelReport;
use postern::{client, server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// `postern server` as a child process on a loopback port.
struct ServerProcess {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl ServerProcess {
    async fn spawn(pki: &Pki, backend: SocketAddr, drain_timeout: u64) -> ServerProcess {
        let port = caddy::free_port().await;
        let dir = TempDir::new("server");
        let log = std::fs::File::create(dir.path("server.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_postern"))
            .arg("server")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--backend", &backend.to_string()])
            .args([
                "--cert",
                &pki.p("server.pem"),
                "--key",
                &pki.p("server-key.pem"),
            ])
            .args(["--client-ca", &pki.p("ca.pem")])
            .args(["--drain-timeout", &drain_timeout.to_string()])
            .env("POSTERN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn postern server");
        let server = ServerProcess { child, port, dir };
        let ready = poll(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_ok() });
        assert!(ready.await, "server never listened:\n{}", server.log());
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("server.log")).unwrap_or_default()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("server pid").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    /// Waits until the listener is gone: the server has begun draining.
    async fn wait_listener_closed(&self) {
        let port = self.port;
        let closed = poll(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_err() });
        assert!(closed.await, "server kept listening after SIGTERM");
    }

    /// The exit status and the log; the limit only turns a hang into a failure.
    async fn exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(limit, self.child.wait()).await;
        let log = self.log();
        let status = status
            .unwrap_or_else(|_| panic!("server did not exit after SIGTERM:\n{log}"))
            .expect("wait server");
        (status, log)
    }
}

/// Polls `check` every 20 ms until it holds, for at most [`LIMIT`].
async fn poll<F, Fut>(mut check: F) -> bool
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

fn inner_client_flags(pki: &Pki) -> Vec<String> {
    let mut flags = vec!["--cert".to_owned(), pki.p("client.pem")];
    flags.extend(["--key".to_owned(), pki.p("client-key.pem")]);
    flags.extend(["--ca".to_owned(), pki.p("ca.pem")]);
    flags.extend(["--tls-ca".to_owned(), pki.p("ca.pem")]);
    flags.extend(["--server-name".to_owned(), "localhost".to_owned()]);
    flags
}

/// Starts a client for `url` and keeps a handle on its connection pool.
async fn client_with_pool(
    pki: &Pki,
    url: &str,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> (SocketAddr, Arc<client::Forward>) {
    let mut argv: Vec<String> = vec!["--url".into(), url.into()];
    argv.extend(inner_client_flags(pki));
    argv.extend(extra.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args: postern::cmd::client::Args = parse_args("client", &argv).expect("client flags");
    let forward = Arc::new(client::Forward::from_args(&args, url).expect("client config"));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind client");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(client::serve(listener, forward.clone(), shutdown.clone()));
    (addr, forward)
}

/// An in-process server on a given port, with a handle on its serve task.
async fn server_on(
    pki: &Pki,
    backend: SocketAddr,
    port: u16,
    shutdown: &CancellationToken,
) -> (
    tokio::task::JoinHandle<anyhow::Result<()>>,
    mpsc::UnboundedReceiver<TunnelReport>,
) {
    let mut argv = vec!["--backend".to_owned(), backend.to_string()];
    argv.extend(inner_server_flags(pki));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let args: server::Args = parse_args("server", &argv).expect("server flags");
    let mut config = server::Config::from_args(&args, shutdown)
        .await
        .expect("server config");
    let rx = postern::testing::tunnel_reports(&mut config);
    let mut listener = None;
    let bound = poll(|| {
        let ok = std::net::TcpListener::bind(("127.0.0.1", port));
        let got = ok.map(|l| listener = Some(l)).is_ok();
        async move { got }
    });
    assert!(bound.await, "port {port} never became free");
    let listener = listener.expect("listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let task = tokio::spawn(server::serve(listener, Arc::new(config), shutdown.clone()));
    (task, rx)
}

/// An open local connection through the client, checked with one round trip.
async fn open_echo(client: SocketAddr, tag: u64) -> TcpStream {
    let mut sock = TcpStream::connect(client).await.expect("connect client");
    sock.set_nodelay(true).expect("nodelay");
    echo(&mut sock, tag).await;
    sock
}

/// Sends a chunk on an open echo tunnel and checks it comes back intact.
async fn echo(sock: &mut TcpStream, seed: u64) {
    let data = random_bytes(64 * 1024, seed);
    let mut back = vec![0u8; data.len()];
    let (mut r, mut w) = sock.split();
    let both = async { tokio::join!(w.write_all(&data), r.read_exact(&mut back)) };
    let (wr, rd) = tokio::time::timeout(LIMIT, both).await.expect("echo hung");
    wr.expect("echo write");
    rd.expect("echo read");
    assert!(back == data, "echo {seed} came back altered");
}

/// Half-closes an echo tunnel and expects an orderly EOF after the echo.
async fn finish(mut sock: TcpStream) {
    sock.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(LIMIT, sock.read_to_end(&mut rest)).await;
    r.expect("tunnel did not end").expect("orderly end");
    assert!(rest.is_empty());
}

/// Expects the local connection to be closed (EOF or reset) without data.
async fn assert_closed_without_data(sock: &mut TcpStream) {
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(LIMIT, sock.read(&mut buf))
        .await
        .expect("local connection left hanging");
    assert!(matches!(r, Ok(0) | Err(_)), "expected a close, got {r:?}");
}

/// A new tunnel must be refused: the local connection closes without data.
async fn assert_refused(client: SocketAddr) {
    let mut sock = match TcpStream::connect(client).await {
        Ok(sock) => sock,
        // The client refused and reset the connection before connect() returned.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
        Err(e) => panic!("connect client: {e}"),
    };
    let _ = sock.write_all(b"must not reach the backend").await;
    assert_closed_without_data(&mut sock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_open_tunnels_refuses_new_ones_and_exits_zero() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = ServerProcess::spawn(&pki, backend.addr, 3).await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.port);
    let (client, _) = client_with_pool(&pki, &url, &[], &shutdown).await;
    let mut open = Vec::new();
    for i in 0..5 {
        open.push(open_echo(client, i).await);
    }
    server.sigterm();
    server.wait_listener_closed().await;
    // Open tunnels keep working during the drain. These round trips also
    // order things: the server saw the shutdown before echoing, so its
    // GOAWAY is ahead of the echoed bytes on the connection.
    for (i, sock) in open.iter_mut().enumerate() {
        echo(sock, 100 + i as u64).await;
    }
    let before = backend.accepts();
    assert_refused(client).await;
    assert_eq!(
        backend.accepts(),
        before,
        "a tunnel got through after GOAWAY"
    );
    for sock in open {
        finish(sock).await;
    }
    let (status, log) = server.exit(Duration::from_secs(3) + LIMIT).await;
    assert!(status.success(), "server exited with {status}:\n{log}");
    shutdown.cancel();
}

#[tokio::test]
async fn tunnel_outliving_the_drain_timeout_is_closed_and_server_exits_zero() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = ServerProcess::spawn(&pki, backend.addr, 1).await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.port);
    let (client, _) = client_with_pool(&pki, &url, &[], &shutdown).await;
    let mut stuck = open_echo(client, 7).await;
    server.sigterm();
    // Never finished by us: the server must close it when the drain ends.
    assert_closed_without_data(&mut stuck).await;
    let (status, log) = server.exit(LIMIT).await;
    assert!(status.success(), "server exited with {status}:\n{log}");
    assert!(
        log.contains("drain timeout"),
        "no drain timeout logged:\n{log}"
    );
    shutdown.cancel();
}

fn inner_server_flags(pki: &Pki) -> [String; 6] {
    [
        "--cert".into(),
        pki.p("server.pem"),
        "--key".into(),
        pki.p("server-key.pem"),
        "--client-ca".into(),
        pki.p("ca.pem"),
    ]
}

/// An in-process server with inner mTLS in front of `backend`.
async fn server(
    pki: &Pki,
    backend: SocketAddr,
    shutdown: &CancellationToken,
) -> (SocketAddr, mpsc::UnboundedReceiver<TunnelReport>) {
    let flags = inner_server_flags(pki);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    start_server(backend, &flags, shutdown).await
}

async fn wait_port_closed(port: u16) {
    let closed = poll(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_err() });
    assert!(closed.await, "port {port} kept listening");
}

async fn next_report(rx: &mut mpsc::UnboundedReceiver<TunnelReport>) -> TunnelReport {
    let r = tokio::time::timeout(LIMIT, rx.recv()).await;
    r.expect("no tunnel report").expect("server stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_redials_after_caddy_is_killed_or_stopped() {
    if !caddy::installed("client_redials_after_caddy_is_killed_or_stopped") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, _reports) = server(&pki, backend.addr, &shutdown).await;
    let caddy = Caddy::start(&pki, server).await;
    let (port, opts) = (caddy.port, Options::default());
    let (client, forward) = client_with_pool(&pki, &caddy.url(), &[], &shutdown).await;
    finish(open_echo(client, 1).await).await;

    // SIGKILL: the pooled connection dies without a GOAWAY. Once the client
    // has noticed, a tunnel opened after the restart must dial afresh.
    caddy.kill().await;
    let noticed = poll(|| async { postern::testing::connections(&forward.connector).await == 0 });
    assert!(noticed.await, "client kept a dead connection in its pool");
    let caddy = Caddy::start_with(&pki, server, port, &opts).await;
    finish(open_echo(client, 2).await).await;

    // SIGTERM with a tunnel open: Caddy sends GOAWAY and waits for the
    // tunnel. The client must not cut it, and must send new tunnels to the
    // next Caddy instead of the retiring connection.
    let mut survivor = open_echo(client, 3).await;
    let stopping = tokio::spawn(caddy.terminate());
    wait_port_closed(port).await;
    let _caddy = Caddy::start_with(&pki, server, port, &opts).await;
    echo(&mut survivor, 4).await;
    finish(open_echo(client, 5).await).await;
    finish(survivor).await;
    // The old Caddy exits once its last tunnel is over.
    let stopped = tokio::time::timeout(LIMIT, stopping).await;
    stopped.expect("old caddy never exited").expect("terminate");
    assert_eq!(backend.accepts(), 4, "tunnels 1, 2, 3 (the survivor) and 5");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_behind_caddy_keeps_open_tunnels_and_takes_new_ones() {
    if !caddy::installed("server_restart_behind_caddy_keeps_open_tunnels_and_takes_new_ones") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let port = caddy::free_port().await;
    let old = CancellationToken::new();
    let (old_task, _old_reports) = server_on(&pki, backend.addr, port, &old).await;
    let upstream = SocketAddr::from(([127, 0, 0, 1], port));
    let caddy = Caddy::start(&pki, upstream).await;
    let shutdown = CancellationToken::new();
    let (client, forward) = client_with_pool(&pki, &caddy.url(), &[], &shutdown).await;
    let mut survivor = open_echo(client, 1).await;

    // The old server drains: GOAWAY to Caddy's upstream connection.
    old.cancel();
    let new = CancellationToken::new();
    let (_new_task, mut new_reports) = server_on(&pki, backend.addr, port, &new).await;
    // The open tunnel still runs on the old server; the echo also puts the
    // GOAWAY ahead of these bytes on Caddy's old upstream connection.
    echo(&mut survivor, 2).await;
    finish(open_echo(client, 3).await).await;
    let report = next_report(&mut new_reports).await;
    assert_eq!(report.outcome, Ok(()), "{}", caddy.log());
    finish(survivor).await;
    let drained = tokio::time::timeout(LIMIT, old_task).await;
    drained
        .expect("old server never finished draining")
        .expect("join")
        .expect("serve");
    // GOAWAY went to Caddy, not to the client: its connection lived on.
    assert_eq!(postern::testing::connections(&forward.connector).await, 1);
    new.cancel();
    shutdown.cancel();
}

#[tokio::test]
async fn front_end_request_timeout_closes_the_local_connection() {
    if !caddy::installed("front_end_request_timeout_closes_the_local_connection") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) = server(&pki, backend.addr, &shutdown).await;
    // Go's HTTP/2 server applies `write` per stream, counted from the
    // request: like Cloud Run's request timeout it resets the stream
    // (INTERNAL_ERROR to the client, CANCEL to the upstream) when it passes.
    let opts = Options {
        servers: "timeouts {\n\t\t\twrite 3s\n\t\t}".into(),
        ..Options::default()
    };
    let caddy = Caddy::start_with(&pki, server, caddy::free_port().await, &opts).await;
    let (client, _) = client_with_pool(&pki, &caddy.url(), &[], &shutdown).await;
    let mut sock = open_echo(client, 1).await;
    assert_closed_without_data(&mut sock).await;
    let report = next_report(&mut reports).await;
    assert!(
        report.outcome.is_err(),
        "a cut tunnel was reported as clean"
    );
    // One reset stream does not spoil the client: the next tunnel works.
    finish(open_echo(client, 2).await).await;
    shutdown.cancel();
}

#[tokio::test]
async fn keepalive_pings_are_answered_through_caddy() {
    if !caddy::installed("keepalive_pings_are_answered_through_caddy") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, _reports) = server(&pki, backend.addr, &shutdown).await;
    let opts = Options {
        env: vec![("GODEBUG".into(), "http2debug=2".into())],
        ..Options::default()
    };
    let caddy = Caddy::start_with(&pki, server, caddy::free_port().await, &opts).await;
    let (client, forward) =
        client_with_pool(&pki, &caddy.url(), &["--keepalive", "1"], &shutdown).await;
    let mut sock = open_echo(client, 1).await;
    // Caddy's frame log shows the PONGs; a missing one would have killed
    // the connection (and this tunnel) after two intervals.
    let pongs = poll(|| async { caddy.log().matches("wrote PING flags=ACK").count() >= 3 });
    assert!(pongs.await, "no PING answered:\n{}", caddy.log());
    assert_eq!(postern::testing::connections(&forward.connector).await, 1);
    echo(&mut sock, 2).await;
    finish(sock).await;
    shutdown.cancel();
}
