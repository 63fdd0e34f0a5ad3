//! Server hardening: what an unauthenticated peer can make the server hold,
//! connection limits, identity strictness and malformed requests. The
//! attackers are real HTTP/2 clients built on the h2 crate (or the raw frame
//! writer where h2 would refuse to send the request), against a real
//! `postern server` child process whose memory is read from /proc.

#[path = "common/child.rs"]
mod child;
mod common;
#[path = "common/rawh2.rs"]
mod rawh2;
#[path = "common/trust.rs"]
mod trust;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// An unauthenticated attacker's HTTP/2 connection: it advertises a zero
/// stream window (so nothing the server writes, its ServerHello included,
/// can leave), opens `streams` POST tunnels, sends a real ClientHello on
/// each (no client certificate will ever follow) and then pushes as much as
/// the server's windows let through. Keep it alive to keep the pressure on.
struct Pinning {
    _send: Vec<h2::SendStream<Bytes>>,
    _client: h2::client::SendRequest<Bytes>,
    /// Bytes the server let through flow control on this connection.
    pushed: usize,
}

/// How long without new send capacity before the attacker decides the
/// server's windows are full. Only bounds the wait: the assertions are on
/// memory and on the bytes pushed, never on time.
const QUIET: Duration = Duration::from_millis(700);

async fn pin(addr: SocketAddr, pki: &Pki, streams: usize) -> Pinning {
    let sock = TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(sock)
        .await
        .expect("h2 handshake");
    let mut conn = conn;
    let mut ping = conn.ping_pong().expect("ping handle");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.expect("h2 ready");
    let config = trust::raw_client_config(pki, None);
    let mut sends = Vec::new();
    for _ in 0..streams {
        let req = http::Request::post("http://localhost/").body(()).unwrap();
        let (_response, mut send) = client.send_request(req, false).expect("POST");
        let mut tls = rustls::ClientConnection::new(
            config.clone(),
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
        )
        .expect("client hello");
        let mut hello = Vec::new();
        tls.write_tls(&mut hello).expect("client hello bytes");
        send.send_data(Bytes::from(hello), false).expect("send hello");
        sends.push(send);
        client = client.ready().await.expect("h2 ready");
    }
    let mut pushed = 0;
    let chunk = Bytes::from(vec![0x16u8; 256 * 1024]);
    for send in &mut sends {
        loop {
            send.reserve_capacity(chunk.len());
            let granted = tokio::time::timeout(QUIET, std::future::poll_fn(|cx| {
                send.poll_capacity(cx)
            }))
            .await;
            match granted {
                Ok(Some(Ok(n))) if n > 0 => {
                    send.send_data(chunk.slice(..n), false).expect("send data");
                    pushed += n;
                }
                Ok(Some(Ok(_))) => continue,
                _ => break,
            }
        }
    }
    // A PING answered means the server has read every frame sent before it.
    tokio::time::timeout(LIMIT, ping.ping(h2::Ping::opaque()))
        .await
        .expect("ping timed out")
        .expect("ping");
    Pinning {
        _send: sends,
        _client: client,
        pushed,
    }
}

/// Per connection, what eight unauthenticated connections (four streams
/// each) pin in the server above its baseline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_peers_pin_at_most_one_mib_per_connection() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &[]);
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let cflags = child::client_flags(&pki);
    let client = start_client(&url, &trust::strs(&cflags), &shutdown).await;
    // Warm up: one real tunnel, so the baseline includes a used TLS stack.
    let data = random_bytes(1 << 20, 1);
    assert_eq!(round_trip(client, &data).await.unwrap(), data);
    let baseline = server.rss_kib();

    const CONNECTIONS: usize = 8;
    let mut held = Vec::new();
    for _ in 0..CONNECTIONS {
        held.push(pin(server.addr, &pki, 4).await);
    }
    let pinned = server.rss_kib();
    let pushed: usize = held.iter().map(|p| p.pushed).sum();
    let per_conn = pinned.saturating_sub(baseline) / CONNECTIONS as u64;
    eprintln!(
        "unauthenticated: RSS {baseline} KiB -> {pinned} KiB, {per_conn} KiB per connection; \
         {} KiB pushed per connection",
        pushed / CONNECTIONS / 1024
    );
    // A legitimate tunnel still gets through while they hold on.
    let data = random_bytes(8 << 20, 2);
    assert_eq!(sha256(&round_trip(client, &data).await.unwrap()), sha256(&data));
    assert!(
        per_conn <= 1024,
        "each unauthenticated connection pins {per_conn} KiB (pushed {} KiB)",
        pushed / CONNECTIONS / 1024
    );
    drop(held);
    shutdown.cancel();
}
