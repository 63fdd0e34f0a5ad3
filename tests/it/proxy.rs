//! The client through a real forward proxy (tinyproxy): CONNECT with and
//! without Basic authentication, the `407` named in one line, the
//! environment honoured, `NO_PROXY` and `--proxy none` bypassing it.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

use crate::harness::child::Launch;
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
