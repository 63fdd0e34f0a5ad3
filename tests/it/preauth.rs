//! What a peer without a client certificate can make the server hold, with
//! and without sessions (`postern-session: 1`): the session reader before
//! the resume key, stalled inner handshakes on one connection, and the log
//! lines of refused resumes. The attackers are h2-crate clients against a
//! real `postern server` child process whose memory is read from /proc.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::harness::child::{self, Proc};
use crate::harness::*;
use bytes::{BufMut, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// How long without new send capacity before the attacker decides the
/// server's windows are full. Only bounds the wait: the assertions are on
/// memory and on what the server let through, never on time.
const QUIET: Duration = Duration::from_millis(700);

/// The most one unauthenticated connection may get through flow control.
const PER_CONNECTION_KIB: u64 = 1024;

/// The RSS growth allowed per unauthenticated connection (the allocator's
/// own overhead included; 16.7 MiB for 500 stalled handshakes and 116 MiB
/// pulled through a session before the caps).
const PER_CONNECTION_RSS_KIB: u64 = 3 * 1024;

/// Starts a real client on `server` and runs one tunnel through it (a
/// session with inner TLS: the client asks for one), so that the baseline
/// includes a used TLS stack and a legitimate tunnel is known to work.
async fn warm_up(server: &Proc, pki: &Pki, shutdown: &CancellationToken) -> SocketAddr {
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let cflags = child::client_flags(pki);
    let client = start_client(&url, &strs(&cflags), shutdown).await;
    let data = random_bytes(1 << 20, 1);
    assert_eq!(round_trip(client, &data).await.unwrap(), data);
    client
}

/// Tunnels one connection may have before authentication: in their inner
/// handshake, and waiting for one to finish (docs/protocol.md §1).
const HANDSHAKES: usize = 8;
const WAITING: usize = 120;

/// An h2 client connection that advertises a zero stream window, so that
/// nothing the server writes (its ServerHello included) can leave.
async fn stalled_connection(addr: SocketAddr) -> (h2::client::SendRequest<Bytes>, h2::PingPong) {
    let sock = TcpStream::connect(addr).await.expect("connect");
    let (client, mut conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(sock)
        .await
        .expect("h2 handshake");
    let ping = conn.ping_pong().expect("ping handle");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    (client.ready().await.expect("h2 ready"), ping)
}

/// A real ClientHello, from a client that has no certificate to follow it.
fn client_hello(pki: &Pki) -> Vec<u8> {
    let mut tls = rustls::ClientConnection::new(
        raw_client_config(pki, None),
        rustls_pki_types::ServerName::try_from("localhost").unwrap(),
    )
    .expect("client hello");
    let mut hello = Vec::new();
    tls.write_tls(&mut hello).expect("client hello bytes");
    hello
}

/// A session DATA frame (docs/protocol.md §7, "Frames").
fn session_data(out: &mut BytesMut, offset: u64, payload: &[u8]) {
    out.put_u8(0x01);
    let len = (8 + payload.len()) as u32;
    out.put_slice(&len.to_be_bytes()[1..]);
    out.put_u64(offset);
    out.put_slice(payload);
}

fn tunnel_request(session: bool) -> http::Request<()> {
    let mut req = http::Request::post("http://localhost/");
    if session {
        req = req.header("postern-session", "1");
    }
    req.body(()).unwrap()
}

async fn ping(ping: &mut h2::PingPong) {
    // Answered once the server has read every frame sent before it.
    tokio::time::timeout(LIMIT, ping.ping(h2::Ping::opaque()))
        .await
        .expect("ping timed out")
        .expect("ping");
}

/// One connection of the session fill: `streams` session tunnels, each a
/// ClientHello as DATA at offset 0 and then junk DATA at rising offsets, as
/// fast as the server's WINDOW_UPDATEs allow. Returns what it pushed and
/// what keeps the streams open.
async fn session_fill(addr: SocketAddr, pki: &Pki, streams: usize) -> (usize, impl Send) {
    let (mut client, mut pong) = stalled_connection(addr).await;
    let hello = client_hello(pki);
    let junk = vec![0x17u8; 16 * 1024];
    let mut sends = Vec::new();
    let mut heads = Vec::new();
    for _ in 0..streams {
        let (head, send) = client
            .send_request(tunnel_request(true), false)
            .expect("POST");
        heads.push(head);
        sends.push(send);
        client = client.ready().await.expect("h2 ready");
    }
    let mut pushed = 0;
    for send in &mut sends {
        let mut pending = BytesMut::new();
        session_data(&mut pending, 0, &hello);
        let mut offset = hello.len() as u64;
        loop {
            send.reserve_capacity(256 * 1024);
            let granted =
                tokio::time::timeout(QUIET, std::future::poll_fn(|cx| send.poll_capacity(cx)))
                    .await;
            let n = match granted {
                Ok(Some(Ok(n))) if n > 0 => n,
                Ok(Some(Ok(_))) => continue,
                _ => break,
            };
            while pending.len() < n {
                session_data(&mut pending, offset, &junk);
                offset += junk.len() as u64;
            }
            if send.send_data(pending.split_to(n).freeze(), false).is_err() {
                break;
            }
            pushed += n;
        }
    }
    ping(&mut pong).await;
    (pushed, (sends, heads, client))
}

/// Before a session has its key, its carrier reads no more than a handshake
/// needs: the HTTP/2 windows bound the fill as they do without sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_its_key_reads_no_further_than_a_handshake() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &["--buffer-budget-mib", "16"]);
    let shutdown = CancellationToken::new();
    let client = warm_up(&server, &pki, &shutdown).await;
    let baseline = server.rss_kib();
    const CONNECTIONS: usize = 2;
    let mut held = Vec::new();
    let mut pushed = 0;
    for _ in 0..CONNECTIONS {
        let (n, keep) = session_fill(server.addr, &pki, 16).await;
        pushed += n;
        held.push(keep);
    }
    // The peak: a session that overruns its window ends, and what it held
    // goes back before the fill is over.
    let (rss, peak) = (server.rss_kib(), server.peak_kib());
    let per_conn = peak.saturating_sub(baseline) / CONNECTIONS as u64;
    let pushed_kib = pushed / CONNECTIONS / 1024;
    eprintln!(
        "session fill: RSS {baseline} KiB -> {rss} KiB (peak {peak} KiB), {per_conn} KiB and \
         {pushed_kib} KiB pushed per connection"
    );
    assert!(
        pushed_kib as u64 <= PER_CONNECTION_KIB,
        "the server let {pushed_kib} KiB per unauthenticated connection through"
    );
    assert!(
        per_conn <= PER_CONNECTION_RSS_KIB,
        "each unauthenticated connection holds {per_conn} KiB"
    );
    // A legitimate tunnel, past the cap once authenticated, still works.
    let data = random_bytes(4 << 20, 2);
    assert_eq!(
        sha256(&round_trip(client, &data).await.unwrap()),
        sha256(&data)
    );
    drop(held);
    shutdown.cancel();
}

/// What became of the requests of one connection.
#[derive(Default)]
struct Answers {
    tunnels: AtomicUsize,
    refused: AtomicUsize,
}

/// Opens `n` tunnels on one stalled connection, a ClientHello on each, and
/// waits until the server has refused all those beyond its limit.
async fn stalled_handshakes(
    server: &Proc,
    pki: &Pki,
    n: usize,
    session: bool,
    baseline: u64,
) -> (Arc<Answers>, impl Send) {
    let (mut client, mut pong) = stalled_connection(server.addr).await;
    let hello = Bytes::from(if session {
        let mut framed = BytesMut::new();
        session_data(&mut framed, 0, &client_hello(pki));
        framed.to_vec()
    } else {
        client_hello(pki)
    });
    let answers = Arc::new(Answers::default());
    let mut sends = Vec::new();
    for _ in 0..n {
        let (head, mut send) = client
            .send_request(tunnel_request(session), false)
            .expect("POST");
        send.send_data(hello.clone(), false).expect("hello");
        sends.push(send);
        let answers = answers.clone();
        tokio::spawn(async move {
            match head.await {
                Ok(r) if r.status() == http::StatusCode::OK => &answers.tunnels,
                Err(e) if e.reason() == Some(h2::Reason::REFUSED_STREAM) => &answers.refused,
                _ => return,
            }
            .fetch_add(1, Ordering::AcqRel);
        });
        client = client.ready().await.expect("h2 ready");
    }
    ping(&mut pong).await;
    let beyond = n - HANDSHAKES - WAITING;
    let wait = async {
        while answers.refused.load(Ordering::Acquire) < beyond {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .is_err()
    {
        panic!(
            "{} of {n} stalled handshakes refused, {} answered 200 (session: {session}); \
             server RSS {} KiB (baseline {baseline} KiB)",
            answers.refused.load(Ordering::Acquire),
            answers.tunnels.load(Ordering::Acquire),
            server.rss_kib(),
        );
    }
    (answers, (sends, client))
}

/// One connection's stalled handshakes are capped: those beyond the cap are
/// refused (REFUSED_STREAM), and the connection holds at most 1 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_on_one_connection_are_capped() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &["--handshake-timeout", "30"]);
    let shutdown = CancellationToken::new();
    warm_up(&server, &pki, &shutdown).await;
    for session in [true, false] {
        let baseline = server.rss_kib();
        let (answers, held) = stalled_handshakes(&server, &pki, 500, session, baseline).await;
        let rss = server.rss_kib();
        let grew = rss.saturating_sub(baseline);
        let tunnels = answers.tunnels.load(Ordering::Acquire);
        eprintln!(
            "500 stalled handshakes (session: {session}): RSS {baseline} KiB -> {rss} KiB, \
             {grew} KiB for the connection; {tunnels} answered 200, {} refused",
            answers.refused.load(Ordering::Acquire)
        );
        assert!(tunnels <= HANDSHAKES, "{tunnels} handshakes at once");
        assert!(
            grew <= PER_CONNECTION_RSS_KIB,
            "one connection of stalled handshakes holds {grew} KiB (session: {session})"
        );
        drop(held);
    }
    // Only the warm-up tunnel reached the backend.
    assert_eq!(backend.accepts(), 1);
    shutdown.cancel();
}

/// A refused resume is logged with the peer's address, and a flood of them
/// makes one line per interval, not one per refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_resumes_name_the_peer_and_do_not_flood_the_log() {
    use postern::testing::session::{ResumeKey, ResumeRequest, SessionId};
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &[]);
    let sock = TcpStream::connect(server.addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(sock).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    const RESUMES: usize = 300;
    let mut client = client.ready().await.expect("h2 ready");
    let mut refused = 0;
    for _ in 0..RESUMES {
        let mut req = http::Request::post("http://localhost/").body(()).unwrap();
        ResumeRequest::new(&ResumeKey::random(), SessionId::random(), 1, 0)
            .to_headers(req.headers_mut());
        let (head, _send) = client.send_request(req, false).expect("POST");
        let head = tokio::time::timeout(LIMIT, head)
            .await
            .expect("answer timed out")
            .expect("answer");
        if head.status() == http::StatusCode::NOT_FOUND
            && head.headers().get("postern-resume-refused")
                == Some(&http::HeaderValue::from_static("unknown_session"))
        {
            refused += 1;
        }
        client = client.ready().await.expect("h2 ready");
    }
    assert_eq!(refused, RESUMES, "every bogus resume is refused");
    let lines = server.wait_log_lines("resume refused").await;
    eprintln!(
        "{RESUMES} refused resumes: {} log lines; first: {:?}",
        lines.len(),
        lines.first()
    );
    assert!(!lines.is_empty(), "no refusal was logged");
    assert!(
        lines.iter().all(|l| l.contains("\"peer\":\"127.0.0.1:")),
        "a refusal logged without the peer: {}",
        lines[0]
    );
    assert!(
        lines.len() <= 3,
        "{} lines for {RESUMES} refusals",
        lines.len()
    );
}

/// Streams whose ClientHello the server answered and which the client then
/// resets leave nothing behind: identical rounds of them plateau.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_handshakes_leave_nothing_behind() {
    /// Session streams per round, on `CONNECTIONS` connections at once, each
    /// taking `HANDSHAKES` at a time (the server's cap).
    const PER_ROUND: usize = 1000;
    const CONNECTIONS: usize = 4;
    const ROUNDS: usize = 9;
    /// Rounds before the measured ones: the allocator's arenas and the
    /// server's tables reach their working size.
    const WARM: usize = 3;
    /// Growth allowed over the measured rounds (a leak of 7 KiB per stream
    /// is about 7 MiB per round, 42 MiB over six rounds).
    const GROWTH_KIB: u64 = 12 * 1024;

    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &[]);
    let shutdown = CancellationToken::new();
    warm_up(&server, &pki, &shutdown).await;
    let mut framed = BytesMut::new();
    session_data(&mut framed, 0, &client_hello(&pki));
    let hello = framed.freeze();

    let mut rss = Vec::new();
    for _ in 0..ROUNDS {
        let mut connections = Vec::new();
        for _ in 0..CONNECTIONS {
            let (addr, hello) = (server.addr, hello.clone());
            connections.push(tokio::spawn(async move {
                answered_then_reset(addr, hello, PER_ROUND / CONNECTIONS).await
            }));
        }
        for c in connections {
            let answered = c.await.expect("connection task");
            assert_eq!(answered, PER_ROUND / CONNECTIONS, "ServerHellos answered");
        }
        // Until the server has let go of the round's connections.
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss.push(server.rss_kib());
    }
    eprintln!("server RSS after each round of {PER_ROUND} reset handshakes: {rss:?} KiB");
    let settled = rss[WARM - 1];
    let last = *rss[WARM..].iter().max().unwrap();
    assert!(
        last.saturating_sub(settled) <= GROWTH_KIB,
        "RSS grew from {settled} KiB to {last} KiB over {} identical rounds: {rss:?}",
        ROUNDS - WARM
    );
    // Nothing of it reached the backend: only the warm-up tunnel did.
    assert_eq!(backend.accepts(), 1);
    shutdown.cancel();
}

/// On one connection, `n` session streams in batches of the server's
/// handshake cap: each sends a ClientHello, waits for the server's first
/// flight (so the server has processed it), then resets. Returns how many
/// were answered.
async fn answered_then_reset(addr: SocketAddr, hello: Bytes, n: usize) -> usize {
    let sock = TcpStream::connect(addr).await.expect("connect");
    let (mut client, conn) = h2::client::handshake(sock).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut answered = 0;
    let mut left = n;
    while left > 0 {
        let batch = left.min(HANDSHAKES);
        left -= batch;
        let mut streams = Vec::new();
        for _ in 0..batch {
            client = client.ready().await.expect("h2 ready");
            let (head, mut send) = client
                .send_request(tunnel_request(true), false)
                .expect("POST");
            send.send_data(hello.clone(), false).expect("hello");
            streams.push((head, send));
        }
        for (head, send) in streams {
            let first = tokio::time::timeout(LIMIT, async {
                let mut body = head.await.ok()?.into_body();
                body.data().await?.ok()
            })
            .await
            .expect("the server's first flight timed out");
            if first.is_some_and(|b| !b.is_empty()) {
                answered += 1;
            }
            // Dropping both halves resets the stream (RST_STREAM CANCEL).
            drop(send);
        }
    }
    answered
}
