//! Helpers for the trust tests (identity, routes, reload, limits, metrics):
//! hand-built inner clients, refusal checks, metrics scrapes.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

use super::api::{pem, tls, workers, Connector, Forward, H2Stream, Issued, Target};
use super::{round_trip, start_forward, Pki, LIMIT};

/// An inner client config presenting `issued` (no validity check, so expired
/// and not-yet-valid certificates can be presented), or no certificate.
pub(crate) fn raw_client_config(pki: &Pki, issued: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pem::load_roots(&pki.dir.path("ca.pem")).expect("roots"));
    let config = match issued {
        None => builder.with_no_client_auth(),
        Some(issued) => {
            let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .expect("chain");
            let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes()).expect("key");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
    };
    Arc::new(config)
}

/// Serves a hand-built inner client config as a local forward to `url`.
pub(crate) async fn raw_client(
    url: &str,
    config: Arc<rustls::ClientConfig>,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let forward = Arc::new(Forward {
        connector: Arc::new(Connector::new(
            Target::parse(url).expect("url"),
            None,
            100,
            None,
            LIMIT,
        )),
        inner: Some((config, ServerName::try_from("localhost").expect("name"))),
        inner_dest: None,
        destinations: Default::default(),
        headers: Default::default(),
        tokens: None,
        handshake_timeout: LIMIT,
        workers: workers::default_count(),
        busy_poll: std::time::Duration::ZERO,
        resume: None,
    });
    start_forward(forward, shutdown).await
}

/// Opens one tunnel to `url` in the test itself and completes the inner
/// handshake, so the test can see the server's certificate and keep the
/// tunnel open as long as it likes.
/// Keep the returned connector alive as long as the tunnel.
pub(crate) async fn open_inner(url: &str, pki: &Pki) -> (Connector, TlsStream<H2Stream>) {
    let connector = Connector::new(Target::parse(url).expect("url"), None, 1, None, LIMIT);
    let stream = connector.open(&Default::default()).await.expect("open");
    let client = pki.dir.path("client.pem");
    let key = pki.dir.path("client-key.pem");
    let config = tls::inner_client_config(
        tls::CertSlot::new(pem::load_identity(&client, &key).expect("client identity")),
        pem::load_roots(&pki.dir.path("ca.pem")).expect("roots"),
    )
    .expect("client config");
    let tls = tokio::time::timeout(
        LIMIT,
        TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), stream),
    )
    .await
    .expect("inner handshake timed out")
    .expect("inner handshake");
    (connector, tls)
}

/// The DER of the first certificate in `pem`.
pub(crate) fn leaf_der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).expect("pem cert")
}

/// Replaces `name` in `dir` atomically (write + rename), as secret mounts do.
pub(crate) fn replace_file(pki: &Pki, name: &str, contents: &str) {
    let tmp = pki.dir.path(&format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).expect("write");
    std::fs::rename(&tmp, pki.dir.path(name)).expect("rename");
}

/// Sends a probe and expects the tunnel to be refused: no reply, closed
/// (EOF or reset), not left hanging.
pub(crate) async fn assert_refused(client: SocketAddr) {
    match round_trip(client, b"must not reach the backend").await {
        Ok(bytes) => assert!(bytes.is_empty(), "refused tunnel returned data: {bytes:?}"),
        Err(e) => assert!(
            !e.to_string().contains("timed out"),
            "refused tunnel hung instead of closing: {e}"
        ),
    }
}

/// `GET /metrics` over plain HTTP/1.1; returns the body.
pub(crate) async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::AsyncWriteExt;
    let mut sock = TcpStream::connect(addr).await.expect("connect metrics");
    sock.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut all = String::new();
    tokio::time::timeout(LIMIT, sock.read_to_string(&mut all))
        .await
        .expect("scrape timed out")
        .expect("scrape");
    let (head, body) = all.split_once("\r\n\r\n").expect("http response");
    assert!(head.starts_with("HTTP/1.1 200"), "bad status: {head}");
    body.to_owned()
}

/// The value of the sample `name{labels}` (exact text before the value).
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().ok()).flatten()
    })
}

/// Resumes the server behind `metrics` has accepted so far.
pub(crate) async fn accepted_resumes(metrics: SocketAddr) -> f64 {
    sample(
        &scrape(metrics).await,
        "postern_resumes_total{result=\"accepted\",reason=\"ok\"}",
    )
    .unwrap_or(0.0)
}
