//! What a session may hold and who may resume it: windows, refusals, when
//! acknowledgements go, the grace period and the limits on detached
//! sessions.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use super::*;
use crate::session::core::ACK_DELAY;
use crate::session::registry::Refusal;

/// A carrier end that counts its bursts: writes up to a flush, which is what
/// the session hands the socket (through HTTP/2) at once.
struct Bursts {
    io: DuplexStream,
    bursts: Arc<AtomicUsize>,
    writing: bool,
}

impl AsyncRead for Bursts {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Bursts {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if !this.writing {
            this.writing = true;
            this.bursts.fetch_add(1, Ordering::SeqCst);
        }
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.writing = false;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[tokio::test(start_paused = true)]
async fn a_full_replay_buffer_makes_writes_wait() {
    let window = 256 * 1024;
    let (_registry, mut server, mut client) = pair(window, usize::MAX);
    // The server's application reads nothing, so nothing is acknowledged.
    let chunk = vec![7u8; 10_000];
    let mut written = 0;
    while let Ok(n) = tokio::time::timeout(Duration::from_secs(5), client.write(&chunk)).await {
        written += n.expect("write");
    }
    assert!(written <= window, "at most the window is held: {written}");
    assert!(
        written > window * 9 / 10,
        "the window, less per-chunk overhead: {written}"
    );
    // Reading on the server acknowledges, and writes flow again.
    let mut sink = vec![0u8; written];
    server.read_exact(&mut sink).await.expect("server reads");
    tokio::time::timeout(Duration::from_secs(5), client.write_all(&chunk))
        .await
        .expect("room again")
        .expect("write");
}

#[tokio::test(start_paused = true)]
async fn an_answer_carries_the_ack_of_its_request_and_a_lone_ack_waits_for_one() {
    let registry = Registry::new(config(1 << 20), Limits::default());
    let (c, s) = relay(usize::MAX);
    let bursts = Arc::new(AtomicUsize::new(0));
    let mut server = registry.open(Bursts {
        io: s,
        bursts: bursts.clone(),
        writing: false,
    });
    let id = server.handle().id().expect("server sessions have an id");
    let mut client = Session::new(config(1 << 20), c, Some(id));
    for handle in [server.handle(), client.handle()] {
        tokio::spawn(async move { handle.drive().await });
    }
    let sent = || bursts.load(Ordering::SeqCst);

    // A request, read; the server's driver runs (an ACK sent as soon as
    // the request was read would go on its own here), then the answer.
    write_now(&mut client, b"ping").await;
    let before = sent();
    read_n(&mut server, 4, "request").await;
    tokio::time::sleep(ACK_DELAY / 10).await;
    write_now(&mut server, b"pong").await;
    assert_eq!(read_n(&mut client, 4, "answer").await, b"pong");
    assert_eq!(sent() - before, 1, "the ACK went with the answer");

    // A request with no answer: its ACK waits, then goes on its own.
    tokio::time::sleep(10 * ACK_DELAY).await;
    write_now(&mut client, b"note").await;
    let before = sent();
    read_n(&mut server, 4, "note").await;
    tokio::time::sleep(ACK_DELAY / 2).await;
    assert_eq!(sent(), before, "the ACK waits");
    tokio::time::sleep(ACK_DELAY).await;
    assert_eq!(sent(), before + 1, "then goes alone");
}

#[tokio::test]
async fn data_past_the_window_is_refused_so_memory_stays_bounded() {
    let (carrier, mut peer) = tokio::io::duplex(1 << 20);
    let mut session = Session::new(config(64 * 1024), carrier, None);
    let mut wire = BytesMut::new();
    for i in 0..2u64 {
        let payload = vec![1u8; MAX_DATA].into();
        FrameCodec
            .encode(
                Frame::Data {
                    offset: i * MAX_DATA as u64,
                    payload,
                },
                &mut wire,
            )
            .expect("encode");
    }
    peer.write_all(&wire).await.expect("peer writes");
    let mut buf = vec![0u8; 10];
    let err = tokio::time::timeout(LIMIT, async {
        loop {
            // The first frame fits the window and is readable; the second is not.
            if let Err(e) = session.read(&mut buf).await {
                return e;
            }
        }
    })
    .await
    .expect("refused");
    assert!(err.to_string().contains("exceeds the window"), "{err}");
}

#[tokio::test]
async fn every_refusal_is_distinct_and_leaves_the_session_alone() {
    let (registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    let id = server.handle().id().expect("id");
    client.write_all(b"abc").await.expect("write");
    let mut got = [0u8; 3];
    server.read_exact(&mut got).await.expect("read");
    let good = client.handle().resume_request().expect("request");
    let refuse = |request: &ResumeRequest| {
        let (_, s) = relay(usize::MAX);
        registry
            .resume(request, s)
            .map(|_| ())
            .expect_err("refused")
    };

    let forged = ResumeRequest::new(&ResumeKey::random(), id, good.generation, good.received);
    let wrong = refuse(&forged);
    assert_eq!(
        (wrong.label(), wrong.status().as_u16()),
        ("wrong_proof", 403)
    );

    let unknown = refuse(&ResumeRequest {
        id: SessionId::random(),
        ..good.clone()
    });
    assert_eq!(
        (unknown.label(), unknown.status().as_u16()),
        ("unknown_session", 404)
    );

    let key = ResumeKey::random();
    server.handle().set_key(key.clone());
    client.handle().set_key(key.clone());
    let stale = refuse(&ResumeRequest::new(&key, id, good.generation, 1_000_000));
    assert_eq!(
        (stale.label(), stale.status().as_u16()),
        ("offset_outside_window", 416)
    );

    let old = refuse(&ResumeRequest::new(&key, id, good.generation - 1, 0));
    assert_eq!(
        (old.label(), old.status().as_u16()),
        ("already_attached", 409)
    );

    // None of them touched the session: same carrier, no resume, data flows.
    assert_eq!(server.handle().phase(), Phase::Attached { generation: 1 });
    assert_eq!(server.handle().stats(), Stats::default());
    tokio::time::timeout(LIMIT, exchange(&mut server, &mut client, 1024 * 1024))
        .await
        .expect("still works");
}

#[tokio::test]
async fn an_unkeyed_session_cannot_be_resumed_and_ends_when_cut() {
    let registry = Registry::new(config(WINDOW), Limits::default());
    let (c, s) = relay(0);
    let mut server = registry.open(s);
    let id = server.handle().id().expect("id");
    let request = ResumeRequest::new(&ResumeKey::random(), id, 1, 0);
    let (_, s2) = relay(usize::MAX);
    assert_eq!(
        registry.resume(&request, s2).map(|_| ()),
        Err(Refusal::UnknownSession)
    );
    drop(c);
    let err = tokio::time::timeout(LIMIT, server.read(&mut [0u8; 1]))
        .await
        .expect("ends")
        .expect_err("cut");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted, "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_detached_session_expires_after_the_grace_period() {
    // The relay cuts at once, and no resume comes (dropping the client
    // would not do: a dropped session tells its peer with CLOSE).
    let (registry, mut server, _client) = pair(WINDOW, 0);
    let started = tokio::time::Instant::now();
    let err = server.read(&mut [0u8; 1]).await.expect_err("expired");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(30),
        "kept for the grace period"
    );
    assert_eq!(
        registry.usage().detached,
        0,
        "the detached slot was released"
    );
    drop(server);
    assert_eq!(registry.usage().sessions, 0, "and the table entry");
}

#[tokio::test]
async fn cuts_past_the_detached_limit_end_at_once() {
    let limits = Limits {
        max_detached: 1,
        ..Limits::default()
    };
    let registry = Registry::new(config(WINDOW), limits);
    let mut sessions = Vec::new();
    for _ in 0..2 {
        let (c, s) = relay(usize::MAX);
        let session = registry.open(s);
        session.handle().set_key(ResumeKey::random());
        sessions.push((session, c));
    }
    let (mut first, c1) = sessions.remove(0);
    let (mut second, c2) = sessions.remove(0);
    drop((c1, c2));
    // The first to notice its cut is kept; the other ends at once.
    let read = |s: &mut Session| {
        let mut b = [0u8; 1];
        futures_poll(s, &mut b)
    };
    let outcomes = tokio::time::timeout(LIMIT, async {
        loop {
            let (a, b) = (read(&mut first), read(&mut second));
            if registry.usage().detached == 1 && (a.is_some() || b.is_some()) {
                return (a, b);
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("one refused");
    let refused = outcomes.0.or(outcomes.1).expect("one ended");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(
        refused.to_string().contains("too many detached"),
        "{refused}"
    );
    assert_eq!(registry.usage().detached, 1);
}

#[tokio::test(start_paused = true)]
async fn a_thousand_detached_sessions_stay_within_their_limits_and_go_after_the_grace() {
    const HELD: usize = 16 * 1024;
    let limits = Limits {
        max_detached: 1000,
        max_detached_bytes: 64 * 1024 * 1024,
    };
    let registry = Registry::new(config(WINDOW), limits);
    let mut sessions = Vec::new();
    // 1100 sessions, each with 16 KiB written and never acknowledged, then
    // cut (the far end of each carrier dropped, no CLOSE sent).
    for _ in 0..1100 {
        let (far, near) = tokio::io::duplex(64 * 1024);
        let mut session = registry.open(near);
        session.handle().set_key(ResumeKey::random());
        session.write_all(&[7u8; HELD]).await.expect("write");
        let handle = session.handle();
        tokio::spawn(async move { handle.drive().await });
        drop(far);
        sessions.push(session);
    }
    let settled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let ended = sessions
                .iter()
                .filter(|s| s.handle().phase() == Phase::Ended)
                .count();
            if registry.usage().detached + ended == 1100 {
                return ended;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("every cut noticed");
    let usage = registry.usage();
    assert_eq!(usage.detached, 1000, "{usage:?}");
    assert_eq!(settled, 100, "the cuts past the limit ended at once");
    // What the detached sessions hold is counted, and it is their bytes
    // plus a small overhead each: bounded by the limits whatever comes.
    assert!(usage.detached_bytes >= 1000 * HELD, "{usage:?}");
    assert!(usage.detached_bytes <= 1000 * (HELD + 1024), "{usage:?}");
    // After the grace period every one has ended and released its share.
    tokio::time::sleep(Duration::from_secs(31)).await;
    let expired = tokio::time::timeout(Duration::from_secs(5), async {
        while registry.usage().detached > 0 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(expired.is_ok(), "{:?}", registry.usage());
    assert_eq!(registry.usage().detached_bytes, 0);
    drop(sessions);
    assert_eq!(registry.usage().sessions, 0, "the table is empty");
}

/// A session whose application never reads holds what the budget allows and
/// no more, and a neighbour sharing that budget still moves its bytes at its
/// floor's pace: a full budget pushes back instead of growing or stopping
/// everyone.
#[tokio::test]
async fn a_full_budget_holds_a_stalled_session_back_and_a_neighbour_still_moves() {
    let pool = Arc::new(super::budget::Pool::new(1 << 20));
    let config = Config {
        budget: pool.clone(),
        ..Config::with_grace(Duration::from_secs(30))
    };
    let registry = Registry::new(config.clone(), Limits::default());
    let open = |registry: &Registry| {
        let (c, s) = relay(usize::MAX);
        let server = registry.open(s);
        // As a server does once the inner handshake is done: past the
        // pre-authentication read limit, what holds the session back is
        // the budget under test.
        server.handle().authenticated();
        let id = server.handle().id().expect("server sessions have an id");
        let client = Session::new(config.clone(), c, Some(id));
        for handle in [server.handle(), client.handle()] {
            tokio::spawn(async move { handle.drive().await });
        }
        (server, client)
    };
    // The stalled one: its server side never reads.
    let (_stalled_server, mut stalled) = open(&registry);
    let pushed = Arc::new(AtomicUsize::new(0));
    let count = pushed.clone();
    tokio::spawn(async move {
        let chunk = vec![7u8; 64 << 10];
        while stalled.write_all(&chunk).await.is_ok() {
            count.fetch_add(chunk.len(), Ordering::Relaxed);
        }
    });
    // Until it is stuck.
    let mut last = usize::MAX;
    while pushed.load(Ordering::Relaxed) != last {
        last = pushed.load(Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pool.left(), 0, "the stalled session took the whole budget");
    // Both its floors, the budget, and what the relay holds in between.
    assert!(
        last <= (1 << 20) + 4 * super::budget::FLOOR + (1 << 20),
        "a never-read session took {last} bytes"
    );
    // The neighbour still gets 4 MiB through and back.
    let (mut server, mut client) = open(&registry);
    let data: Vec<u8> = (0..4usize << 20).map(|i| (i * 31 % 251) as u8).collect();
    let echo = tokio::spawn(async move {
        let mut got = vec![0u8; 4 << 20];
        server.read_exact(&mut got).await.expect("neighbour read");
        got
    });
    let sent = data.clone();
    tokio::time::timeout(LIMIT, client.write_all(&sent))
        .await
        .expect("the neighbour's writes hung")
        .expect("neighbour write");
    let got = tokio::time::timeout(LIMIT, echo)
        .await
        .expect("the neighbour's reads hung")
        .unwrap();
    assert!(got == data, "the neighbour's bytes arrived intact");
}
