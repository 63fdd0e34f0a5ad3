//! Attacks on the server port, crafted frame by frame, against a real
//! `postern server` child process (h2c or outer TLS, inner mTLS on, a short
//! handshake timeout for the slowloris cases). For each: a legitimate tunnel
//! through a real client still works while the attack runs, the server's
//! peak memory stays bounded, and where the server has a limit the attacking
//! connection or stream is closed.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::child::{self, Proc};
use crate::harness::rawh2::*;
use crate::harness::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
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

/// What the server had taken off a flooding connection whose peer never
/// read an answer, once it stopped reading.
#[derive(Debug)]
struct Unread {
    /// Flood bytes the attacker's kernel accepted.
    written: u64,
    /// Bytes the server read off its socket.
    consumed: u64,
    /// Answer bytes waiting in the two kernels (the server's send queue and
    /// the attacker's receive queue).
    answers: u64,
}

/// What a server may hold of a connection in its own memory: its read
/// buffer and h2's frame buffers (64 KiB and a few 16 KiB frames), with
/// room to spare. A server that read on without writing its answers would
/// pass it after a few MiB of a flood.
const HELD_BOUND: u64 = 1 << 20;

/// Past this the server plainly reads a flood whose answers nobody takes.
const UNREAD_CAP: u64 = 256 << 20;

/// Floods `addr` with copies of `unit` (each answered by `answer_len`
/// bytes) and never reads: h2 answers every SETTINGS and PING before it
/// reads the next frame, so once the answers fill the kernels' buffers the
/// server must stop reading the connection. Asserts at every stall of the
/// writes that what the server read, less what its answers account for,
/// fits [`HELD_BOUND`]; returns once the server has left unread bytes in
/// its socket through consecutive checks without reading any.
async fn flood_unread(addr: SocketAddr, unit: &[u8], answer_len: u64) -> (TcpStream, Unread) {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    // A small receive buffer: the answers fill it soon.
    sock.set_recv_buffer_size(32 * 1024).expect("SO_RCVBUF");
    let mut stream = sock.connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut opening = PREFACE.to_vec();
    opening.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&opening).await.expect("preface");
    let (me, server) = (stream.local_addr().unwrap().port(), addr.port());
    let batch = unit.repeat(4096);
    let unit_len = unit.len() as u64;
    let mut written = opening.len() as u64;
    let mut flood = 0usize;
    let (mut last, mut still) = (None, 0);
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        match stream.try_write(&batch[flood % batch.len()..]) {
            Ok(n) => {
                flood += n;
                written += n as u64;
                assert!(
                    written < UNREAD_CAP,
                    "the server read {written} bytes of a flood whose answers were never read"
                );
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("the server closed the flooding connection: {e}"),
        }
        let (Some((my_tx, my_rx)), Some((its_tx, its_rx))) =
            (tcp_queues(me, Some(server)), tcp_queues(server, Some(me)))
        else {
            panic!("the flooding connection is gone from /proc/net/tcp");
        };
        let state = Unread {
            written,
            consumed: written.saturating_sub(my_tx + its_rx),
            answers: its_tx + my_rx,
        };
        let answered = state.answers * unit_len / answer_len;
        assert!(
            state.consumed <= answered + HELD_BOUND,
            "the server read more of the flood than its answers account for: {state:?}"
        );
        // The server reads nothing more while bytes wait in its socket.
        if its_rx > 0 && last == Some(state.consumed) {
            still += 1;
            if still == 5 {
                return (stream, state);
            }
        } else {
            (last, still) = (Some(state.consumed), 0);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flood neither stalled nor overran: {state:?}"
        );
        tokio::select! {
            _ = stream.writable() => {}
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
}

/// How many frames each flood sends while reading the answers.
const FLOOD_FRAMES: usize = 100_000;

/// Sends [`FLOOD_FRAMES`] copies of `unit` and a last PING, reading the
/// answers as they come, until that PING's answer (or a close).
async fn flood_read(addr: SocketAddr, unit: &[u8]) -> Seen {
    let mut c = RawConn::handshake(addr).await;
    let batch: Vec<u8> = unit.repeat(1000);
    for _ in 0..FLOOD_FRAMES / 1000 {
        c.send(&batch)
            .await
            .expect("the server closed the flooding connection");
    }
    c.send(&frame(PING, 0, 0, b"flood-ok"))
        .await
        .expect("last PING");
    let pings = if unit[3] == PING { FLOOD_FRAMES + 1 } else { 1 };
    c.wait_for(LIMIT, "the last PING answered", |s| {
        s.frames.get(&PING).copied().unwrap_or(0) >= pings
    })
    .await
}

/// The two floods in turn: one never reading (the server must stop reading
/// it: `started` fires then, so the legitimate tunnel runs beside a stalled
/// connection), one reading every answer.
async fn flood(
    addr: SocketAddr,
    started: oneshot::Sender<()>,
    unit: Vec<u8>,
    answer_len: u64,
) -> (Unread, Seen) {
    let (held, unread) = flood_unread(addr, &unit, answer_len).await;
    let _ = started.send(());
    let seen = flood_read(addr, &unit).await;
    drop(held);
    (unread, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_flood_is_answered_frame_by_frame_and_stalls_when_unread() {
    let t = Target::start(false, "10").await;
    // SETTINGS_INITIAL_WINDOW_SIZE = 65535, each one needing an ACK (an
    // empty SETTINGS frame, 9 bytes).
    let unit = frame(SETTINGS, 0, 0, &[0, 4, 0, 0, 0xff, 0xff]);
    let (unread, seen) = t
        .under("SETTINGS flood", |addr, s| flood(addr, s, unit, 9))
        .await;
    eprintln!("SETTINGS flood: unread {unread:?}; read: {seen:?}");
    assert!(unread.consumed < unread.written, "{unread:?}");
    assert!(!seen.closed && seen.goaway.is_none(), "{seen:?}");
    // The server's own SETTINGS, the ACK of the handshake's, one per frame.
    assert_eq!(seen.frames.get(&SETTINGS), Some(&(FLOOD_FRAMES + 2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_flood_is_answered_frame_by_frame_and_stalls_when_unread() {
    let t = Target::start(false, "10").await;
    let unit = frame(PING, 0, 0, b"pingping");
    let (unread, seen) = t
        .under("PING flood", |addr, s| flood(addr, s, unit, 17))
        .await;
    eprintln!("PING flood: unread {unread:?}; read: {seen:?}");
    assert!(unread.consumed < unread.written, "{unread:?}");
    assert!(!seen.closed && seen.goaway.is_none(), "{seen:?}");
    assert_eq!(seen.frames.get(&PING), Some(&(FLOOD_FRAMES + 1)));
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
