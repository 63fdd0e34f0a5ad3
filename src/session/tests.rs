//! The session layer over real async I/O: tokio duplex pipes as carriers,
//! with a relay between the two ends standing in for the front end, which
//! cuts the carrier after a byte budget (anywhere, mid-frame included).

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use rand::{Rng, RngCore, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio_util::codec::{Decoder, Encoder};

use super::frame::{Frame, FrameCodec, FrameError, MAX_DATA};
use super::*;

/// A bound for every test, so a bug shows as a failure, not a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// Two carrier ends joined by a relay that cuts both after `budget` bytes
/// (both directions counted), or never with `usize::MAX`.
fn relay(budget: usize) -> (DuplexStream, DuplexStream) {
    let (client, mut a) = tokio::io::duplex(64 * 1024);
    let (server, mut b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(async move {
        let mut left = budget;
        let (mut ab, mut ba) = (vec![0u8; 16 * 1024], vec![0u8; 16 * 1024]);
        while left > 0 {
            let want = left.min(ab.len());
            tokio::select! {
                n = a.read(&mut ab[..want]) => match n {
                    Ok(n) if n > 0 => { if b.write_all(&ab[..n]).await.is_err() { return } left -= n }
                    _ => return,
                },
                n = b.read(&mut ba[..want]) => match n {
                    Ok(n) if n > 0 => { if a.write_all(&ba[..n]).await.is_err() { return } left -= n }
                    _ => return,
                },
            }
        }
        // Dropping both inner ends is the cut.
    });
    (client, server)
}

fn config(window: usize) -> Config {
    Config {
        window,
        ..Config::with_grace(Duration::from_secs(30))
    }
}

/// A server registry, its session and the client's, on a first carrier
/// that survives `budget` bytes; both keyed.
fn pair(window: usize, budget: usize) -> (Registry, Session, Session) {
    let registry = Registry::new(config(window), Limits::default());
    let (c, s) = relay(budget);
    let server = registry.open(s);
    let id = server.handle().id().expect("server sessions have an id");
    let client = Session::new(config(window), c, Some(id));
    let key = ResumeKey::random();
    server.handle().set_key(key.clone());
    client.handle().set_key(key);
    // Each side drives its carrier beside its application, as a tunnel does.
    for handle in [server.handle(), client.handle()] {
        tokio::spawn(async move { handle.drive().await });
    }
    (registry, server, client)
}

/// What the client's reconnect loop will do: on each detach, a new carrier
/// (with its own cut budget from `budgets`), resume on the server, complete
/// on the client. Returns the number of resumes once the session ends.
fn resumer(
    registry: Registry,
    client: SessionHandle,
    mut budgets: impl FnMut() -> usize + Send + 'static,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut watch = client.watch();
        let mut resumes = 0;
        loop {
            // Copied out first: a borrow held across the match would hold
            // the watch's lock while `complete_resume` publishes the phase.
            let phase = *watch.borrow_and_update();
            match phase {
                Phase::Ended => return resumes,
                Phase::Detached => {
                    let request = client.resume_request().expect("keyed and not ended");
                    let (c, s) = relay(budgets());
                    let (response, _) = registry.resume(&request, s).expect("resume accepted");
                    client
                        .complete_resume(c, &request, &response)
                        .expect("response verifies");
                    resumes += 1;
                }
                Phase::Attached { .. } => {}
            }
            if watch.changed().await.is_err() {
                return resumes;
            }
        }
    })
}

/// Writes `len` seeded pseudo-random bytes in random-sized writes, then
/// half-closes; returns their SHA-256.
async fn send(mut w: impl AsyncWrite + Unpin, len: usize, seed: u64) -> [u8; 32] {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 100_000];
    let mut left = len;
    while left > 0 {
        let n = rng.random_range(1..=buf.len()).min(left);
        rng.fill_bytes(&mut buf[..n]);
        w.write_all(&buf[..n]).await.expect("write");
        hash.update(&buf[..n]);
        left -= n;
    }
    w.shutdown().await.expect("shutdown");
    hash.finalize().into()
}

/// Reads to EOF; returns the byte count and SHA-256.
async fn recv(mut r: impl AsyncRead + Unpin) -> (usize, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 37_000];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("read");
        if n == 0 {
            return (total, hash.finalize().into());
        }
        total += n;
        hash.update(&buf[..n]);
    }
}

/// Sends `len` bytes each way at once and checks both arrive whole.
async fn exchange(server: &mut Session, client: &mut Session, len: usize) {
    let (sr, sw) = tokio::io::split(server);
    let (cr, cw) = tokio::io::split(client);
    let (up, down, (up_n, up_got), (down_n, down_got)) =
        tokio::join!(send(cw, len, 1), send(sw, len, 2), recv(sr), recv(cr));
    assert_eq!((up_n, down_n), (len, len), "every byte arrived, none twice");
    assert_eq!(up, up_got, "client -> server SHA-256");
    assert_eq!(down, down_got, "server -> client SHA-256");
}

#[tokio::test]
async fn a_large_transfer_both_ways_survives_many_cuts() {
    let window = 1024 * 1024;
    let (registry, mut server, mut client) = pair(window, 700_000);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let resumes = resumer(registry.clone(), client.handle(), move || {
        rng.random_range(50_000..3_000_000)
    });
    let len = 48 * 1024 * 1024;
    tokio::time::timeout(LIMIT, async {
        exchange(&mut server, &mut client, len).await;
        tokio::join!(server.finish(), client.finish());
    })
    .await
    .expect("transfer finished");
    let stats = client.handle().stats();
    assert!(
        stats.resumes >= 20,
        "cut often enough to mean something: {stats:?}"
    );
    assert!(
        stats.resent > 0,
        "cuts lost bytes in flight that were resent: {stats:?}"
    );
    assert_eq!(server.handle().phase(), Phase::Ended);
    assert_eq!(resumes.await.expect("resumer"), stats.resumes);
    drop(server);
    assert_eq!(
        registry.usage(),
        Usage {
            sessions: 0,
            detached: 0,
            detached_bytes: 0
        }
    );
}

#[tokio::test]
async fn moving_to_a_new_carrier_before_the_old_one_is_cut_loses_nothing() {
    let (registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    let handle = client.handle();
    let mover = tokio::spawn(async move {
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let Some(request) = handle.resume_request() else {
                return;
            };
            let (c, s) = relay(usize::MAX);
            let Ok((response, old)) = registry.resume(&request, s) else {
                return;
            };
            assert!(old.is_some(), "the server replaced a live carrier");
            let old = handle
                .complete_resume(c, &request, &response)
                .expect("response verifies");
            let mut old = old.expect("the client replaced a live carrier");
            let _ = old.shutdown().await;
        }
    });
    tokio::time::timeout(LIMIT, exchange(&mut server, &mut client, 16 * 1024 * 1024))
        .await
        .expect("transfer finished");
    mover.await.expect("mover");
}

#[tokio::test]
async fn a_half_close_crosses_a_cut_exactly_once() {
    // The first carrier carries the client's DATA frame and half of its FIN.
    let (registry, mut server, mut client) = pair(WINDOW, 12 + 5 + 6);
    let resumes = resumer(registry, client.handle(), || usize::MAX);
    tokio::time::timeout(LIMIT, async {
        client.write_all(b"hello").await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        server
            .read_to_end(&mut got)
            .await
            .expect("server reads to EOF");
        assert_eq!(got, b"hello");
        assert_eq!(server.read(&mut [0u8; 8]).await.expect("EOF again"), 0);
        // The other direction still works, and ends on its own.
        server.write_all(b"bye").await.expect("write back");
        server.shutdown().await.expect("server shutdown");
        let mut back = Vec::new();
        client
            .read_to_end(&mut back)
            .await
            .expect("client reads to EOF");
        assert_eq!(back, b"bye");
        assert!(
            client.write_all(b"more").await.is_err(),
            "no writes after shutdown"
        );
        tokio::join!(server.finish(), client.finish());
    })
    .await
    .expect("finished");
    assert!(client.handle().stats().resumes >= 1, "the cut happened");
    assert_eq!(
        resumes.await.expect("resumer"),
        client.handle().stats().resumes
    );
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
async fn garbage_on_the_carrier_ends_the_session_with_a_reason() {
    let (carrier, mut peer) = tokio::io::duplex(1024);
    let mut session = Session::new(config(WINDOW), carrier, None);
    peer.write_all(b"SSH-2.0-OpenSSH_9.6\r\n")
        .await
        .expect("peer writes");
    let err = session
        .read(&mut [0u8; 16])
        .await
        .expect_err("garbage refused");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("unknown type 0x53"), "{err}");
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
async fn a_dropped_session_tells_its_peer_at_once() {
    let (_registry, mut server, client) = pair(WINDOW, usize::MAX);
    drop(client);
    let err = tokio::time::timeout(LIMIT, server.read(&mut [0u8; 1]))
        .await
        .expect("the peer heard of it before any grace period")
        .expect_err("abandoned");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
    assert!(err.to_string().contains("code 3"), "{err}");
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

/// Polls one read once; `Some(error)` if it failed at once.
fn futures_poll(s: &mut Session, buf: &mut [u8]) -> Option<std::io::Error> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut rb = tokio::io::ReadBuf::new(buf);
    match std::pin::Pin::new(s).poll_read(&mut cx, &mut rb) {
        std::task::Poll::Ready(Err(e)) => Some(e),
        _ => None,
    }
}

#[tokio::test]
async fn a_reset_reaches_the_peer_as_a_reset() {
    let (_registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    client.write_all(b"x").await.expect("write");
    tokio::time::timeout(LIMIT, client.reset())
        .await
        .expect("reset sent");
    let err = tokio::time::timeout(LIMIT, async {
        loop {
            if let Err(e) = server.read(&mut [0u8; 4]).await {
                return e;
            }
        }
    })
    .await
    .expect("reset arrives");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset, "{err}");
}

#[test]
fn frames_round_trip() {
    let frames = [
        Frame::Data {
            offset: 42,
            payload: vec![9u8; MAX_DATA].into(),
        },
        Frame::Data {
            offset: u64::MAX - 1,
            payload: vec![1u8].into(),
        },
        Frame::Ack { consumed: 7 },
        Frame::Fin { offset: 1 << 40 },
        Frame::Close {
            code: frame::CLOSE_RESET,
        },
    ];
    let mut wire = BytesMut::new();
    for f in &frames {
        FrameCodec.encode(f.clone(), &mut wire).expect("encode");
    }
    // Fed one byte at a time: a partial frame is never an error or a frame.
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for b in wire {
        buf.put_u8(b);
        while let Some(f) = FrameCodec.decode(&mut buf).expect("decode") {
            out.push(f);
        }
    }
    assert_eq!(out, frames);
}

#[test]
fn malformed_frames_are_errors_that_say_what_is_wrong() {
    let cases: [(&[u8], &str); 7] = [
        (&[0x07, 0, 0, 0], "unknown type 0x07"),
        (
            &[0x02, 0, 0, 4, 0, 0, 0, 0],
            "ACK frame: length 4, expected 8",
        ),
        (&[0x03, 0, 0, 9], "FIN frame: length 9, expected 8"),
        (&[0x04, 0, 0, 8], "CLOSE frame: length 8, expected 4"),
        (&[0x01, 0, 0, 8], "0 payload bytes, expected 1 to 65536"),
        (&[0x01, 0x01, 0, 9], "65537 payload bytes"),
        (
            &[
                0x01, 0, 0, 10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2,
            ],
            "overflows",
        ),
    ];
    for (bytes, want) in cases {
        let err = FrameCodec
            .decode(&mut BytesMut::from(bytes))
            .expect_err("malformed");
        assert!(err.to_string().contains(want), "{bytes:?}: {err}");
    }
    // The header is judged before its payload arrives.
    assert!(matches!(
        FrameCodec.decode(&mut BytesMut::from(&[0x01, 0xff, 0xff, 0xff][..])),
        Err(FrameError::DataSize(_))
    ));
}

#[test]
fn random_garbage_never_panics_or_buffers_past_one_frame() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut errors = 0;
    for _ in 0..20_000 {
        let mut buf = BytesMut::new();
        let len = rng.random_range(0..64);
        buf.extend((0..len).map(|_| rng.random::<u8>()));
        match FrameCodec.decode(&mut buf) {
            Err(_) => errors += 1,
            Ok(_) => assert!(buf.capacity() <= frame::MAX_FRAME + 64, "bounded buffering"),
        }
    }
    assert!(errors > 15_000, "almost all garbage is refused: {errors}");
}

#[test]
fn replay_buffer_bounds_tiny_writes_by_their_overhead() {
    let mut replay = replay::Replay::new(64 * 1024);
    let mut taken = 0;
    // Each byte sent at once becomes its own chunk.
    loop {
        let n = replay.push(b"x");
        if n == 0 {
            break;
        }
        let _ = replay.read_at(taken, 1);
        taken += 1;
    }
    assert!(replay.charge() <= 64 * 1024);
    assert!(
        (taken as usize) < 64 * 1024 / replay::CHUNK_OVERHEAD,
        "overhead counted: {taken}"
    );
    replay.ack(taken);
    assert_eq!(replay.charge(), 0, "acknowledged chunks are freed");
    assert_eq!(replay.base(), taken);
}

#[test]
fn resume_headers_round_trip_and_proofs_bind_their_fields() {
    let key = ResumeKey::random();
    let id = SessionId::random();
    let request = ResumeRequest::new(&key, id, 3, 12345);
    let mut headers = http::HeaderMap::new();
    request.to_headers(&mut headers);
    let parsed = ResumeRequest::from_headers(&headers)
        .expect("parses")
        .expect("present");
    assert_eq!(parsed, request);
    assert!(parsed.verify(&key));
    assert!(
        !ResumeRequest {
            received: 12346,
            ..parsed.clone()
        }
        .verify(&key),
        "offset bound"
    );
    assert!(
        !ResumeRequest {
            generation: 4,
            ..parsed.clone()
        }
        .verify(&key),
        "generation bound"
    );
    assert!(!parsed.verify(&ResumeKey::random()), "key bound");

    let response = ResumeResponse::new(&key, &id, 4, 99);
    let mut headers = http::HeaderMap::new();
    response.to_headers(&mut headers);
    let parsed = ResumeResponse::from_headers(&headers).expect("parses");
    assert!(parsed.verify(&key, &id, 4));
    assert!(
        !parsed.verify(&key, &id, 3),
        "a request's proof is not a response's"
    );

    assert_eq!(
        ResumeRequest::from_headers(&http::HeaderMap::new()),
        Ok(None)
    );
    headers.insert(handshake::RESUME, "!!".parse().expect("value"));
    let err = ResumeRequest::from_headers(&headers).expect_err("malformed");
    assert!(err.starts_with("postern-resume:"), "{err}");
    let key_text = key.to_header();
    let back = ResumeKey::from_header(key_text.to_str().expect("ascii")).expect("parses");
    assert!(ResumeRequest::new(&back, id, 1, 0).verify(&key));
}

#[tokio::test]
async fn the_inner_tls_runs_over_a_session_and_keys_its_resume() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["inner.test".into()]).expect("cert");
    let der = cert.cert.der().clone();
    let key =
        rustls_pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der()).expect("key");
    let server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![der.clone()], key)
        .expect("server config");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der).expect("root");
    let client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();

    let registry = Registry::new(config(WINDOW), Limits::default());
    let (c, s) = relay(usize::MAX);
    let server = registry.open(s);
    let id = server.handle().id().expect("id");
    let client = Session::new(config(WINDOW), c, Some(id));
    let (sh, ch) = (server.handle(), client.handle());
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let name = rustls_pki_types::ServerName::try_from("inner.test").expect("name");
    let (server_tls, client_tls) = tokio::time::timeout(LIMIT, async {
        tokio::join!(acceptor.accept(server), connector.connect(name, client))
    })
    .await
    .expect("handshakes");
    let (mut server_tls, mut client_tls) = (
        server_tls.expect("server TLS"),
        client_tls.expect("client TLS"),
    );
    // The chicken and egg: the key exists only now, over the first carrier.
    sh.set_key(ResumeKey::exported(server_tls.get_ref().1, &id).expect("export"));
    ch.set_key(ResumeKey::exported(client_tls.get_ref().1, &id).expect("export"));

    // A resume keyed this way is accepted (the two exports agree) and the
    // TLS session carries on over the new carrier without a new handshake.
    let request = ch.resume_request().expect("request");
    let (c2, s2) = relay(usize::MAX);
    let (response, _) = registry.resume(&request, s2).expect("accepted");
    ch.complete_resume(c2, &request, &response)
        .expect("verified");
    tokio::time::timeout(LIMIT, async {
        client_tls
            .write_all(b"over the new carrier")
            .await
            .expect("write");
        client_tls.flush().await.expect("flush");
        let mut got = [0u8; 20];
        server_tls.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"over the new carrier");
    })
    .await
    .expect("data flows");
    assert_eq!(sh.stats().resumes, 1);
}

#[tokio::test]
async fn finishing_without_reading_the_fin_still_ends_both_sides() {
    // A TLS layer above stops reading at its close_notify, before the
    // session's FIN: finishing must acknowledge that FIN by itself.
    let (_registry, mut server, mut client) = pair(WINDOW, usize::MAX);
    client.write_all(b"abc").await.expect("write");
    client.shutdown().await.expect("fin");
    let mut got = [0u8; 3];
    server.read_exact(&mut got).await.expect("read");
    server.write_all(b"xyz").await.expect("write");
    server.shutdown().await.expect("fin");
    client.read_exact(&mut got).await.expect("read");
    assert_eq!(&got, b"xyz");
    let both = async { tokio::join!(server.finish(), client.finish()) };
    tokio::time::timeout(Duration::from_secs(10), both)
        .await
        .expect("both ends finished without reading the FIN");
    assert_eq!(server.handle().phase(), Phase::Ended);
    assert_eq!(client.handle().phase(), Phase::Ended);
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

#[tokio::test]
async fn the_id_a_client_learns_later_wakes_whoever_waits_for_it() {
    let (c, _s) = relay(usize::MAX);
    let client = Session::new(config(WINDOW), c, None);
    let handle = client.handle();
    let waiting = tokio::spawn({
        let handle = handle.clone();
        async move { handle.known_id().await }
    });
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished(), "no id yet");
    let id = SessionId::random();
    handle.set_id(id);
    let got = tokio::time::timeout(LIMIT, waiting)
        .await
        .expect("woken")
        .expect("task");
    assert_eq!(got, id);
}
