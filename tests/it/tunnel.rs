//! End-to-end tunnels through the real stack: TCP -> postern client -> TLS
//! front end -> h2c -> postern server -> backend, on loopback.

use std::sync::Arc;

use crate::harness::*;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn banner_through_front_end_with_verified_identities() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Banner).await;
    let mut stack = Stack::via_front(&pki, backend.addr).await;
    let got = read_all(stack.client).await.expect("read banner");
    assert_eq!(String::from_utf8_lossy(&got), BANNER);
    let report = stack.report().await;
    assert_eq!(report.outcome, Ok(()));
    let id = report.identity.expect("server saw a client identity");
    assert_eq!(id.uris, vec![CLIENT_ID.to_string()]);
    assert_eq!(report.totals.inbound, BANNER.len() as u64);
    assert_eq!(backend.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_random_payload_echoes_intact() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut stack = Stack::via_front(&pki, backend.addr).await;
    let data = random_bytes(64 << 20, 1);
    let back = round_trip(stack.client, &data).await.expect("echo");
    assert_eq!(back.len(), data.len());
    assert_eq!(sha256(&back), sha256(&data));
    let report = stack.report().await;
    assert_eq!(report.totals.outbound, data.len() as u64);
    assert_eq!(report.totals.inbound, data.len() as u64);
}

#[tokio::test]
async fn half_close_reaches_backend_and_reply_still_arrives() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let stack = Stack::via_front(&pki, backend.addr).await;
    let data = random_bytes(300_000, 2);
    // The backend answers only after it sees EOF, so the reply proves the
    // client's FIN crossed both TLS layers while the reverse path stayed open.
    let back = round_trip(stack.client, &data).await.expect("round trip");
    assert_eq!(String::from_utf8_lossy(&back), sha256(&data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_tunnels_keep_their_own_data() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let stack = Stack::via_front(&pki, backend.addr).await;
    let done = echo_many(stack.client, 100, 100, |i| {
        10_000 + (i as usize * 7919) % 200_000
    })
    .await;
    assert_eq!(done, 100);
    assert_eq!(backend.accepts(), 100);
}

#[tokio::test]
async fn direct_h2c_path_works_without_front_end() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let stack = Stack::direct(&pki, backend.addr).await;
    let back = round_trip(stack.client, b"hello over h2c")
        .await
        .expect("echo");
    assert_eq!(back, b"hello over h2c");
}

/// Sends a probe through the client and expects the tunnel to be refused:
/// no reply bytes and a closed connection.
async fn assert_refused(client: std::net::SocketAddr) {
    let result = round_trip(client, b"must not reach the backend").await;
    match result {
        Ok(bytes) => assert!(bytes.is_empty(), "refused tunnel returned data: {bytes:?}"),
        Err(e) => assert!(
            !e.to_string().contains("timed out"),
            "refused tunnel hung instead of closing: {e}"
        ),
    }
}

#[tokio::test]
async fn client_without_certificate_is_refused_before_backend() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (server, mut reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    // A client that verifies the server but presents no certificate.
    let config = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pem::load_roots(&pki.dir.path("ca.pem")).unwrap())
        .with_no_client_auth();
    let target = Target::parse(&format!("http://127.0.0.1:{}/", server.port())).unwrap();
    let forward = Arc::new(Forward {
        connector: Arc::new(Connector::new(target, None, 100, None, LIMIT)),
        inner: Some((Arc::new(config), ServerName::try_from("localhost").unwrap())),
        inner_dest: None,
        destinations: Default::default(),
        headers: Default::default(),
        tokens: None,
        handshake_timeout: LIMIT,
        workers: workers::default_count(),
        busy_poll: std::time::Duration::ZERO,
        resume: None,
    });
    let client = start_forward(forward, &shutdown).await;
    assert_refused(client).await;
    let report = tokio::time::timeout(LIMIT, reports.recv())
        .await
        .unwrap()
        .unwrap();
    let reason = report.outcome.expect_err("server must refuse");
    assert!(reason.contains("handshake"), "unexpected reason: {reason}");
    assert!(report.identity.is_none());
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused_before_backend() {
    let pki = Pki::new();
    let other = pki::Ca::new("Other CA", pki::KeyAlg::EcdsaP256).unwrap();
    let stranger = other
        .issue(&pki::LeafSpec::client(&["spiffe://evil/client"]))
        .unwrap();
    write_pair(&pki.dir, "stranger", &stranger);
    let backend = TestBackend::start(Backend::Echo).await;
    let mut stack = Stack::build(
        &pki,
        backend.addr,
        Front::Ours,
        &[
            "--cert",
            &pki.p("stranger.pem"),
            "--key",
            &pki.p("stranger-key.pem"),
        ],
    )
    .await;
    assert_refused(stack.client).await;
    let reason = stack
        .report()
        .await
        .outcome
        .expect_err("server must refuse");
    assert!(reason.contains("handshake"), "unexpected reason: {reason}");
    assert_eq!(backend.accepts(), 0);
}

#[tokio::test]
async fn server_with_the_wrong_name_is_refused_by_the_client() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut stack = Stack::build(
        &pki,
        backend.addr,
        Front::Ours,
        &["--server-name", "db.internal"],
    )
    .await;
    assert_refused(stack.client).await;
    let report = stack.report().await;
    assert!(
        report.outcome.is_err(),
        "server must not count this as a tunnel"
    );
    assert_eq!(backend.accepts(), 0);
}

#[tokio::test]
async fn unreachable_backend_closes_the_local_connection() {
    let pki = Pki::new();
    let dead = dead_addr().await;
    let mut stack = Stack::via_front(&pki, dead).await;
    let mut sock = TcpStream::connect(stack.client).await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(LIMIT, sock.read(&mut buf))
        .await
        .expect("local connection left hanging");
    assert!(matches!(r, Ok(0) | Err(_)), "expected close, got {r:?}");
    let reason = stack.report().await.outcome.expect_err("backend was down");
    assert!(
        reason.contains("unreachable"),
        "unexpected reason: {reason}"
    );
}

#[tokio::test]
async fn plain_tunnel_without_inner_tls() {
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (server, _reports) = start_server(backend.addr, &["--no-inner-tls"], &shutdown).await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let client = start_client(&url, &["--no-inner-tls"], &shutdown).await;
    let back = round_trip(client, b"plain bytes").await.unwrap();
    assert_eq!(back, b"plain bytes");
    // Backend down in plain mode: the server answers 502 and the client closes.
    let (server2, _r2) = start_server(dead_addr().await, &["--no-inner-tls"], &shutdown).await;
    let client2 = start_client(
        &format!("http://127.0.0.1:{}/", server2.port()),
        &["--no-inner-tls"],
        &shutdown,
    )
    .await;
    assert_refused(client2).await;
    shutdown.cancel();
}

#[tokio::test]
async fn local_reset_propagates_as_reset() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut stack = Stack::via_front(&pki, backend.addr).await;
    let mut sock = TcpStream::connect(stack.client).await.unwrap();
    sock.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    sock.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");
    // Abortive close: the tunnel must end as a failure, not a clean close.
    sock.set_zero_linger().unwrap();
    drop(sock);
    let report = stack.report().await;
    assert!(
        report.outcome.is_err(),
        "a reset was reported as a clean close"
    );
}

#[tokio::test]
async fn unreachable_front_end_closes_every_local_connection_promptly() {
    let pki = Pki::new();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let dead = dead_addr().await;
    let url = format!("http://127.0.0.1:{}/", dead.port());
    let (cert, key, ca) = (
        pki.p("client.pem"),
        pki.p("client-key.pem"),
        pki.p("ca.pem"),
    );
    let client = start_client(
        &url,
        &["--cert", &cert, "--key", &key, "--ca", &ca],
        &shutdown,
    )
    .await;
    // Many tunnels queue behind one failing dial; none may be left hanging
    // (read_all fails the test on its hang limit).
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        tasks.spawn(async move { read_all(client).await });
    }
    // Each ends closed by the client, without a byte: EOF or a reset.
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Ok(bytes) => assert!(bytes.is_empty(), "{bytes:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
    shutdown.cancel();
}

/// A self-hosted server with outer TLS (`server_extra`, `client_extra` added
/// to the usual flags): a client's first tunnel, held open, and a second one,
/// which must dial a connection of its own, bulk data both ways on it.
/// Returns the server's outer handshakes by kind: (full, resumed, early_data).
async fn second_connection(server_extra: &[&str], client_extra: &[&str]) -> (f64, f64, f64) {
    let shutdown = CancellationToken::new();
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut flags = server_flags(&pki);
    let (cert, key) = (pki.p("front.pem"), pki.p("front-key.pem"));
    flags.extend(["--backend".to_owned(), backend.addr.to_string()]);
    flags.extend(["--tls-cert".to_owned(), cert, "--tls-key".to_owned(), key]);
    flags.extend(["--metrics-listen".to_owned(), "127.0.0.1:0".to_owned()]);
    flags.extend(server_extra.iter().map(|s| s.to_string()));
    let mut server = Server::start(&strs(&flags), &shutdown).await;
    let metrics = server.config.metrics_addr.expect("metrics listener");
    let url = format!("https://localhost:{}/", server.addr.port());
    let client = start_client_one_stream_each(&pki, &url, client_extra, &shutdown).await;

    // The first tunnel stays open, so the second needs a connection of its own.
    let held = open_echo(client, 1).await;
    let bulk = random_bytes(4 << 20, 2);
    let back = round_trip(client, &bulk).await.unwrap();
    assert_eq!(sha256(&back), sha256(&bulk));
    assert_eq!(server.report().await.outcome, Ok(()));

    let text = scrape(metrics).await;
    let get = |kind: &str| {
        sample(
            &text,
            &format!("postern_outer_handshakes_total{{kind=\"{kind}\"}}"),
        )
        .unwrap_or(0.0)
    };
    drop(held);
    shutdown.cancel();
    (get("full"), get("resumed"), get("early_data"))
}

/// The client's second connection resumes the first's session and sends its
/// HTTP/2 preface and tunnel request as 0-RTT data, which the server takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_connection_sends_its_first_tunnel_as_early_data() {
    assert_eq!(second_connection(&[], &[]).await, (1.0, 0.0, 1.0));
}

/// `--no-early-data` on either side: the session still resumes, and the
/// request waits for the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_early_data_on_either_side_resumes_without_it() {
    let no = ["--no-early-data"];
    assert_eq!(second_connection(&no, &[]).await, (1.0, 1.0, 0.0), "server");
    assert_eq!(second_connection(&[], &no).await, (1.0, 1.0, 0.0), "client");
}
