//! Server hardening: what an unauthenticated peer can make the server hold,
//! connection limits, identity strictness and malformed requests. The
//! attackers are real HTTP/2 clients built on the h2 crate (or the raw frame
//! writer where h2 would refuse to send the request), against a real
//! `postern server` child process whose memory is read from /proc.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::*;
use crate::harness::{child, rawh2};
use bytes::Bytes;
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
    let config = raw_client_config(pki, None);
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
        send.send_data(Bytes::from(hello), false)
            .expect("send hello");
        sends.push(send);
        client = client.ready().await.expect("h2 ready");
    }
    let mut pushed = 0;
    let chunk = Bytes::from(vec![0x16u8; 256 * 1024]);
    for send in &mut sends {
        loop {
            send.reserve_capacity(chunk.len());
            let granted =
                tokio::time::timeout(QUIET, std::future::poll_fn(|cx| send.poll_capacity(cx)))
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
    let client = start_client(&url, &strs(&cflags), &shutdown).await;
    // Warm up: one real tunnel, so the baseline includes a used TLS stack.
    let data = random_bytes(1 << 20, 1);
    assert_eq!(round_trip(client, &data).await.unwrap(), data);
    let baseline = server.rss_kib();
    let fds = server.fds();

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
    assert_eq!(
        sha256(&round_trip(client, &data).await.unwrap()),
        sha256(&data)
    );
    assert!(
        per_conn <= 1024,
        "each unauthenticated connection pins {per_conn} KiB (pushed {} KiB)",
        pushed / CONNECTIONS / 1024
    );
    assert!(
        pushed / CONNECTIONS <= 1 << 20,
        "flow control let {} KiB per unauthenticated connection through",
        pushed / CONNECTIONS / 1024
    );
    drop(held);
    // Once the server has closed them all, how much of it went back to the OS.
    for _ in 0..600 {
        if server.fds() <= fds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "after the flood: RSS {} KiB (baseline {baseline} KiB, peak {} KiB)",
        server.rss_kib(),
        server.peak_kib()
    );
    shutdown.cancel();
}

/// Starts an in-process server with inner mTLS on `backend` plus `extra`.
async fn in_process(
    pki: &Pki,
    backend: SocketAddr,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> Server {
    let mut flags = server_flags(pki);
    flags.extend(["--backend".to_owned(), backend.to_string()]);
    flags.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&strs(&flags), shutdown).await
}

#[tokio::test]
async fn connect_without_authority_is_reset_as_malformed() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let server = in_process(
        &pki,
        backend.addr,
        &["--metrics-listen", "127.0.0.1:0"],
        &shutdown,
    )
    .await;
    // h2 will not send a CONNECT without :authority; the raw writer will.
    let mut conn = rawh2::RawConn::handshake(server.addr).await;
    let block = rawh2::header_block(&[(":method", "CONNECT")]);
    conn.send(&rawh2::frame(rawh2::HEADERS, rawh2::END_HEADERS, 1, &block))
        .await
        .unwrap();
    let seen = conn
        .wait_for(LIMIT, "a reset or an answer on stream 1", |s| {
            s.resets.contains_key(&1) || s.responses.contains_key(&1)
        })
        .await;
    assert_eq!(seen.responses.get(&1), None, "answered: {seen:?}");
    assert_eq!(seen.resets.get(&1), Some(&0x1), "PROTOCOL_ERROR expected");
    // With :authority, CONNECT is still a tunnel (answered 200, no END_STREAM).
    let block = rawh2::header_block(&[(":method", "CONNECT"), (":authority", "localhost:443")]);
    conn.send(&rawh2::frame(rawh2::HEADERS, rawh2::END_HEADERS, 3, &block))
        .await
        .unwrap();
    let seen = conn
        .wait_for(LIMIT, "an answer on stream 3", |s| {
            s.responses.contains_key(&3)
        })
        .await;
    assert_eq!(seen.responses.get(&3), Some(&false));
    let text = scrape(server.config.metrics_addr.unwrap()).await;
    assert_eq!(
        sample(&text, "postern_refusals_total{reason=\"malformed\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn connections_beyond_max_connections_are_closed_and_counted() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let flags = ["--max-connections", "2", "--metrics-listen", "127.0.0.1:0"];
    let server = in_process(&pki, backend.addr, &flags, &shutdown).await;
    let has_settings = |s: &rawh2::Seen| s.frames.contains_key(&rawh2::SETTINGS);
    let mut first = rawh2::RawConn::handshake(server.addr).await;
    first.wait_for(LIMIT, "server SETTINGS", has_settings).await;
    let mut second = rawh2::RawConn::handshake(server.addr).await;
    second
        .wait_for(LIMIT, "server SETTINGS", has_settings)
        .await;
    let mut third = rawh2::RawConn::connect(server.addr).await;
    let seen = third
        .wait_closed(LIMIT, "the third connection closed")
        .await;
    assert!(
        seen.frames.is_empty(),
        "the third connection was served: {seen:?}"
    );
    let text = scrape(server.config.metrics_addr.unwrap()).await;
    let get = |series: &str| sample(&text, series);
    assert_eq!(
        get("postern_connections_refused_total{reason=\"max_connections\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get("postern_connections_open"), Some(2.0), "{text}");
    // A slot freed is a slot for the next connection.
    drop(first);
    let mut gauge = 2.0;
    for _ in 0..600 {
        let text = scrape(server.config.metrics_addr.unwrap()).await;
        gauge = sample(&text, "postern_connections_open").unwrap_or(gauge);
        if gauge < 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gauge, 1.0);
    let mut fourth = rawh2::RawConn::handshake(server.addr).await;
    fourth
        .wait_for(LIMIT, "server SETTINGS", has_settings)
        .await;
    drop(second);
    shutdown.cancel();
}

#[tokio::test]
async fn a_connection_with_no_open_stream_is_closed_after_the_idle_timeout() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let flags = [
        "--connection-idle-timeout",
        "300ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let server = in_process(&pki, backend.addr, &flags, &shutdown).await;
    let metrics = server.config.metrics_addr.unwrap();
    let open_connections = || async move {
        sample(&scrape(metrics).await, "postern_connections_open").expect("the gauge")
    };
    let mut conn = rawh2::RawConn::handshake(server.addr).await;
    let seen = conn.wait_closed(LIMIT, "the idle connection closed").await;
    assert_eq!(
        seen.goaway,
        Some(0),
        "a GOAWAY with NO_ERROR first: {seen:?}"
    );
    assert!(poll(|| async { open_connections().await == 0.0 }).await);
    // A tunnel keeps its connection open past the timeout: an idle
    // connection opened after it is closed first.
    let (client, forward) = start_client_with_pool(
        &format!("http://127.0.0.1:{}/", server.addr.port()),
        &strs(&client_flags(&pki, &[])),
        &shutdown,
    )
    .await;
    let mut sock = TcpStream::connect(client).await.unwrap();
    sock.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    sock.read_exact(&mut buf).await.unwrap();
    let mut later = rawh2::RawConn::handshake(server.addr).await;
    later
        .wait_closed(LIMIT, "the later idle connection closed")
        .await;
    sock.write_all(b"pong").await.unwrap();
    sock.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"pong", "the open tunnel survived the idle timeout");
    assert!(
        poll(|| async { open_connections().await == 1.0 }).await,
        "the tunnel's connection is the one left open"
    );
    assert_eq!(pool_connections(&forward.connector).await, 1);
    // Once its tunnel has ended, the connection idles and is closed; the
    // pooled client lets it go and dials one new connection for the next.
    drop(sock);
    assert!(
        poll(|| async { open_connections().await == 0.0 }).await,
        "the server kept the idle pooled connection open"
    );
    assert!(
        poll(|| async { pool_connections(&forward.connector).await == 0 }).await,
        "the client kept the closed connection in its pool"
    );
    assert_eq!(round_trip(client, b"again").await.unwrap(), b"again");
    assert_eq!(pool_connections(&forward.connector).await, 1);
    assert_eq!(backend.accepts(), 2);
    shutdown.cancel();
}

#[tokio::test]
async fn a_backend_without_a_port_fails_at_start_up_naming_the_flag() {
    let shutdown = CancellationToken::new();
    for bad in ["localhost", "127.0.0.1:", "db:99999", ":5432"] {
        let args: postern::server::Args =
            postern::cmd::parse_args("server", &["--backend", bad, "--no-inner-tls"])
                .expect("flags parse");
        let err = match postern::server::Config::from_args(&args, &shutdown).await {
            Ok(_) => panic!("--backend {bad} accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err.contains("--backend") && err.contains(bad), "{err}");
    }
    shutdown.cancel();
}

/// An intermediate CA under `root` whose KeyUsage lacks keyCertSign, as a
/// [`postern::pki::Ca`] that issues leaves (with itself in their chain).
fn ca_without_cert_sign(root: &postern::pki::Ca) -> postern::pki::Ca {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let root_key = KeyPair::from_pem(&root.key_pem()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&root.cert_pem(), root_key).unwrap();
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "No Cert Sign Intermediate");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    postern::pki::Ca::from_pem(&cert.pem(), &key.serialize_pem()).unwrap()
}

/// Runs one echo tunnel with the certificate files in `pki` as they are;
/// returns what came back (None if the tunnel was refused), the server's
/// report and how many connections the backend saw.
async fn tunnel_with(pki: &Pki) -> (Option<Vec<u8>>, postern::server::TunnelReport, usize) {
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let mut server = in_process(pki, backend.addr, &[], &shutdown).await;
    let client = start_client(
        &format!("http://127.0.0.1:{}/", server.addr.port()),
        &strs(&client_flags(pki, &[])),
        &shutdown,
    )
    .await;
    let back = round_trip(client, b"secret")
        .await
        .ok()
        .filter(|b| !b.is_empty());
    let report = server.report().await;
    shutdown.cancel();
    (back, report, backend.accepts())
}

#[tokio::test]
async fn an_intermediate_without_key_cert_sign_is_refused_on_both_sides() {
    // Control: a proper intermediate signs for either side.
    let pki = Pki::new();
    let good = pki.ca.intermediate("Good Intermediate").unwrap();
    let leaf = good
        .issue(&postern::pki::LeafSpec::client(&[CLIENT_ID]))
        .unwrap();
    write_pair(&pki.dir, "client", &leaf);
    let (back, _, _) = tunnel_with(&pki).await;
    assert_eq!(back.as_deref(), Some(&b"secret"[..]));

    // The server refuses a client whose chain runs through a CA that may not sign.
    let pki = Pki::new();
    let bad = ca_without_cert_sign(&pki.ca);
    let leaf = bad
        .issue(&postern::pki::LeafSpec::client(&[CLIENT_ID]))
        .unwrap();
    write_pair(&pki.dir, "client", &leaf);
    let (back, report, accepts) = tunnel_with(&pki).await;
    assert_eq!(back, None);
    assert_eq!(accepts, 0);
    let why = report.outcome.unwrap_err();
    assert!(why.contains("keyCertSign"), "{why}");

    // The client refuses such a server.
    let pki = Pki::new();
    let bad = ca_without_cert_sign(&pki.ca);
    let leaf = bad
        .issue(&postern::pki::LeafSpec::server(&["localhost"]))
        .unwrap();
    write_pair(&pki.dir, "server", &leaf);
    let (back, report, accepts) = tunnel_with(&pki).await;
    assert_eq!(back, None);
    assert_eq!(accepts, 0);
    assert!(report.outcome.is_err(), "{report:?}");
}

#[tokio::test]
async fn the_san_that_matched_the_allow_list_is_logged_and_sent_in_the_proxy_header() {
    let pki = Pki::new();
    let names = [
        "spiffe://elsewhere.org/other",
        "spiffe://test.postern/client/a",
    ];
    let leaf = pki
        .ca
        .issue(&postern::pki::LeafSpec::client(&names))
        .unwrap();
    write_pair(&pki.dir, "client", &leaf);
    // A backend that reads the PROXY header and echoes its identity.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let header = loop {
            let n = sock.read(&mut chunk).await.unwrap();
            assert!(n > 0, "EOF before the PROXY header");
            buf.extend_from_slice(&chunk[..n]);
            match postern::testing::proxy_protocol::decode(&buf) {
                Ok((h, _)) => break h,
                Err(postern::testing::proxy_protocol::DecodeError::Truncated { .. }) => {}
                Err(e) => panic!("bad PROXY header: {e}"),
            }
        };
        let _ = sock
            .write_all(header.identity.unwrap_or_default().as_bytes())
            .await;
        let _ = sock.shutdown().await;
    });
    let shutdown = CancellationToken::new();
    let flags = [
        "--allow",
        "spiffe://test.postern/client/*",
        "--proxy-protocol",
    ];
    let mut server = in_process(&pki, backend, &flags, &shutdown).await;
    let client = start_client(
        &format!("http://127.0.0.1:{}/", server.addr.port()),
        &strs(&client_flags(&pki, &[])),
        &shutdown,
    )
    .await;
    let back = read_all(client).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&back), names[1]);
    let report = server.report().await;
    let id = report.identity.expect("identity");
    assert_eq!(id.to_string(), names[1]);
    assert_eq!(id.uris, names, "the full list stays in the report");
    shutdown.cancel();
}

#[tokio::test]
async fn a_reload_stuck_on_a_file_does_not_stall_the_accept_loop() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let server = in_process(&pki, backend.addr, &["--watch-interval", "0"], &shutdown).await;
    // The CA file becomes a FIFO: reading it blocks until a writer comes.
    let ca = pki.dir.path("ca.pem");
    let ca_pem = std::fs::read_to_string(&ca).unwrap();
    std::fs::remove_file(&ca).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&ca)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    let (reader_in, answered, released) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let writer = {
        let (reader_in, answered, released) =
            (reader_in.clone(), answered.clone(), released.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // O_NONBLOCK: opening for writing fails until the reload opens it for reading.
            let mut fifo = loop {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(0o4000)
                    .open(&ca)
                {
                    Ok(f) => break f,
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            };
            reader_in.store(true, Ordering::SeqCst);
            // Hold the reload until the server has answered (or long enough
            // to tell that it cannot while the reload blocks it).
            for _ in 0..200 {
                if answered.load(Ordering::SeqCst) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            released.store(true, Ordering::SeqCst);
            let _ = fifo.write_all(ca_pem.as_bytes());
        })
    };
    server.config.live.request_reload();
    while !reader_in.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut conn = rawh2::RawConn::handshake(server.addr).await;
    conn.wait_for(LIMIT, "server SETTINGS", |s| {
        s.frames.contains_key(&rawh2::SETTINGS)
    })
    .await;
    let stalled = released.load(Ordering::SeqCst);
    answered.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    assert!(
        !stalled,
        "a new connection was only served once the stuck reload was released"
    );
    shutdown.cancel();
}

/// One authenticated tunnel earns its connection full windows: a 256 MiB
/// transfer goes through intact, and a stream opened next to an
/// authenticated tunnel may send a whole stream window (8 MiB, not the
/// 64 KiB before authentication) at once, which the connection window
/// covers too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimate_tunnel_earns_full_windows() {
    use postern::testing::transport::stream::H2Stream;
    const FULL: usize = 8 * 1024 * 1024;
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let server = child::server(&pki, backend.addr, &[]);
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let cflags = child::client_flags(&pki);
    let local = start_client(&url, &strs(&cflags), &shutdown).await;
    let data = random_bytes(256 << 20, 3);
    let back = round_trip(local, &data).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&back), sha256(&data));

    let sock = TcpStream::connect(server.addr).await.unwrap();
    // h2 shows at most the send buffer as capacity: make room for a window.
    let (client, conn) = postern::testing::transport::settings::client_builder()
        .max_send_buffer_size(2 * FULL)
        .handshake::<_, Bytes>(sock)
        .await
        .expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://localhost/").body(()).unwrap();
    let (response, send) = client.send_request(req, false).unwrap();
    let config = postern::tls::inner_client_config(
        postern::tls::CertSlot::new(
            postern::tls::pem::load_identity(
                &pki.dir.path("client.pem"),
                &pki.dir.path("client-key.pem"),
            )
            .unwrap(),
        ),
        postern::tls::pem::load_roots(&pki.dir.path("ca.pem")).unwrap(),
    )
    .unwrap();
    let mut tls = tokio::time::timeout(
        LIMIT,
        tokio_rustls::TlsConnector::from(config).connect(
            rustls_pki_types::ServerName::try_from("localhost").unwrap(),
            H2Stream::client(send, response),
        ),
    )
    .await
    .expect("inner handshake timed out")
    .expect("inner handshake");
    // The server counts the tunnel authenticated once it has read our
    // Finished; the bounded wait below covers the moment in between.
    tls.write_all(b"x").await.unwrap();
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://localhost/").body(()).unwrap();
    let (_response, mut beside) = client.send_request(req, false).unwrap();
    // More than a window asked for: the capacity shows the window itself.
    beside.reserve_capacity(2 * FULL);
    tokio::time::timeout(LIMIT, async {
        while beside.capacity() < FULL {
            let got = std::future::poll_fn(|cx| beside.poll_capacity(cx)).await;
            if !matches!(got, Some(Ok(_))) {
                panic!("capacity: {got:?}");
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "a stream beside an authenticated tunnel got {} bytes of window",
            beside.capacity()
        )
    });
    assert_eq!(beside.capacity(), FULL, "exactly one stream window");
    drop((tls, beside));
    shutdown.cancel();
}
