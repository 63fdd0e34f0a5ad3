//! The server's HTTP surface as a raw HTTP/2 peer and curl see it: health
//! checks, refusals of non-tunnel requests (with no backend connection), and
//! CONNECT tunnels.

use std::net::SocketAddr;

use crate::harness::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

async fn h2c(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    send
}

async fn status_of(
    send: &h2::client::SendRequest<Bytes>,
    method: Method,
    path: &str,
) -> (StatusCode, bool) {
    let mut send = send.clone().ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(format!("http://svc.example{path}"))
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(LIMIT, resp).await.unwrap().unwrap();
    (
        resp.status(),
        resp.headers().contains_key("x-postern-version"),
    )
}

async fn inner_tls_server(
    pki: &Pki,
    backend: SocketAddr,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let (addr, _reports) = start_server(
        backend,
        &[
            "--cert",
            &pki.p("server.pem"),
            "--key",
            &pki.p("server-key.pem"),
            "--client-ca",
            &pki.p("ca.pem"),
            "--path",
            "/tunnel",
        ],
        shutdown,
    )
    .await;
    addr
}

#[tokio::test]
async fn health_and_refusals_never_touch_the_backend() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let server = inner_tls_server(&pki, backend.addr, &shutdown).await;
    let send = h2c(server).await;
    let cases = [
        (Method::GET, "/healthz", StatusCode::OK),
        (Method::GET, "/tunnel", StatusCode::METHOD_NOT_ALLOWED),
        (Method::PUT, "/tunnel", StatusCode::METHOD_NOT_ALLOWED),
        (Method::POST, "/", StatusCode::NOT_FOUND),
        (Method::POST, "/tunnel/extra", StatusCode::NOT_FOUND),
        (Method::GET, "/", StatusCode::NOT_FOUND),
    ];
    for (method, path, want) in cases.iter().cloned() {
        let (got, versioned) = status_of(&send, method.clone(), path).await;
        assert_eq!(got, want, "{method} {path}");
        assert!(versioned, "{method} {path}: no x-postern-version header");
    }
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}

/// Resume refusals are answers like the others: versioned, and strict about
/// their fields (docs/protocol.md §3 and "The resume handshake").
#[tokio::test]
async fn resume_refusals_carry_the_version_and_name_the_reason() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let server = inner_tls_server(&pki, backend.addr, &shutdown).await;
    let send = h2c(server).await;
    let id = "AAAAAAAAAAAAAAAAAAAAAA"; // 16 zero bytes, canonical base64url
    let proof = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"; // 32 zero bytes
    let cases: [(&str, &str, &str, StatusCode, &str); 5] = [
        // A session nobody holds: the lookup comes after the parse.
        (id, "1", "0", StatusCode::NOT_FOUND, "unknown_session"),
        // Signs, spaces and padding are not decimal or base64url.
        (id, "+1", "0", StatusCode::BAD_REQUEST, "malformed"),
        (id, "1", " 0", StatusCode::BAD_REQUEST, "malformed"),
        (
            id,
            "18446744073709551616",
            "0",
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "AAAAAAAAAAAAAAAAAAAAAA==",
            "1",
            "0",
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
    ];
    for (sid, generation, received, want, reason) in cases {
        let mut ready = send.clone().ready().await.unwrap();
        let req = Request::builder()
            .method(Method::POST)
            .uri("http://svc.example/tunnel")
            .header("postern-resume", sid)
            .header("postern-resume-generation", generation)
            .header("postern-resume-received", received)
            .header("postern-resume-proof", proof)
            .body(())
            .unwrap();
        let (resp, _) = ready.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(LIMIT, resp).await.unwrap().unwrap();
        let case = format!("{sid} {generation:?} {received:?}");
        assert_eq!(resp.status(), want, "{case}");
        let headers = resp.headers();
        assert_eq!(
            headers
                .get("postern-resume-refused")
                .map(|v| v.to_str().unwrap()),
            Some(reason),
            "{case}"
        );
        assert!(
            headers.contains_key("x-postern-version"),
            "{case}: no x-postern-version"
        );
    }
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn curl_sees_healthz_over_h2c_prior_knowledge() {
    if which("curl").is_none() {
        eprintln!("SKIPPED: curl not installed");
        return;
    }
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, _r) = start_server(backend.addr, &["--no-inner-tls"], &shutdown).await;
    let url = format!("http://{server}/healthz");
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            &url,
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2 200");
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn connect_method_opens_a_plain_tunnel() {
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, _r) = start_server(backend.addr, &["--no-inner-tls"], &shutdown).await;
    let mut send = h2c(server).await.ready().await.unwrap();
    // RFC 9113 §8.5: CONNECT carries only :method and :authority.
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("svc.example:443")
        .body(())
        .unwrap();
    let (resp, mut body_out) = send.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(LIMIT, resp).await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    body_out
        .send_data(Bytes::from_static(b"via CONNECT"), true)
        .unwrap();
    let mut body_in = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = tokio::time::timeout(LIMIT, body_in.data()).await.unwrap() {
        let chunk = chunk.unwrap();
        let _ = body_in.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, b"via CONNECT");
    assert_eq!(backend.accepts(), 1);
    shutdown.cancel();
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}
