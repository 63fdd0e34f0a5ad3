//! Resumable tunnels through real processes: Caddy killed and restarted
//! under a transfer, refused resumes against a live session, and a server
//! that restarted (its sessions gone).

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::caddy::{self, Caddy};
use crate::harness::child::{self, Proc};
use crate::harness::*;
use postern::client::Connector;
use postern::testing::session::{handshake, ResumeKey, ResumeRequest, Session, SessionId};
use postern::testing::transport::stream::{H2Stream, Refused};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// Writes `len` seeded bytes to `w` in 64 KiB pieces, half-closes; their SHA-256.
async fn upload(mut w: impl tokio::io::AsyncWrite + Unpin, len: usize) -> String {
    let data = random_bytes(1 << 20, 11);
    let mut hash = Sha256::new();
    let mut left = len;
    while left > 0 {
        for piece in data.chunks(64 * 1024) {
            let n = piece.len().min(left);
            w.write_all(&piece[..n]).await.expect("application write");
            hash.update(&piece[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
    }
    w.shutdown().await.expect("application half-close");
    hex(&hash.finalize())
}

/// Reads to EOF, reporting progress; the count and SHA-256.
pub(crate) async fn download(
    mut r: impl tokio::io::AsyncRead + Unpin,
    progress: tokio::sync::watch::Sender<usize>,
) -> (usize, String) {
    let mut hash = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await.expect("application read");
        if n == 0 {
            return (total, hex(&hash.finalize()));
        }
        hash.update(&buf[..n]);
        total += n;
        progress.send_replace(total);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_survives_caddy_killed_and_restarted_three_times() {
    if !caddy::installed("a_transfer_survives_caddy_killed_and_restarted_three_times") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, mut reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let mut front = Caddy::start(&pki, server).await;
    let port = front.port;
    let client = start_client(
        &front.url(),
        &[
            "--cert",
            &pki.p("client.pem"),
            "--key",
            &pki.p("client-key.pem"),
            "--ca",
            &pki.p("ca.pem"),
            "--tls-ca",
            &pki.p("ca.pem"),
        ],
        &shutdown,
    )
    .await;
    const LEN: usize = 256 << 20;
    let sock = TcpStream::connect(client).await.expect("connect client");
    let (r, w) = sock.into_split();
    let (progress, mut seen) = tokio::sync::watch::channel(0usize);
    let transfer = tokio::spawn(async move { tokio::join!(upload(w, LEN), download(r, progress)) });
    for cut in 1..=3 {
        let at = LEN * cut / 4;
        tokio::time::timeout(LIMIT, seen.wait_for(|n| *n >= at))
            .await
            .expect("transfer progressing")
            .expect("progress");
        front.kill().await;
        front = Caddy::start_with(&pki, server, port, &Default::default()).await;
    }
    let (sent, (got, got_hash)) = tokio::time::timeout(Duration::from_secs(120), transfer)
        .await
        .expect("transfer finished")
        .expect("transfer task");
    assert_eq!(got, LEN, "every byte came back, none twice");
    assert_eq!(sent, got_hash, "SHA-256 of what came back");
    assert_eq!(backend.accepts(), 1, "the backend saw one connection");
    let report = tokio::time::timeout(LIMIT, reports.recv())
        .await
        .expect("report")
        .expect("server running");
    assert!(report.outcome.is_ok(), "{:?}", report.outcome);
    assert!(
        report.resumes >= 3,
        "one resume per cut at least: {}",
        report.resumes
    );
    assert!(report.cuts >= 3, "three kills, {} cuts", report.cuts);
    drop(front);
    shutdown.cancel();
}

/// A plain server (its `200` carries the resume key) and a session opened
/// over it with the library, as a client would.
async fn plain_session(
    server: SocketAddr,
) -> (
    Connector,
    Session,
    SessionId,
    ResumeKey,
    tokio::task::JoinHandle<()>,
) {
    let target = postern::client::Target::parse(&format!("http://{server}/")).expect("url");
    let connector = Connector::new(target, None, 100, None, LIMIT);
    let mut headers = http::HeaderMap::new();
    headers.insert(
        handshake::SESSION,
        handshake::VERSION.parse().expect("value"),
    );
    let mut stream = connector.open(&headers).await.expect("open");
    let head = stream.response().await.expect("200");
    let id: SessionId = head[handshake::SESSION]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("id");
    let key =
        ResumeKey::from_header(head[handshake::SESSION_KEY].to_str().expect("ascii")).expect("key");
    let session = Session::new(Default::default(), stream, Some(id));
    session.handle().set_key(key.clone());
    let handle = session.handle();
    let drive = tokio::spawn(async move { handle.drive().await });
    (connector, session, id, key, drive)
}

/// Sends a resume request; the status it was answered with.
async fn try_resume(connector: &Connector, request: &ResumeRequest) -> u16 {
    let mut headers = http::HeaderMap::new();
    request.to_headers(&mut headers);
    let mut stream: H2Stream = connector.open(&headers).await.expect("open");
    match stream.response().await {
        Ok(_) => 200,
        Err(e) => {
            let refused = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<Refused>())
                .unwrap_or_else(|| panic!("not a refusal: {e}"));
            refused.status.as_u16()
        }
    }
}

#[tokio::test]
async fn every_refused_resume_has_its_status_and_leaves_the_session_alone() {
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let backend_flag = backend.addr.to_string();
    let args: postern::server::Args =
        postern::cmd::parse_args("server", &["--backend", &backend_flag, "--no-inner-tls"])
            .expect("server flags");
    let config = postern::server::Config::from_args(&args, &shutdown)
        .await
        .expect("server config");
    let metrics = config.metrics.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let server = listener.local_addr().expect("addr");
    tokio::spawn(postern::server::serve(
        listener,
        std::sync::Arc::new(config),
        shutdown.clone(),
    ));
    let (connector, mut session, id, key, _drive) = plain_session(server).await;
    session.write_all(b"before").await.expect("write");
    let mut got = [0u8; 6];
    tokio::time::timeout(LIMIT, session.read_exact(&mut got))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&got, b"before");
    let current = session.handle().resume_request().expect("request");

    // Wrong proof: a second client that knows the live session's id only.
    let forged = ResumeRequest::new(
        &ResumeKey::random(),
        id,
        current.generation,
        current.received,
    );
    assert_eq!(try_resume(&connector, &forged).await, 403, "wrong proof");
    // Unknown session.
    let unknown = ResumeRequest::new(&key, SessionId::random(), 1, 0);
    assert_eq!(
        try_resume(&connector, &unknown).await,
        404,
        "unknown session"
    );
    // An offset the server never sent.
    let stale = ResumeRequest::new(&key, id, current.generation, 1_000_000);
    assert_eq!(
        try_resume(&connector, &stale).await,
        416,
        "offset outside the window"
    );
    // A replayed request naming a carrier the session has moved past.
    let old = ResumeRequest::new(&key, id, current.generation - 1, current.received);
    assert_eq!(try_resume(&connector, &old).await, 409, "already attached");

    // The real session is untouched: same carrier, no resume, data flows.
    assert_eq!(session.handle().stats().resumes, 0);
    session.write_all(b"after").await.expect("write");
    let mut got = [0u8; 5];
    tokio::time::timeout(LIMIT, session.read_exact(&mut got))
        .await
        .expect("echo after the refusals")
        .expect("read");
    assert_eq!(&got, b"after");
    assert_eq!(backend.accepts(), 1);
    let metrics = metrics.encode();
    for reason in [
        "wrong_proof",
        "unknown_session",
        "offset_outside_window",
        "already_attached",
    ] {
        assert!(
            metrics.contains(&format!("result=\"refused\",reason=\"{reason}\"")),
            "{reason} counted:\n{metrics}"
        );
    }
    shutdown.cancel();
}

/// A `postern client` process for `url`, with `extra` flags, and a local
/// connection through it that has echoed one `ping`.
async fn client_with_one_echo(pki: &Pki, url: String, extra: &[&str]) -> (Proc, TcpStream) {
    let mut flags = child::client_flags(pki);
    flags.extend(["--url".into(), url, "--listen".into(), "127.0.0.1:0".into()]);
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let client = Proc::start("client", &flags, "listen");
    let mut sock = TcpStream::connect(client.addr).await.expect("connect");
    sock.write_all(b"ping").await.expect("write");
    let mut got = [0u8; 4];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut got))
        .await
        .expect("echo")
        .expect("read");
    assert_eq!(&got, b"ping");
    (client, sock)
}

/// Waits for the client to close `sock`; its log lines that contain `why`.
async fn closed_saying(client: &Proc, mut sock: TcpStream, why: &str) -> Vec<String> {
    let mut got = [0u8; 4];
    let end = tokio::time::timeout(LIMIT, sock.read(&mut got))
        .await
        .expect("the local connection was closed, not left waiting");
    assert!(matches!(end, Ok(0) | Err(_)), "closed, not data: {end:?}");
    client.wait_log_lines(why).await
}

#[tokio::test]
async fn a_restarted_server_makes_the_client_close_the_connection_and_say_why() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut server = child::server(&pki, backend.addr, &[]);
    let addr = server.addr;
    let (client, sock) = client_with_one_echo(&pki, format!("http://{addr}/"), &[]).await;
    server.kill();
    let _restarted = child::server_on(&pki, backend.addr, &addr.to_string(), &[]);
    let why = closed_saying(&client, sock, "does not know this session").await;
    assert!(
        !why.is_empty(),
        "a log line says why: {:?}",
        client.log_lines("tunnel")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_before_break_moves_a_busy_session_before_its_request_ages_out() {
    if !caddy::installed("make_before_break_moves_a_busy_session_before_its_request_ages_out") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (mut server, metrics) = Server::with_metrics(&pki, backend.addr, &shutdown).await;
    let front = Caddy::start(&pki, server.addr).await;
    let ca = pki.p("ca.pem");
    let cflags = client_flags(&pki, &["--tls-ca", &ca, "--max-request-age", "1s"]);
    let client = start_client(&front.url(), &strs(&cflags), &shutdown).await;
    let mut sock = TcpStream::connect(client).await.expect("connect client");
    sock.set_nodelay(true).expect("nodelay");
    // Echoes of up to 48 KiB until the session has moved three times: every
    // one back intact. (The limit only stops a session that never moves.)
    let deadline = tokio::time::Instant::now() + LIMIT;
    let mut n = 0u64;
    while accepted_resumes(metrics).await < 3.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} echoes and the session moved {} times",
            accepted_resumes(metrics).await
        );
        let data = random_bytes(1 + (n as usize * 7919) % (48 * 1024), n);
        sock.write_all(&data).await.expect("write");
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
            .await
            .expect("echo stalled")
            .expect("echo read");
        assert!(back == data, "echo {n} came back altered");
        n += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sock.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, sock.read_to_end(&mut rest))
        .await
        .expect("orderly end")
        .expect("read");
    assert!(rest.is_empty());
    let report = tokio::time::timeout(LIMIT, server.reports.recv())
        .await
        .expect("report")
        .expect("server running");
    assert_eq!(report.outcome, Ok(()));
    assert!(report.resumes >= 3, "moved {} times", report.resumes);
    assert_eq!(report.cuts, 0, "the session detached while it moved");
    let text = scrape(metrics).await;
    // Moved, never cut: the session did not detach once.
    assert_eq!(
        sample(&text, "postern_session_cuts_total"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "postern_resumes_total{result=\"accepted\",reason=\"ok\"}"
        ),
        Some(report.resumes as f64),
        "{text}"
    );
    assert_eq!(backend.accepts(), 1, "the backend saw one connection");
    eprintln!(
        "make-before-break: {n} echoes, {} moves, {:?} bytes resent",
        report.resumes,
        sample(&text, "postern_resent_bytes_total")
    );
    drop(front);
    shutdown.cancel();
}

/// A front end that alters the server's answer to a move: the server has
/// moved the session to the new stream and writes no more on the old one,
/// so the client must not stay there. It closes the local connection and
/// says why, instead of leaving the application waiting.
#[tokio::test]
async fn a_move_whose_answer_does_not_verify_closes_the_connection_and_says_why() {
    if !caddy::installed("a_move_whose_answer_does_not_verify_closes_the_connection_and_says_why") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &[]);
    // Every response gets a proof of 32 zero bytes: the first `200` has no
    // use for one, and a resume's `200` no longer verifies.
    let opts = caddy::Options {
        proxy: format!(
            "header_down {} \"{}=\"",
            handshake::RESUME_PROOF,
            "A".repeat(43)
        ),
        ..caddy::Options::default()
    };
    let front = Caddy::start_with(&pki, server.addr, caddy::free_port().await, &opts).await;
    let ca = pki.p("ca.pem");
    let extra = ["--tls-ca", &ca, "--max-request-age", "1s"];
    let (client, sock) = client_with_one_echo(&pki, front.url(), &extra).await;
    // The move comes a second after the tunnel opened.
    let why = closed_saying(&client, sock, "session moved and not resumed").await;
    assert!(
        why.iter().any(|l| l.contains("proof")),
        "a log line says why: {why:?} {:?}",
        client.log_lines("resume")
    );
}

#[tokio::test]
async fn a_server_that_stops_offering_sessions_gets_plain_tunnels_again() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut server = child::server(&pki, backend.addr, &[]);
    let addr = server.addr;
    let shutdown = CancellationToken::new();
    let url = format!("http://{addr}/");
    let client = start_client(&url, &strs(&child::client_flags(&pki)), &shutdown).await;
    // The first tunnel learns that the server offers sessions, so the next
    // one starts its session before the answer comes.
    let data = random_bytes(100_000, 1);
    assert_eq!(
        round_trip(client, &data).await.expect("with sessions"),
        data
    );
    server.kill();
    let _plain = child::server_on(&pki, backend.addr, &addr.to_string(), &["--no-resume"]);
    // That optimistic start meets a server without sessions: its inner
    // handshake fails on the first frame, before any backend, and the
    // client asks again the plain way. The application sees nothing of it.
    // Tunnels fail until the client's dial backoff after the kill ends.
    let deadline = tokio::time::Instant::now() + LIMIT;
    let back = loop {
        match round_trip(client, &data).await {
            Ok(b) => break b,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("before the plain server is reached: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("no tunnel to the plain server: {e}"),
        }
    };
    assert_eq!(back, data);
    let again = round_trip(client, &data).await.expect("and the next");
    assert_eq!(again, data);
    shutdown.cancel();
}
