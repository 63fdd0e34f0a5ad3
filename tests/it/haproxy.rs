//! Tunnels through HAProxy, an OpenSSL front end that takes TLS 1.3 early
//! data (Caddy never offers it): the client's 0-RTT path against a server
//! side that is not Postern's own; and in HTTP/1.1 mode, the WebSocket
//! transport through it. Skipped, loudly, when `haproxy` is not installed.

use std::time::Duration;

use crate::harness::early_watch::EarlyWatch;
use crate::harness::haproxy::{self, HAProxy, Logged};
use crate::harness::*;
use tokio_util::sync::CancellationToken;

/// A first tunnel held open, then a second on a connection of its own (one
/// stream per connection) echoing 4 MiB intact, through a relay that watches
/// for 0-RTT records (holding HAProxy's answer on connection `hold` until one
/// comes). Returns what HAProxy logged for both, the first connection's first
/// (the only one not resumed: HAProxy logs a tunnel in no fixed order against
/// the other), and per connection whether the client sent 0-RTT records.
async fn two_connections(client_extra: &[&str], hold: Option<usize>) -> (Vec<Logged>, Vec<bool>) {
    let shutdown = CancellationToken::new();
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let (server, mut reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start(&pki, server).await;
    let watch = EarlyWatch::start(([127, 0, 0, 1], front.port).into(), hold).await;
    let url = format!("https://localhost:{}/", watch.addr.port());
    let client = start_client_one_stream_each(&pki, &url, client_extra, &shutdown).await;

    let held = open_echo(client, 1).await;
    let bulk = random_bytes(4 << 20, 3);
    let back = round_trip(client, &bulk)
        .await
        .expect("second tunnel (a held connection waits for the client's 0-RTT records)");
    assert_eq!(sha256(&back), sha256(&bulk), "{}", front.log());
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(report.totals.outbound, bulk.len() as u64);

    drop(held);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while front.requests().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy did not log both tunnels:\n{}",
            front.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let mut logged = front.requests();
    logged.sort_by_key(|l| l.resumed);
    (logged, watch.early())
}

/// The second connection resumes the first's TLS session and sends its
/// HTTP/2 preface and tunnel request as 0-RTT data, which HAProxy logs as
/// offered; the tunnel is intact (for HTTP/2 HAProxy answers once the
/// handshake is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_a_resumed_connections_early_data_and_the_tunnel_is_intact() {
    if !haproxy::installed(
        "haproxy_takes_a_resumed_connections_early_data_and_the_tunnel_is_intact",
    ) {
        return;
    }
    let (logged, early) = two_connections(&[], Some(1)).await;
    assert_eq!(early, vec![false, true], "0-RTT records per connection");
    let second = Logged {
        status: 200,
        resumed: true,
        early: true,
    };
    let first = Logged {
        status: 200,
        resumed: false,
        early: false,
    };
    assert_eq!(logged, vec![first, second]);
}

/// `--no-early-data`: the second connection still resumes at HAProxy, and
/// neither offers nor sends anything before the handshake ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_early_data_the_client_resumes_at_haproxy_without_it() {
    if !haproxy::installed("with_no_early_data_the_client_resumes_at_haproxy_without_it") {
        return;
    }
    let (logged, early) = two_connections(&["--no-early-data"], None).await;
    assert_eq!(early, vec![false, false], "0-RTT records per connection");
    let resumed = |resumed| Logged {
        status: 200,
        resumed,
        early: false,
    };
    assert_eq!(logged, vec![resumed(false), resumed(true)]);
}

/// Client flags for inner mTLS over WebSockets (or `transport`), trusting
/// the test front end.
fn ws_flags(pki: &Pki, transport: &str) -> Vec<String> {
    let ca = pki.p("ca.pem");
    client_flags(pki, &["--tls-ca", &ca, "--transport", transport])
}

/// HAProxy in HTTP/1.1 mode (ALPN http/1.1 to the client, HTTP/1.1 to the
/// server): WebSocket tunnels carry hashed bulk both ways, and a half-close
/// in each direction crosses it while the other direction stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_through_haproxy_http1_carries_bulk_and_half_closes_both_ways() {
    if !haproxy::installed("websocket_through_haproxy_http1_carries_bulk_and_half_closes_both_ways")
    {
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let echo = TestBackend::start(Backend::Echo).await;
    let (server, mut reports) =
        start_server(echo.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start_http1(&pki, server).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, "websocket")), &shutdown).await;
    let data = random_bytes(32 << 20, 61);
    let back = round_trip(client, &data)
        .await
        .expect("echo through HAProxy");
    assert_eq!(back.len(), data.len(), "{}", front.log());
    assert_eq!(sha256(&back), sha256(&data));
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Ok(()), "{}", front.log());
    assert_eq!(report.totals.outbound, data.len() as u64);
    assert!(report.identity.is_some());

    // The client's half-close first: the digest comes back only if the
    // end of data crossed while the reply direction stayed open.
    let hasher = TestBackend::start(Backend::HashAfterEof).await;
    let (server, _reports) = start_server(hasher.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start_http1(&pki, server).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, "websocket")), &shutdown).await;
    let data = random_bytes(3 << 20, 62);
    let back = round_trip(client, &data)
        .await
        .expect("half-closed round trip");
    assert_eq!(
        String::from_utf8_lossy(&back),
        sha256(&data),
        "{}",
        front.log()
    );

    // The backend's half-close first: it sends a banner and ends its
    // direction, then reads what the client still sends, to its end.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    let heard = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        sock.write_all(b"banner").await.unwrap();
        sock.shutdown().await.unwrap();
        let mut all = Vec::new();
        sock.read_to_end(&mut all).await.map(|_| all)
    });
    let (server, _reports) = start_server(backend, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start_http1(&pki, server).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, "websocket")), &shutdown).await;
    let mut sock = tokio::net::TcpStream::connect(client).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(LIMIT, sock.read_to_end(&mut got))
        .await
        .expect("the backend's end must arrive")
        .expect("banner then EOF");
    assert_eq!(got, b"banner", "{}", front.log());
    let data = random_bytes(2 << 20, 63);
    sock.write_all(&data)
        .await
        .expect("write after the far end's half-close");
    sock.shutdown().await.unwrap();
    let all = tokio::time::timeout(LIMIT, heard)
        .await
        .expect("the backend must see our end")
        .unwrap()
        .expect("the backend reads to its end");
    assert_eq!(sha256(&all), sha256(&data), "{}", front.log());
    shutdown.cancel();
}

/// A refused backend behind HAProxy in HTTP/1.1 mode: the server's
/// CONNECT_ERROR crosses the WebSocket as close 4010 and comes out of the
/// client as a reset, not as a clean end of data.
#[tokio::test]
async fn a_refused_backend_resets_the_local_connection_through_haproxy_http1() {
    if !haproxy::installed("a_refused_backend_resets_the_local_connection_through_haproxy_http1") {
        return;
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let dead = dead_addr().await;
    let (server, mut reports) = start_server(dead, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start_http1(&pki, server).await;
    let client = start_client(&front.url(), &strs(&ws_flags(&pki, "websocket")), &shutdown).await;
    let mut sock = tokio::net::TcpStream::connect(client).await.unwrap();
    sock.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, sock.read(&mut buf))
        .await
        .expect("the refusal must arrive, not hang");
    let err = read.expect_err("a reset, not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    let report = next_report(&mut reports).await;
    let why = report.outcome.expect_err("backend unreachable");
    assert!(why.contains("backend"), "{why}");
    shutdown.cancel();
}

/// `--transport auto` behind HAProxy offering only http/1.1: HTTP/2 alone
/// gets no tunnel through, auto picks the WebSocket and carries both.
#[tokio::test]
async fn auto_picks_websocket_behind_haproxy_offering_only_http1() {
    if !haproxy::installed("auto_picks_websocket_behind_haproxy_offering_only_http1") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let shutdown = CancellationToken::new();
    let (server, _reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start_http1(&pki, server).await;
    let h2 = start_client(&front.url(), &strs(&ws_flags(&pki, "h2")), &shutdown).await;
    assert!(round_trip(h2, b"x").await.map_or(true, |b| b.is_empty()));
    let auto = start_client(&front.url(), &strs(&ws_flags(&pki, "auto")), &shutdown).await;
    hashed_round_trips(auto, 64, 2, &|| front.log()).await;
    assert_eq!(backend.accepts(), 2);
    shutdown.cancel();
}
