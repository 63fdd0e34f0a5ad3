//! Certificate rotation without dropping tunnels: a replaced server
//! certificate serves new tunnels while an open one keeps working, and a
//! garbage file is rejected while the previous certificate keeps serving.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

mod common;
#[path = "common/trust.rs"]
mod trust;

use common::*;
use postern::pki::LeafSpec;
use postern::server::ReloadStatus;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use trust::*;

/// Waits (bounded) until the reload status satisfies `done`.
async fn wait_for(rx: &mut watch::Receiver<ReloadStatus>, done: impl Fn(&ReloadStatus) -> bool) {
    tokio::time::timeout(LIMIT, rx.wait_for(|s| done(s)))
        .await
        .expect("no reload happened")
        .expect("server gone");
}

/// The certificate the server presented on a new tunnel.
async fn served_cert(url: &str, pki: &Pki) -> Vec<u8> {
    let (_conn, tls) = open_inner(url, pki).await;
    tls.get_ref().1.peer_certificates().expect("server cert")[0].to_vec()
}

async fn echo(tls: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), msg: &[u8]) {
    tls.write_all(msg).await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(LIMIT, tls.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .expect("echo");
    assert_eq!(buf, msg);
}

#[tokio::test]
async fn file_change_rotates_the_certificate_without_dropping_tunnels() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let backend_s = backend.addr.to_string();
    let mut flags = inner_flags(&pki);
    flags.extend(["--backend", &backend_s, "--watch-interval", "1"].map(String::from));
    let server = Server::start(&strs(&flags), &shutdown).await;
    let url = server.url("/");
    let mut status = server.config.live.status();
    let original = std::fs::read_to_string(pki.dir.path("server.pem")).unwrap();
    assert_eq!(served_cert(&url, &pki).await, leaf_der(&original).to_vec());

    let (_conn, mut open) = open_inner(&url, &pki).await;
    echo(&mut open, b"before rotation").await;

    // Rotate: new key and certificate from the same CA, each file replaced
    // atomically (key first, so no poll sees a new certificate with an old key
    // for long; if one does, that reload is rejected and the next one applies).
    let rotated = pki.ca.issue(&LeafSpec::server(&["localhost"])).unwrap();
    replace_file(&pki, "server-key.pem", &rotated.key_pem);
    replace_file(&pki, "server.pem", &rotated.cert_pem);
    wait_for(&mut status, |s| s.applied >= 1 && s.last_error.is_none()).await;

    echo(&mut open, b"after rotation, same tunnel").await;
    assert_eq!(
        served_cert(&url, &pki).await,
        leaf_der(&rotated.cert_pem).to_vec()
    );

    // A garbage certificate is rejected, naming the file; the rotated one stays.
    let attempts = status.borrow().attempts;
    replace_file(
        &pki,
        "server.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n",
    );
    wait_for(&mut status, |s| s.attempts > attempts).await;
    let error = status
        .borrow()
        .last_error
        .clone()
        .expect("garbage accepted");
    assert!(
        error.contains("server.pem"),
        "error does not name the file: {error}"
    );
    assert_eq!(
        served_cert(&url, &pki).await,
        leaf_der(&rotated.cert_pem).to_vec()
    );
    echo(&mut open, b"still open after a rejected reload").await;
    let metrics = server.config.metrics.encode();
    assert!(
        metrics.contains("postern_reloads_total{result=\"rejected\"} 1"),
        "{metrics}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn sighup_style_request_reloads_ca_and_allow_list_files() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let backend_s = backend.addr.to_string();
    let routes = |allow: &str| {
        format!("[[route]]\npath = \"/\"\nbackend = \"{backend_s}\"\nallow = [\"{allow}\"]\n")
    };
    let file = pki.dir.write("routes.toml", &routes(CLIENT_ID));
    let mut flags = inner_flags(&pki);
    // Polling off: only an explicit request (what SIGHUP sends) reloads.
    flags.extend(["--config", &file, "--watch-interval", "0"].map(String::from));
    let mut server = Server::start(&strs(&flags), &shutdown).await;
    let url = server.url("/");
    let mut status = server.config.live.status();
    let client = start_client(&url, &strs(&client_flags(&pki, &[])), &shutdown).await;
    assert_eq!(round_trip(client, b"allowed").await.unwrap(), b"allowed");
    assert_eq!(server.report().await.close, "closed");

    // Tighten the allow-list and ask for a reload: the same client is now denied.
    replace_file(
        &pki,
        "routes.toml",
        &routes("spiffe://test.postern/someone-else"),
    );
    server.config.live.request_reload();
    wait_for(&mut status, |s| s.applied >= 1).await;
    assert_refused(client).await;
    let report = server.report().await;
    assert!(report.outcome.unwrap_err().contains("not allowed"));
    assert_eq!(backend.accepts(), 1);
    shutdown.cancel();
}
