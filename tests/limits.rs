//! Per-tunnel limits (idle timeout, maximum lifetime, header size) and the
//! Prometheus metrics that count tunnels, bytes, refusals and failures.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

mod common;
#[path = "common/trust.rs"]
mod trust;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use trust::*;

/// Opens a tunnel through `client`, checks one echo, then waits (bounded)
/// for the server to close it without any further traffic.
async fn echo_then_wait_for_close(client: std::net::SocketAddr) {
    let mut sock = TcpStream::connect(client).await.unwrap();
    sock.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    sock.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    let mut rest = Vec::new();
    let r = tokio::time::timeout(LIMIT, sock.read_to_end(&mut rest))
        .await
        .expect("the server never closed the tunnel");
    assert!(rest.is_empty(), "unexpected bytes: {rest:?}; {r:?}");
}

async fn server_with(extra: &[&str], shutdown: &CancellationToken) -> (Pki, TestBackend, Server) {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let backend_s = backend.addr.to_string();
    let mut flags = inner_flags(&pki);
    flags.extend(["--backend".to_owned(), backend_s]);
    flags.extend(extra.iter().map(|s| s.to_string()));
    let server = Server::start(&strs(&flags), shutdown).await;
    (pki, backend, server)
}

#[tokio::test]
async fn idle_tunnel_is_closed_with_a_reason() {
    let shutdown = CancellationToken::new();
    let (pki, _backend, mut server) = server_with(&["--idle-timeout", "300ms"], &shutdown).await;
    let client = start_client(&server.url("/"), &strs(&client_flags(&pki, &[])), &shutdown).await;
    echo_then_wait_for_close(client).await;
    let report = server.report().await;
    assert_eq!(report.close, "idle_timeout");
    assert!(report.outcome.unwrap_err().contains("idle"));
    assert!(report.identity.is_some());
    shutdown.cancel();
}

#[tokio::test]
async fn tunnel_is_closed_at_its_maximum_lifetime() {
    let shutdown = CancellationToken::new();
    let (pki, _backend, mut server) = server_with(&["--max-lifetime", "400ms"], &shutdown).await;
    let client = start_client(&server.url("/"), &strs(&client_flags(&pki, &[])), &shutdown).await;
    echo_then_wait_for_close(client).await;
    let report = server.report().await;
    assert_eq!(report.close, "max_lifetime");
    assert!(report.outcome.unwrap_err().contains("maximum lifetime"));
    shutdown.cancel();
}

#[tokio::test]
async fn oversized_request_headers_are_refused_before_any_tunnel() {
    let shutdown = CancellationToken::new();
    let (pki, backend, mut server) =
        server_with(&["--max-header-list-size", "4096"], &shutdown).await;
    let big = format!("x-padding: {}", "a".repeat(8000));
    let flags = client_flags(&pki, &["--header", &big]);
    let client = start_client(&server.url("/"), &strs(&flags), &shutdown).await;
    assert_refused(client).await;
    assert_eq!(backend.accepts(), 0);
    assert!(
        server.reports.try_recv().is_err(),
        "oversized request became a tunnel"
    );
    // The same server still serves a normal client.
    let client = start_client(&server.url("/"), &strs(&client_flags(&pki, &[])), &shutdown).await;
    assert_eq!(round_trip(client, b"ok").await.unwrap(), b"ok");
    shutdown.cancel();
}

#[tokio::test]
async fn metrics_count_tunnels_bytes_refusals_and_failures() {
    let shutdown = CancellationToken::new();
    let (pki, _backend, mut server) = server_with(
        &["--metrics-listen", "127.0.0.1:0", "--allow", CLIENT_ID],
        &shutdown,
    )
    .await;
    let metrics = server.config.metrics_addr.expect("metrics listener");
    let before = scrape(metrics).await;
    assert_eq!(sample(&before, "postern_tunnels_total"), Some(0.0));

    // One good tunnel.
    let good = start_client(&server.url("/"), &strs(&client_flags(&pki, &[])), &shutdown).await;
    assert_eq!(
        round_trip(good, b"0123456789").await.unwrap(),
        b"0123456789"
    );
    server.report().await;
    // One 404 and one identity refusal.
    let nowhere = start_client(
        &server.url("/nope"),
        &strs(&client_flags(&pki, &[])),
        &shutdown,
    )
    .await;
    assert_refused(nowhere).await;
    let stranger = pki
        .ca
        .issue(&postern::pki::LeafSpec::client(&[
            "spiffe://test.postern/stranger",
        ]))
        .unwrap();
    write_pair(&pki.dir, "stranger", &stranger);
    let flags = client_flags(
        &pki,
        &[
            "--cert",
            &pki.p("stranger.pem"),
            "--key",
            &pki.p("stranger-key.pem"),
        ],
    );
    let denied = start_client(&server.url("/"), &strs(&flags), &shutdown).await;
    assert_refused(denied).await;
    server.report().await;

    let text = scrape(metrics).await;
    let get =
        |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series} missing:\n{text}"));
    assert_eq!(get("postern_tunnels_total"), 2.0);
    assert_eq!(get("postern_tunnels_open"), 0.0);
    assert_eq!(
        get("postern_tunnel_bytes_total{direction=\"to_backend\"}"),
        10.0
    );
    assert_eq!(
        get("postern_tunnel_bytes_total{direction=\"from_backend\"}"),
        10.0
    );
    assert_eq!(get("postern_refusals_total{reason=\"not_found\"}"), 1.0);
    assert_eq!(get("postern_refusals_total{reason=\"denied\"}"), 1.0);
    assert_eq!(
        get("postern_handshake_failures_total{reason=\"not_allowed\"}"),
        1.0
    );
    assert_eq!(get("postern_tunnels_closed_total{reason=\"closed\"}"), 1.0);
    assert_eq!(get("postern_backend_connect_seconds_count"), 1.0);
    shutdown.cancel();
}
