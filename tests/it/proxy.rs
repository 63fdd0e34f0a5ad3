//! The client through a real forward proxy (tinyproxy): CONNECT with and
//! without Basic authentication, the `407` named in one line, the
//! environment honoured, `NO_PROXY` and `--proxy none` bypassing it.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

use crate::harness::child::Launch;
use crate::harness::mitmproxy::{self, Mitmproxy};
use crate::harness::tinyproxy::{self, Tinyproxy};
use crate::harness::*;
use tokio_util::sync::CancellationToken;

/// A server with inner mTLS behind the demo TLS front end; its URL.
async fn service(pki: &Pki, backend: std::net::SocketAddr, shutdown: &CancellationToken) -> String {
    let (server, _reports) = start_server(backend, &strs(&server_flags(pki)), shutdown).await;
    let front = start_front(pki, server, shutdown).await;
    format!("https://localhost:{}/", front.port())
}

/// The digest round trip every test here uses as proof that a tunnel works.
async fn works(client: std::net::SocketAddr, seed: u64) -> bool {
    let data = random_bytes(300_000, seed);
    match round_trip(client, &data).await {
        Ok(back) => String::from_utf8_lossy(&back) == sha256(&data),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_tunnel_through_tinyproxy_carries_hashed_bytes() {
    if !tinyproxy::installed("a_tunnel_through_tinyproxy_carries_hashed_bytes") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let shutdown = CancellationToken::new();
    let url = service(&pki, backend.addr, &shutdown).await;
    let proxy = Tinyproxy::start(None).await;
    let client =
        start_client_trusting_front(&pki, &url, &["--proxy", &proxy.url("")], &shutdown).await;
    assert!(works(client, 51).await, "{}", proxy.log());
    assert!(
        proxy.log().contains("CONNECT"),
        "the proxy carried it: {}",
        proxy.log()
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_proxy_asking_for_credentials_is_named_with_its_scheme_and_credentials_open_it() {
    if !tinyproxy::installed("a_proxy_asking_for_credentials_is_named_with_its_scheme") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let shutdown = CancellationToken::new();
    let url = service(&pki, backend.addr, &shutdown).await;
    let proxy = Tinyproxy::start(Some(("alice", "s3cret"))).await;
    let ca = pki.p("ca.pem");
    let open_error = |flags: Vec<String>| {
        let url = url.clone();
        let shutdown = shutdown.clone();
        async move {
            let (_, forward) = start_client_with_pool(&url, &strs(&flags), &shutdown).await;
            match forward.connector.open(&http::HeaderMap::new()).await {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        }
    };
    let bare = proxy.url("");
    let why = open_error(client_flags(&pki, &["--tls-ca", &ca, "--proxy", &bare])).await;
    let wanted = format!(
        "proxy 127.0.0.1:{} wants authentication (Basic)",
        proxy.port
    );
    assert!(why.contains(&wanted), "{why}");
    assert!(!why.contains('\n'), "one line: {why}");
    let wrong = proxy.url("alice:wrong@");
    let why = open_error(client_flags(&pki, &["--tls-ca", &ca, "--proxy", &wrong])).await;
    assert!(why.contains("refused the credentials given"), "{why}");
    assert!(!why.contains("wrong"), "no credentials in messages: {why}");

    // Credentials in the URL's user info, or in a file.
    let with = proxy.url("alice:s3cret@");
    let client = start_client_trusting_front(&pki, &url, &["--proxy", &with], &shutdown).await;
    assert!(works(client, 52).await, "{}", proxy.log());
    let dir = TempDir::new("proxy-creds");
    let file = dir.write("creds", "alice:s3cret\n");
    let client = start_client_trusting_front(
        &pki,
        &url,
        &["--proxy", &bare, "--proxy-credentials-file", &file],
        &shutdown,
    )
    .await;
    assert!(works(client, 53).await, "{}", proxy.log());
    shutdown.cancel();
}

#[tokio::test]
async fn https_proxy_from_the_environment_is_honoured_and_no_proxy_or_none_bypass_it() {
    if !tinyproxy::installed("https_proxy_from_the_environment_is_honoured") {
        return;
    }
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::HashAfterEof).await;
    let shutdown = CancellationToken::new();
    let url = service(&pki, backend.addr, &shutdown).await;
    // A proxy that lets nothing through without credentials: a tunnel that
    // works did not go through it.
    let proxy = Tinyproxy::start(Some(("alice", "s3cret"))).await;
    let ca = pki.p("ca.pem");
    let launch = |extra: &[&str], env: &[(&str, &str)]| {
        let mut flags = vec!["--url", &url, "--tls-ca", &ca];
        flags.extend_from_slice(extra);
        let mut args = client_flags(&pki, &flags);
        let port = free_local_port();
        args.extend(["--listen".to_owned(), format!("127.0.0.1:{port}")]);
        let mut launch = Launch::new("client", &strs(&args));
        for (k, v) in env {
            launch = launch.env(k, v);
        }
        (launch, port)
    };
    let env_proxy = proxy.url("");
    // Honoured: the proxy's 407 is what the tunnel meets.
    let (l, port) = launch(&[], &[("HTTPS_PROXY", &env_proxy)]);
    let client = l.start_on(port).await;
    assert!(!works(client.addr, 54).await);
    let lines = client.wait_log_lines("wants authentication (Basic)").await;
    assert!(!lines.is_empty(), "{}", client.log_text());
    // NO_PROXY covers the front end's host: straight there.
    let (l, port) = launch(
        &[],
        &[
            ("HTTPS_PROXY", &env_proxy),
            ("NO_PROXY", "example.com,localhost"),
        ],
    );
    let client = l.start_on(port).await;
    assert!(works(client.addr, 55).await, "{}", client.log_text());
    // --proxy none ignores the environment.
    let (l, port) = launch(&["--proxy", "none"], &[("https_proxy", &env_proxy)]);
    let client = l.start_on(port).await;
    assert!(works(client.addr, 56).await, "{}", client.log_text());
    shutdown.cancel();
}

/// A port that was free a moment ago.
fn free_local_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A self-hosted server with inner mTLS and outer TLS (`--tls-cert`, the
/// PKI's `front` pair; ALPN h2 and http/1.1): its URL and the server.
async fn tls_server(
    pki: &Pki,
    backend: std::net::SocketAddr,
    shutdown: &CancellationToken,
) -> (String, Server) {
    let mut flags = server_flags(pki);
    flags.extend(["--backend".to_owned(), backend.to_string()]);
    flags.extend(["--tls-cert".to_owned(), pki.p("front.pem")]);
    flags.extend(["--tls-key".to_owned(), pki.p("front-key.pem")]);
    let server = Server::start(&strs(&flags), shutdown).await;
    (format!("https://localhost:{}/", server.addr.port()), server)
}

/// Why the client's first tunnel does not open, in its words.
async fn open_error(url: &str, flags: &[String], shutdown: &CancellationToken) -> String {
    let (_, forward) = start_client_with_pool(url, &strs(flags), shutdown).await;
    match forward.connector.open(&http::HeaderMap::new()).await {
        Ok(_) => String::new(),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_tls_intercepting_proxy_is_named_with_its_issuer_and_both_fixes() {
    let Some(mitmdump) = mitmproxy::find("a_tls_intercepting_proxy_is_named") else {
        return;
    };
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let url = service(&pki, backend.addr, &shutdown).await;
    let proxy = Mitmproxy::start(&mitmdump, &pki.p("ca.pem")).await;
    // Trusting the front end's own CA is not enough: mitmproxy re-signs.
    let flags = client_flags(
        &pki,
        &["--tls-ca", &pki.p("ca.pem"), "--proxy", &proxy.url()],
    );
    let why = open_error(&url, &flags, &shutdown).await;
    for part in [
        "the path intercepts TLS",
        &format!("through proxy 127.0.0.1:{}", proxy.port),
        "issued by \"CN=mitmproxy, O=mitmproxy\"",
        "--tls-ca <the proxy's CA certificate>",
        "NO_PROXY=localhost",
    ] {
        assert!(why.contains(part), "{part:?} in: {why}\n{}", proxy.log());
    }
    assert!(!why.contains('\n'), "one line: {why}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_tls_intercepting_proxy_with_its_ca_the_inner_mtls_holds_and_it_sees_ciphertext()
{
    let Some(mitmdump) =
        mitmproxy::find("through_a_tls_intercepting_proxy_with_its_ca_the_inner_mtls_holds")
    else {
        return;
    };
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (url, mut server) = tls_server(&pki, backend.addr, &shutdown).await;
    let proxy = Mitmproxy::start(&mitmdump, &pki.p("ca.pem")).await;
    let ca = proxy.ca();
    let client = start_client(
        &url,
        &strs(&client_flags(
            &pki,
            &[
                "--tls-ca",
                &ca,
                "--proxy",
                &proxy.url(),
                "--transport",
                "websocket",
            ],
        )),
        &shutdown,
    )
    .await;
    // mitmproxy 11 holds an HTTP/2 request until its body ends, which a
    // tunnel's never does before the answer: through it, WebSocket.
    // A plaintext marker among random bytes, hashed both ways.
    let mut data = MARKER.repeat(10_000);
    data.extend(random_bytes(300_000, 57));
    let back = round_trip(client, &data)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", proxy.log()));
    assert_eq!(sha256(&back), sha256(&data), "{}", proxy.log());
    let report = server.report().await;
    let id = report
        .identity
        .expect("the server verified a client identity");
    assert_eq!(id.uris, vec![CLIENT_ID.to_string()]);
    // mitmproxy carried the tunnel (its flow names the upgrade) and dumped
    // every message it relayed: only the inner TLS's ciphertext. The
    // marker is short enough that each 16-byte row of its hex dump would
    // show one whole copy, had it seen the plaintext.
    let log = proxy.log();
    assert!(log.contains("Upgrade: websocket"), "{log}");
    assert!(log.contains("WebSocket binary message"), "{log}");
    assert!(
        !log.contains(std::str::from_utf8(MARKER).unwrap_or_default()),
        "the plaintext marker appears in mitmproxy's dump"
    );
    shutdown.cancel();
}

/// What the tests send through an intercepting proxy to see that it never
/// reads it.
const MARKER: &[u8] = b"SECRET!";
