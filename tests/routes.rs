//! Routes from `--config`: by path and by inner SNI, each with its own
//! allow-list and backend; PROXY protocol v2 to the backend.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

mod common;
#[path = "common/trust.rs"]
mod trust;

use common::*;
use postern::cmd::parse_args;
use postern::pki::LeafSpec;
use postern::server;
use postern::testing::proxy_protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trust::*;

#[tokio::test]
async fn config_conflicts_with_single_route_flags() {
    for flag in [
        ["--backend", "127.0.0.1:1"],
        ["--path", "/x"],
        ["--allow", "cn:a"],
    ] {
        let argv = [
            "--config",
            "routes.toml",
            "--no-inner-tls",
            flag[0],
            flag[1],
        ];
        let err = parse_args::<server::Args>("server", &argv).expect_err(flag[0]);
        assert!(err.to_string().contains("cannot be used with"), "{err}");
    }
    parse_args::<server::Args>("server", &["--no-inner-tls"]).expect_err("no backend, no config");
}

#[tokio::test]
async fn paths_lead_to_their_own_backends_and_allow_lists() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let (a, b) = (
        TestBackend::start(Backend::Echo).await,
        TestBackend::start(Backend::Echo).await,
    );
    let config = format!(
        r#"
[[route]]
name = "alpha"
path = "/a"
backend = "{}"
allow = ["{CLIENT_ID}"]

[[route]]
name = "beta"
path = "/b"
backend = "{}"
allow = ["spiffe://test.postern/admin"]
"#,
        a.addr, b.addr
    );
    let file = pki.dir.write("routes.toml", &config);
    let mut flags = inner_flags(&pki);
    flags.extend(["--config".to_owned(), file]);
    let mut server = Server::start(&strs(&flags), &shutdown).await;
    let cflags = client_flags(&pki, &[]);

    let to_a = start_client(&server.url("/a"), &strs(&cflags), &shutdown).await;
    assert_eq!(round_trip(to_a, b"to alpha").await.unwrap(), b"to alpha");
    let report = server.report().await;
    assert_eq!((report.route.as_str(), report.close), ("alpha", "closed"));
    assert_eq!((a.accepts(), b.accepts()), (1, 0));

    let to_b = start_client(&server.url("/b"), &strs(&cflags), &shutdown).await;
    assert_refused(to_b).await;
    let report = server.report().await;
    assert_eq!(report.route, "beta");
    let reason = report.outcome.expect_err("client not allowed on /b");
    assert!(reason.contains("not allowed"), "{reason}");
    assert_eq!((a.accepts(), b.accepts()), (1, 0));

    // An unknown path is a 404 before any TLS: no tunnel, no report.
    let nowhere = start_client(&server.url("/nowhere"), &strs(&cflags), &shutdown).await;
    assert_refused(nowhere).await;
    assert_eq!((a.accepts(), b.accepts()), (1, 0));
    assert!(server.reports.try_recv().is_err(), "404 produced a tunnel");
    shutdown.cancel();
}

#[tokio::test]
async fn inner_sni_picks_the_route_within_a_path() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    // One server certificate for all the names the clients will ask for.
    let server_cert = pki
        .ca
        .issue(&LeafSpec::server(&[
            "localhost",
            "a.internal",
            "b.internal",
            "c.internal",
        ]))
        .unwrap();
    write_pair(&pki.dir, "server", &server_cert);
    let (a, b) = (
        TestBackend::start(Backend::Echo).await,
        TestBackend::start(Backend::Echo).await,
    );
    let config = format!(
        r#"
[[route]]
name = "a"
path = "/"
sni = "a.internal"
backend = "{}"

[[route]]
name = "b"
path = "/"
sni = "B.internal"
backend = "{}"
allow = ["dns:nobody.internal"]
"#,
        a.addr, b.addr
    );
    let file = pki.dir.write("routes.toml", &config);
    let mut flags = inner_flags(&pki);
    flags.extend(["--config".to_owned(), file]);
    let mut server = Server::start(&strs(&flags), &shutdown).await;
    let url = server.url("/");
    let client = |name: &'static str| {
        let flags = client_flags(&pki, &["--server-name", name]);
        let url = url.clone();
        let shutdown = shutdown.clone();
        async move { start_client(&url, &strs(&flags), &shutdown).await }
    };

    let to_a = client("a.internal").await;
    assert_eq!(round_trip(to_a, b"sni a").await.unwrap(), b"sni a");
    let report = server.report().await;
    assert_eq!((report.route.as_str(), report.close), ("a", "closed"));

    let to_b = client("b.internal").await;
    assert_refused(to_b).await;
    let report = server.report().await;
    assert_eq!(report.route, "b");
    assert!(report.outcome.unwrap_err().contains("not allowed"));

    // No route for this SNI and no catch-all on the path: reset, never dialled.
    let to_c = client("c.internal").await;
    assert_refused(to_c).await;
    let report = server.report().await;
    assert_eq!(report.close, "no_route");
    assert!(report.outcome.unwrap_err().contains("c.internal"));
    assert_eq!((a.accepts(), b.accepts()), (1, 0));
    shutdown.cancel();
}

/// A backend that decodes the PROXY v2 header, then answers with what it
/// learnt: "identity|source|destination-port".
async fn proxy_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                let header = loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "EOF before a whole PROXY header");
                    buf.extend_from_slice(&chunk[..n]);
                    match proxy_protocol::decode(&buf) {
                        Ok((h, _)) => break h,
                        Err(proxy_protocol::DecodeError::Truncated { .. }) => continue,
                        Err(e) => panic!("bad PROXY header: {e}"),
                    }
                };
                let answer = format!(
                    "{}|{}|{}",
                    header.identity.unwrap_or_default(),
                    header.source,
                    header.destination.port()
                );
                sock.write_all(answer.as_bytes()).await.unwrap();
                sock.shutdown().await.unwrap();
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn proxy_protocol_header_carries_identity_and_forwarded_source() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let (backend, _task) = proxy_backend().await;
    let backend_s = backend.to_string();
    let mut flags = inner_flags(&pki);
    flags.extend(["--backend", &backend_s, "--proxy-protocol"].map(String::from));
    let mut server = Server::start(&strs(&flags), &shutdown).await;
    // Behind a front end (h2c), the last X-Forwarded-For entry is the one the
    // front end appended; the earlier one is the client's and is ignored.
    let cflags = client_flags(
        &pki,
        &["--header", "x-forwarded-for: 192.0.2.66, 203.0.113.7"],
    );
    let client = start_client(&server.url("/"), &strs(&cflags), &shutdown).await;
    let back = read_all(client).await.unwrap();
    let text = String::from_utf8(back).unwrap();
    assert_eq!(
        text,
        format!("{CLIENT_ID}|203.0.113.7:0|{}", backend.port())
    );
    let report = server.report().await;
    assert_eq!(report.peer.to_string(), "203.0.113.7:0");
    assert_eq!(report.close, "closed");
    shutdown.cancel();
}
