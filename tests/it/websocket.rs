//! The WebSocket transport through real processes: straight to the server,
//! through Caddy proxying HTTP/1.1 to its upstream (a Cloud Run service in
//! its default HTTP/1 mode), and HTTP/1.1 requests that are not upgrades.

use std::time::Duration;

use crate::harness::caddy::{self, Caddy, Options};
use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Caddy in front of `server`, HTTP/1.1 both sides when `only_http1`, else
/// offering h2 to clients but HTTP/1.1 to the upstream.
async fn caddy_http1(pki: &Pki, server: std::net::SocketAddr, only_http1: bool) -> Caddy {
    let opts = Options {
        http1_upstream: true,
        only_http1,
        ..Options::default()
    };
    Caddy::start_with(pki, server, caddy::free_port().await, &opts).await
}

/// Client flags for inner mTLS over WebSockets, trusting the test front end.
fn ws_flags(pki: &Pki, extra: &[&str]) -> Vec<String> {
    let ca = pki.p("ca.pem");
    let mut flags = vec!["--tls-ca", ca.as_str(), "--transport", "websocket"];
    flags.extend_from_slice(extra);
    client_flags(pki, &flags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_straight_to_the_server_echoes_hashed_bulk_with_identity() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let client = start_client(&url, &strs(&ws_flags(&pki, &[])), &shutdown).await;
    let data = random_bytes(8 << 20, 41);
    let back = round_trip(client, &data)
        .await
        .expect("echo over WebSocket");
    assert_eq!(sha256(&back), sha256(&data));
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(report.totals.inbound, data.len() as u64);
    let id = report
        .identity
        .expect("the server saw the client's identity");
    assert_eq!(id.uris, vec![CLIENT_ID.to_string()]);
    assert_eq!(backend.accepts(), 1);
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_caddy_carries_bulk_both_ways_and_half_close() {
    if !caddy::installed("websocket_through_caddy_carries_bulk_both_ways_and_half_close") {
        return;
    }
    let pki = Pki::new();
    let echo = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) =
        start_server(echo.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = caddy_http1(&pki, server, false).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, &[])), &shutdown).await;
    let data = random_bytes(32 << 20, 42);
    let back = round_trip(client, &data).await.expect("echo through Caddy");
    assert_eq!(back.len(), data.len(), "{}", front.log());
    assert_eq!(sha256(&back), sha256(&data));
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Ok(()), "{}", front.log());
    assert_eq!(report.totals.outbound, data.len() as u64);
    assert!(report.identity.is_some());

    // Half-close: the digest comes back only if our end of data crossed
    // the WebSocket while the reply direction stayed open.
    let hasher = TestBackend::start(Backend::HashAfterEof).await;
    let (server, _reports) = start_server(hasher.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = caddy_http1(&pki, server, false).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, &[])), &shutdown).await;
    let data = random_bytes(3 << 20, 43);
    let back = round_trip(client, &data)
        .await
        .expect("half-closed round trip");
    assert_eq!(String::from_utf8_lossy(&back), sha256(&data));
    shutdown.cancel();
}

#[tokio::test]
async fn a_refused_backend_resets_the_local_connection_over_websocket() {
    if !caddy::installed("a_refused_backend_resets_the_local_connection_over_websocket") {
        return;
    }
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let dead = dead_addr().await;
    let (server, mut reports) = start_server(dead, &strs(&server_flags(&pki)), &shutdown).await;
    let front = caddy_http1(&pki, server, false).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, &[])), &shutdown).await;
    let mut sock = TcpStream::connect(client).await.expect("connect client");
    sock.write_all(b"hello").await.expect("write");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, sock.read(&mut buf))
        .await
        .expect("the refusal must arrive, not hang");
    // The server's CONNECT_ERROR crosses the WebSocket as close 4010 and
    // comes out as a reset, not as a clean end of data.
    let err = read.expect_err("a reset, not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let report = next_report(&mut reports).await;
    let why = report.outcome.expect_err("backend unreachable");
    assert!(why.contains("backend"), "{why}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_transfer_survives_caddy_killed_mid_transfer() {
    if !caddy::installed("a_websocket_transfer_survives_caddy_killed_mid_transfer") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let opts = Options {
        http1_upstream: true,
        ..Options::default()
    };
    let port = caddy::free_port().await;
    let mut front = Caddy::start_with(&pki, server, port, &opts).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, &[])), &shutdown).await;
    const LEN: usize = 64 << 20;
    let sock = TcpStream::connect(client).await.expect("connect client");
    let (r, mut w) = sock.into_split();
    let data = random_bytes(LEN, 44);
    let want = sha256(&data);
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let up = tokio::spawn(async move {
        for piece in data.chunks(64 * 1024) {
            w.write_all(piece).await.expect("application write");
        }
        w.shutdown().await.expect("half-close");
    });
    let down = tokio::spawn(crate::resume::download(r, progress));
    tokio::time::timeout(LIMIT, seen.wait_for(|n| *n >= LEN / 3))
        .await
        .expect("transfer progressing")
        .expect("progress");
    front.kill().await;
    front = Caddy::start_with(&pki, server, port, &opts).await;
    let (got, got_hash) = tokio::time::timeout(Duration::from_secs(120), down)
        .await
        .expect("transfer finished")
        .expect("download task");
    up.await.expect("upload task");
    assert_eq!(got, LEN, "every byte came back, none twice");
    assert_eq!(got_hash, want, "SHA-256 of what came back");
    assert_eq!(backend.accepts(), 1, "the backend saw one connection");
    let report = next_report(&mut reports).await;
    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
    assert!(report.resumes >= 1, "resumed: {}", report.resumes);
    drop(front);
    shutdown.cancel();
}

#[tokio::test]
async fn auto_picks_websocket_behind_a_front_end_offering_only_http1() {
    if !caddy::installed("auto_picks_websocket_behind_a_front_end_offering_only_http1") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let shutdown = CancellationToken::new();
    let (server, _reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = caddy_http1(&pki, server, true).await;
    let ca = pki.p("ca.pem");
    // HTTP/2 only: the downgrade is named, and the way through.
    let h2 = start_client(
        &front.url(),
        &strs(&client_flags(&pki, &["--tls-ca", &ca])),
        &shutdown,
    )
    .await;
    assert!(round_trip(h2, b"x").await.map_or(true, |b| b.is_empty()));
    let auto = start_client(
        &front.url(),
        &strs(&client_flags(
            &pki,
            &["--tls-ca", &ca, "--transport", "auto"],
        )),
        &shutdown,
    )
    .await;
    hashed_round_trips(auto, 45, 2, &|| front.log()).await;
    assert_eq!(backend.accepts(), 2);
    shutdown.cancel();
}

/// Sends `request` to `addr` and reads the answer to its end.
async fn http1(addr: std::net::SocketAddr, request: &str) -> String {
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, sock.read_to_end(&mut answer))
        .await
        .expect("answer")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn http1_requests_other_than_an_upgrade_get_a_clear_4xx_and_reach_no_backend() {
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, _reports) = start_server(backend.addr, &["--no-inner-tls"], &shutdown).await;
    let post = http1(
        server,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 426 "), "{post}");
    assert!(post.contains("Upgrade: websocket"), "{post}");
    let old = http1(
        server,
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
    )
    .await;
    assert!(old.starts_with("HTTP/1.1 426 "), "{old}");
    let nowhere = http1(
        server,
        "GET /nowhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    assert!(nowhere.starts_with("HTTP/1.1 404 "), "{nowhere}");
    let health = http1(server, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(
        health.starts_with("HTTP/1.1 200 ") && health.ends_with("ok\n"),
        "{health}"
    );
    assert_eq!(backend.accepts(), 0, "nothing reached the backend");
    shutdown.cancel();
}

/// The Python that .ci/run installs the test peers into (or
/// `$POSTERN_TEST_PYTHON`), if it has `module`; a loud skip otherwise.
fn python_with(module: &str, test: &str) -> Option<String> {
    let candidates = [
        std::env::var("POSTERN_TEST_PYTHON").ok(),
        Some(concat!(env!("CARGO_MANIFEST_DIR"), "/target/ci-venv/bin/python").to_owned()),
        Some("python3".to_owned()),
    ];
    let found = candidates.into_iter().flatten().find(|py| {
        std::process::Command::new(py)
            .args(["-c", &format!("import {module}")])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    if found.is_none() {
        eprintln!(
            "SKIPPED: Python package {module} not installed; {test} did not run \
             (CI installs it via .ci/run into target/ci-venv)"
        );
    }
    found
}

/// A stock client (Python's `websockets`) following docs/protocol.md §9:
/// data in binary messages, an empty one to half-close, read to the
/// server's empty message, close 1000.
const STOCK_CLIENT: &str = r#"
import asyncio, sys, websockets
async def main():
    data = bytes(range(256)) * 4096
    async with websockets.connect(sys.argv[1], max_size=1 << 20, compression=None) as ws:
        for i in range(0, len(data), 65536):
            await ws.send(data[i:i + 65536])
        await ws.send(b"")
        got = b""
        while True:
            msg = await ws.recv()
            if msg == b"":
                break
            got += msg
        await ws.close(1000)
    sys.stdout.write(got.decode())
asyncio.run(main())
"#;

#[tokio::test]
async fn a_stock_websocket_client_opens_a_plain_tunnel() {
    let Some(python) = python_with(
        "websockets",
        "a_stock_websocket_client_opens_a_plain_tunnel",
    ) else {
        return;
    };
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) = start_server(backend.addr, &["--no-inner-tls"], &shutdown).await;
    let url = format!("ws://127.0.0.1:{}/", server.port());
    let out = tokio::process::Command::new(&python)
        .args(["-c", STOCK_CLIENT, &url])
        .output();
    let out = tokio::time::timeout(LIMIT, out)
        .await
        .expect("the stock client hung")
        .expect("run python");
    assert!(
        out.status.success(),
        "stock client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: Vec<u8> = (0..=255u8).cycle().take(256 * 4096).collect();
    assert_eq!(String::from_utf8_lossy(&out.stdout), sha256(&data));
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(report.totals.outbound, data.len() as u64);
    shutdown.cancel();
}

/// The server pings every WebSocket (`--websocket-ping`): a stock client
/// (tokio-tungstenite) that keeps reading answers them and its tunnel
/// stays up; one that stops reading answers nothing and is dropped after
/// two intervals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_websockets_and_drops_a_silent_one() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let flags = ["--no-inner-tls", "--websocket-ping", "200ms"];
    let (server, _reports) = start_server(backend.addr, &flags, &shutdown).await;
    let url = format!("ws://127.0.0.1:{}/", server.port());
    let open = || async {
        let tcp = TcpStream::connect(server).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(url.as_str(), tcp)
            .await
            .expect("upgrade");
        ws
    };

    let mut ws = open().await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(msg) = tokio::time::timeout_at(until, ws.next()).await {
        match msg.expect("the connection stays up").expect("a message") {
            Message::Ping(_) => pings += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 1.5 s at 200 ms");
    ws.send(Message::Binary(b"still here".to_vec().into()))
        .await
        .expect("send");
    let echoed = tokio::time::timeout(LIMIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(b))) => return b,
                Some(Ok(Message::Ping(_))) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await
    .expect("the echo");
    assert_eq!(&echoed[..], b"still here");

    // Silent: not reading, so no pong goes back; the server gives up.
    let mut silent = open().await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let ended = tokio::time::timeout(LIMIT, async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the server kept a silent WebSocket");
    shutdown.cancel();
}
