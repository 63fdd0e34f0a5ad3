//! Lifecycle: the server draining on SIGTERM under load (the real binary as a
//! child process), the client reconnecting when its front end (Caddy) or the
//! server behind it restarts, a front end ending a tunnel at its request
//! timeout, and HTTP/2 keepalive through Caddy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::caddy::{self, Caddy, Options};
use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Starts a client for `url` and keeps a handle on its connection pool.
async fn client_with_pool(
    pki: &Pki,
    url: &str,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> (SocketAddr, Arc<client::Forward>) {
    let ca = pki.p("ca.pem");
    let mut flags = vec!["--tls-ca", ca.as_str()];
    flags.extend_from_slice(extra);
    let flags = client_flags(pki, &flags);
    start_client_with_pool(url, &strs(&flags), shutdown).await
}

/// An in-process server on a given port, with a handle on its serve task.
async fn server_on(
    pki: &Pki,
    backend: SocketAddr,
    port: u16,
    shutdown: &CancellationToken,
) -> (tokio::task::JoinHandle<anyhow::Result<()>>, Reports) {
    let backend = backend.to_string();
    let mut argv = vec!["--backend".to_owned(), backend];
    argv.extend(server_flags(pki));
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
    let server = Server::start_on(listener, &strs(&argv), shutdown).await;
    (server.task, server.reports)
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
    let server = child::server(&pki, backend.addr, &["--drain-timeout", "3"]);
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let (client, _) = client_with_pool(&pki, &url, &[], &shutdown).await;
    let mut open = Vec::new();
    for i in 0..5 {
        open.push(open_echo(client, i).await);
    }
    server.sigterm();
    wait_port_closed(server.addr.port()).await;
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
    let server = child::server(&pki, backend.addr, &["--drain-timeout", "1"]);
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
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

/// An in-process server with inner mTLS in front of `backend`.
async fn server(
    pki: &Pki,
    backend: SocketAddr,
    shutdown: &CancellationToken,
) -> (SocketAddr, Reports) {
    start_server(backend, &strs(&server_flags(pki)), shutdown).await
}

async fn wait_port_closed(port: u16) {
    let closed = poll(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_err() });
    assert!(closed.await, "port {port} kept listening");
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
    let noticed = poll(|| async { pool_connections(&forward.connector).await == 0 });
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
    assert_eq!(pool_connections(&forward.connector).await, 1);
    new.cancel();
    shutdown.cancel();
}

/// Caddy with a per-request time limit standing in for Cloud Run's request
/// timeout: Go's HTTP/2 server applies `write` per stream, counted from the
/// request, and resets the stream (INTERNAL_ERROR to the client, CANCEL to
/// the upstream) when it passes.
async fn caddy_with_request_timeout(pki: &Pki, server: SocketAddr, limit: &str) -> Caddy {
    let opts = Options {
        servers: format!("timeouts {{\n\t\t\twrite {limit}\n\t\t}}"),
        ..Options::default()
    };
    Caddy::start_with(pki, server, caddy::free_port().await, &opts).await
}

#[tokio::test]
async fn front_end_request_timeout_closes_the_local_connection_without_resume() {
    if !caddy::installed("front_end_request_timeout_closes_the_local_connection_without_resume") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) = server(&pki, backend.addr, &shutdown).await;
    let caddy = caddy_with_request_timeout(&pki, server, "3s").await;
    let (client, _) = client_with_pool(&pki, &caddy.url(), &["--no-resume"], &shutdown).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_session_outlives_many_front_end_request_timeouts() {
    if !caddy::installed("interactive_session_outlives_many_front_end_request_timeouts") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (mut server, metrics) = Server::with_metrics(&pki, backend.addr, &shutdown).await;
    let caddy = caddy_with_request_timeout(&pki, server.addr, "2s").await;
    let (client, _) = client_with_pool(&pki, &caddy.url(), &[], &shutdown).await;
    let mut sock = TcpStream::connect(client).await.expect("connect client");
    sock.set_nodelay(true).expect("nodelay");
    // Keystrokes until the session has moved past three request timeouts:
    // each numbered line must come back whole, once, in order, however many
    // requests carry it. (The limit only stops a session that never moves.)
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut lines = 0u32;
    while accepted_resumes(metrics).await < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lines} lines and the session moved {} times",
            accepted_resumes(metrics).await
        );
        let line = format!("line {lines:05} {}\n", "x".repeat(lines as usize % 61));
        sock.write_all(line.as_bytes()).await.expect("write");
        let mut back = vec![0u8; line.len()];
        tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
            .await
            .expect("echo stalled")
            .expect("echo read");
        assert_eq!(back, line.as_bytes(), "line {lines} came back altered");
        lines += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    finish(sock).await;
    let report = server.report().await;
    assert_eq!(report.outcome, Ok(()), "{}", caddy.log());
    assert!(
        report.resumes >= 3,
        "{lines} lines took {} resumes",
        report.resumes
    );
    assert_eq!(backend.accepts(), 1, "the backend saw one connection");
    eprintln!(
        "request timeouts: {lines} lines, {} resumes",
        report.resumes
    );
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
    assert_eq!(pool_connections(&forward.connector).await, 1);
    echo(&mut sock, 2).await;
    finish(sock).await;
    shutdown.cancel();
}
