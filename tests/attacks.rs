//! Attacks on the server port, crafted frame by frame, against a real
//! `postern server` child process (h2c or outer TLS, inner mTLS on, a short
//! handshake timeout for the slowloris cases). For each: a legitimate tunnel
//! through a real client still works while the attack runs, the server's
//! peak memory stays bounded, and where the server has a limit the attacking
//! connection or stream is closed.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

#[path = "common/child.rs"]
mod child;
mod common;
#[path = "common/rawh2.rs"]
mod rawh2;

use std::future::Future;
use std::net::SocketAddr;

use child::Proc;
use common::*;
use rawh2::*;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Handshake timeout (seconds) for the slowloris tests: short, so they are quick.
const SLOW: &str = "2";

/// Peak RSS growth allowed during one attack.
const MEMORY_BOUND_KIB: u64 = 200 * 1024;

struct Target {
    _pki: Pki,
    backend: TestBackend,
    server: Proc,
    client: SocketAddr,
    _shutdown: CancellationToken,
}

impl Target {
    /// Starts the server (serving outer TLS itself when `tls`) and a client.
    /// Slowloris tests pass a short handshake timeout; flood tests keep the
    /// default so a legitimate handshake slowed by a loaded machine is not
    /// mistaken for an attacker.
    async fn start(tls: bool, handshake_timeout: &str) -> Target {
        let pki = Pki::new();
        let backend = TestBackend::start(Backend::Echo).await;
        let (cert, key) = (pki.p("front.pem"), pki.p("front-key.pem"));
        let mut flags = vec!["--handshake-timeout", handshake_timeout];
        if tls {
            flags.extend_from_slice(&["--tls-cert", &cert, "--tls-key", &key]);
        }
        let server = child::server(&pki, backend.addr, &flags);
        let shutdown = CancellationToken::new();
        let url = if tls {
            format!("https://localhost:{}/", server.addr.port())
        } else {
            format!("http://127.0.0.1:{}/", server.addr.port())
        };
        let mut cflags = child::client_flags(&pki);
        if tls {
            cflags.extend(["--tls-ca".to_string(), pki.p("ca.pem")]);
        }
        let cflags: Vec<&str> = cflags.iter().map(String::as_str).collect();
        let client = start_client(&url, &cflags, &shutdown).await;
        Target {
            _pki: pki,
            backend,
            server,
            client,
            _shutdown: shutdown,
        }
    }

    /// One real tunnel through the real client, with inner mTLS.
    async fn legit(&self, when: &str) {
        let data = random_bytes(100_000, 7);
        let back = round_trip(self.client, &data).await.unwrap_or_else(|e| {
            let log = self.server.log_lines("");
            let tail = &log[log.len().saturating_sub(10)..];
            panic!(
                "legitimate tunnel {when}: {e}; server log:\n{}",
                tail.join("\n")
            )
        });
        assert_eq!(sha256(&back), sha256(&data), "legitimate tunnel {when}");
    }

    /// Runs `attack` (which signals once it is under way), a legitimate
    /// tunnel during it and one after, and checks the peak memory.
    async fn under<F, Fut>(&self, name: &str, attack: F) -> Fut::Output
    where
        F: FnOnce(SocketAddr, oneshot::Sender<()>) -> Fut,
        Fut: Future + Send + 'static,
        Fut::Output: Send + 'static,
    {
        let before = self.server.rss_kib();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(attack(self.server.addr, tx));
        let _ = rx.await;
        self.legit(&format!("during {name}")).await;
        let out = tokio::time::timeout(LIMIT, handle)
            .await
            .unwrap_or_else(|_| panic!("{name}: attack did not finish"))
            .expect("attack task");
        self.legit(&format!("after {name}")).await;
        let (after, peak) = (self.server.rss_kib(), self.server.peak_kib());
        eprintln!("{name}: server RSS {before} KiB before, {after} KiB after, peak {peak} KiB");
        assert!(
            peak.saturating_sub(before) < MEMORY_BOUND_KIB,
            "{name}: server memory grew from {before} KiB to a peak of {peak} KiB"
        );
        out
    }
}

fn post_headers(stream: u32, end_stream: bool) -> Vec<u8> {
    let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
    frame(HEADERS, flags, stream, &post_block())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_is_survived() {
    let t = Target::start(false, "10").await;
    let seen = t
        .under("rapid reset", |addr, started| async move {
            let mut c = RawConn::handshake(addr).await;
            let mut started = Some(started);
            let mut sent = 0u32;
            'attack: for batch in 0..100u32 {
                let mut bytes = Vec::new();
                for i in 0..100u32 {
                    let id = 1 + 2 * (batch * 100 + i);
                    bytes.extend(post_headers(id, false));
                    bytes.extend(frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
                }
                if c.send(&bytes).await.is_err() {
                    break 'attack;
                }
                sent += 100;
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
            // A PING answered proves the server read everything we sent
            // (or it has closed the connection).
            let _ = c.send(&frame(PING, 0, 0, b"rr-done!")).await;
            let seen = c
                .wait_for(LIMIT, "PING ACK or close after the resets", |s| {
                    s.frames.contains_key(&PING) || s.closed
                })
                .await;
            (sent, seen)
        })
        .await;
    let (sent, seen) = seen;
    eprintln!("rapid reset: {sent} HEADERS+RST_STREAM pairs sent; server: {seen:?}");
    assert!(sent > 0);
    // Either h2's reset-stream limit ended the connection with
    // ENHANCE_YOUR_CALM, or every reset was processed (the PING came back).
    assert!(
        seen.goaway == Some(ENHANCE_YOUR_CALM) || seen.frames.contains_key(&PING),
        "unexpected end of the rapid-reset connection: {seen:?}"
    );
    // No reset stream may have reached the backend: only the two legit tunnels did.
    assert_eq!(t.backend.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let t = Target::start(false, "10").await;
    let (sent, seen) = t
        .under("CONTINUATION flood", |addr, started| async move {
            let mut c = RawConn::handshake(addr).await;
            let block = post_block();
            let mut sent = 0usize;
            let _ = c.send(&frame(HEADERS, 0, 1, &block)).await;
            let _ = started.send(());
            let pad = header_block(&[("x-pad", &"a".repeat(16_000))]);
            // At most 64 MiB; a server without a limit would buffer it all.
            for _ in 0..4096 {
                if c.send(&frame(CONTINUATION, 0, 1, &pad)).await.is_err() {
                    break;
                }
                sent += pad.len();
                if c.seen().closed {
                    break;
                }
            }
            let seen = c
                .wait_closed(LIMIT, "server closes the flooding connection")
                .await;
            (sent, seen)
        })
        .await;
    eprintln!("CONTINUATION flood: {sent} bytes of CONTINUATION accepted; server: {seen:?}");
    assert!(seen.closed, "server kept the flooding connection open");
    assert!(seen.goaway.is_some(), "closed without GOAWAY: {seen:?}");
    assert!(
        sent < 8 << 20,
        "server read {sent} bytes of one header block"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_lists_are_refused() {
    let t = Target::start(false, "10").await;
    let (count, seen) = t
        .under("oversized headers", |addr, started| async move {
            let mut c = RawConn::handshake(addr).await;
            let mut block = post_block();
            block.extend(header_block(&[("x-big", &"b".repeat(40_000))]));
            let (first, rest) = block.split_at(16_000);
            let (mid, last) = rest.split_at(16_000);
            let mut count = 0u32;
            let mut started = Some(started);
            for i in 0..200u32 {
                let id = 1 + 2 * i;
                let mut bytes = frame(HEADERS, 0, id, first);
                bytes.extend(frame(CONTINUATION, 0, id, mid));
                bytes.extend(frame(CONTINUATION, END_HEADERS, id, last));
                if c.send(&bytes).await.is_err() {
                    break;
                }
                count += 1;
                if let Some(s) = started.take() {
                    let _ = s.send(());
                }
            }
            let seen = c
                .wait_for(LIMIT, "every oversized request answered", |s| {
                    (1..=count).all(|i| {
                        let id = 2 * i - 1;
                        s.resets.contains_key(&id) || s.responses.get(&id) == Some(&true)
                    })
                })
                .await;
            (count, seen)
        })
        .await;
    eprintln!(
        "oversized headers: {count} requests of 40 KB headers; server: resets {}, responses {:?}, goaway {:?}, closed {}",
        seen.resets.len(),
        seen.responses.values().filter(|end| **end).count(),
        seen.goaway,
        seen.closed
    );
    // None may have become a tunnel (a tunnel's 200 has no END_STREAM).
    assert!(seen.responses.values().all(|end| *end));
    assert_eq!(t.backend.accepts(), 2);
}

/// Sends `total` copies of `unit`, `batch` per write, while reading replies.
async fn flood(addr: SocketAddr, started: oneshot::Sender<()>, unit: Vec<u8>) -> (usize, Seen) {
    let mut c = RawConn::handshake(addr).await;
    let batch: Vec<u8> = unit.repeat(1000);
    let mut sent = 0;
    let mut started = Some(started);
    for _ in 0..100 {
        if c.send(&batch).await.is_err() {
            break;
        }
        sent += 1000;
        if let Some(s) = started.take() {
            let _ = s.send(());
        }
    }
    let _ = c.send(&frame(PING, 0, 0, b"flood-ok")).await;
    let seen = c
        .wait_for(LIMIT, "flood processed or connection closed", |s| {
            s.frames.get(&PING).copied().unwrap_or(0) > 0 || s.closed
        })
        .await;
    (sent, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_is_survived() {
    let t = Target::start(false, "10").await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 65535, each one needing an ACK.
    let unit = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
    let (sent, seen) = t
        .under("SETTINGS flood", |addr, s| flood(addr, s, unit))
        .await;
    eprintln!(
        "SETTINGS flood: {sent} frames sent; server: {} SETTINGS back, goaway {:?}, closed {}",
        seen.frames.get(&SETTINGS).copied().unwrap_or(0),
        seen.goaway,
        seen.closed
    );
    assert!(sent > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_is_survived() {
    let t = Target::start(false, "10").await;
    let unit = frame(PING, 0, 0, b"pingping");
    let (sent, seen) = t.under("PING flood", |addr, s| flood(addr, s, unit)).await;
    eprintln!(
        "PING flood: {sent} PINGs sent; server: {} PING ACKs, goaway {:?}, closed {}",
        seen.frames.get(&PING).copied().unwrap_or(0),
        seen.goaway,
        seen.closed
    );
    assert!(sent > 0);
}

/// Opens `n` connections, writes `opening` on each, then goes silent and
/// waits for the server to close every one.
async fn silent_connections(
    addr: SocketAddr,
    started: oneshot::Sender<()>,
    n: usize,
    opening: &'static [u8],
) -> usize {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut c = RawConn::connect(addr).await;
        if !opening.is_empty() {
            c.send(opening).await.expect("opening bytes");
        }
        conns.push(c);
    }
    let _ = started.send(());
    for c in &mut conns {
        c.wait_closed(LIMIT, "server closes the silent connection")
            .await;
    }
    conns.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_silent_tcp_is_closed() {
    let t = Target::start(false, SLOW).await;
    let closed = t
        .under("silent TCP", |addr, s| {
            silent_connections(addr, s, 200, b"")
        })
        .await;
    assert_eq!(closed, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_partial_preface_is_closed() {
    let t = Target::start(false, SLOW).await;
    let closed = t
        .under("partial preface", |addr, s| {
            silent_connections(addr, s, 200, b"PRI * HTTP/2.0\r\n")
        })
        .await;
    assert_eq!(closed, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_partial_outer_client_hello_is_closed() {
    let t = Target::start(true, SLOW).await;
    // A TLS record header announcing 512 bytes of ClientHello, and 6 of them.
    const PARTIAL_HELLO: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let closed = t
        .under("partial ClientHello", |addr, s| {
            silent_connections(addr, s, 200, PARTIAL_HELLO)
        })
        .await;
    assert_eq!(closed, 200);
}

/// Opens `n` tunnel requests on one connection without ever starting the
/// inner handshake, and waits until the server has reset every one.
async fn half_open_tunnels(addr: SocketAddr, started: oneshot::Sender<()>, n: u32) -> Seen {
    let mut c = RawConn::handshake(addr).await;
    let mut bytes = Vec::new();
    for i in 0..n {
        bytes.extend(post_headers(1 + 2 * i, false));
    }
    c.send(&bytes).await.expect("requests");
    let _ = started.send(());
    c.wait_for(LIMIT, "every half-open tunnel reset", |s| {
        (0..n).all(|i| s.resets.contains_key(&(1 + 2 * i)))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_inner_handshake_never_started_is_reset() {
    let t = Target::start(false, SLOW).await;
    let seen = t
        .under("silent tunnel", |addr, s| half_open_tunnels(addr, s, 1))
        .await;
    assert_eq!(seen.responses.get(&1), Some(&false), "expected a 200 first");
    eprintln!(
        "silent tunnel: server reset it with code {:?}",
        seen.resets.get(&1)
    );
    assert_eq!(t.backend.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_many_half_open_tunnels_are_reset() {
    let t = Target::start(false, SLOW).await;
    let seen = t
        .under("500 half-open tunnels", |addr, s| {
            half_open_tunnels(addr, s, 500)
        })
        .await;
    assert_eq!(seen.resets.len(), 500);
    assert_eq!(t.backend.accepts(), 2);
}
