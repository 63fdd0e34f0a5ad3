//! The rustls configurations of both layers, and the identity a finished
//! handshake yields.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, CommonState, RootCertStore, ServerConfig};
use rustls_pki_types::CertificateRevocationListDer;

use super::pem;
use super::provider::provider;
use super::slot::CertSlot;
use super::verify::{AllowVerifier, PinVerifier};
use crate::authz::{Allow, PeerIdentity};

/// ALPN protocol id for HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// ALPN protocol id for HTTP/1.1 (the WebSocket transport).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The inner mTLS server: requires a client certificate chaining to
/// `client_roots`, not revoked by `crls`, whose identity `allow` accepts.
///
/// The identity check runs inside the handshake, so a refused client gets an
/// `access_denied` alert it can report, and nothing else happens.
///
/// Revocation: only the client's own (end-entity) certificate is looked up
/// in `crls`, and a certificate whose issuer has no CRL among them is let
/// through. That way one can trust several CAs but publish CRLs for some,
/// and intermediates need no CRLs of their own; the price is that a CRL
/// file for the wrong CA revokes nothing (the start-up log lists the CRL
/// files). A CRL past its `nextUpdate` is still used: a stale list of
/// revoked certificates is better than refusing everyone.
///
/// Session resumption is off (no session cache, no tickets): a resumed
/// TLS session skips certificate verification entirely, so with resumption
/// a revoked, expired or no-longer-allowed client could keep reconnecting
/// on an old session. Every tunnel therefore runs a full handshake, which
/// costs one signature and one verification per tunnel.
pub fn inner_server_config(
    cert: Arc<CertSlot>,
    client_roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow: Allow,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(client_roots, provider());
    if !crls.is_empty() {
        builder = builder
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    let webpki = builder
        .build()
        .context("building the client certificate verifier")?;
    let verifier = Arc::new(AllowVerifier {
        inner: webpki,
        allow,
    });
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    // A client naming a destination offers it; one naming none offers no
    // ALPN at all and is served as before (docs/protocol.md §8).
    config.alpn_protocols = vec![crate::destination::wire::ALPN.to_vec()];
    // The resume key is exported from this connection; under TLS 1.2 an
    // exporter is only bound to the handshake with the extended master
    // secret (RFC 7627).
    config.require_ems = true;
    Ok(Arc::new(config))
}

/// The inner mTLS client: presents `cert` and verifies the server against `server_roots`.
pub fn inner_client_config(
    cert: Arc<CertSlot>,
    server_roots: Arc<RootCertStore>,
) -> anyhow::Result<Arc<ClientConfig>> {
    inner_client_config_pinned(cert, server_roots, Allow::default())
}

/// Like [`inner_client_config`], and the server's certificate must also carry
/// an identity `pin` accepts (`--server-identity`; empty = any name check
/// passing certificate). The pin is checked inside the handshake, after the
/// chain and the server name, so a mismatch aborts before any byte is sent.
pub fn inner_client_config_pinned(
    cert: Arc<CertSlot>,
    server_roots: Arc<RootCertStore>,
    pin: Allow,
) -> anyhow::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    // Always our verifier, pin or not: it also refuses intermediates whose
    // KeyUsage forbids signing certificates, which webpki does not check.
    let webpki = WebPkiServerVerifier::builder_with_provider(server_roots, provider())
        .build()
        .context("building the server certificate verifier")?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier { inner: webpki, pin }));
    let mut config = builder.with_client_cert_resolver(cert);
    // As the server's: the resume key is exported from this connection.
    config.require_ems = true;
    Ok(Arc::new(config))
}

/// The outer TLS server (self-hosted `postern server`, or the demo front end): ALPN h2.
///
/// With `early_data`, a client resuming a session may send up to
/// [`EARLY_DATA_LIMIT`] bytes with its ClientHello (TLS 1.3 0-RTT), and the
/// server answers before the client's Finished (0.5-RTT data): a new
/// connection's first tunnel saves a round trip. Such a config must be served
/// through [`super::early::accept`]; tokio-rustls's acceptor would drop the
/// early data. Resumption stays stateful (rustls's in-memory cache, each
/// ticket good for one connection), which is also what rustls requires
/// before it accepts early data.
pub fn outer_server_config(
    cert: Arc<CertSlot>,
    early_data: bool,
) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    // HTTP/1.1 for the WebSocket transport (`server::http1`).
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    if early_data {
        config.max_early_data_size = EARLY_DATA_LIMIT;
        config.send_half_rtt_data = true;
    }
    Ok(Arc::new(config))
}

/// Early data a server takes per connection: a connection's preface, SETTINGS
/// and first tunnels' POSTs with their inner ClientHellos take about 500
/// bytes each.
pub const EARLY_DATA_LIMIT: u32 = 16 * 1024;

/// The outer TLS client: the system's roots plus `extra_ca`, ALPN h2; with
/// `early_data`, a resumed session may carry the first request in its
/// ClientHello where the front end allows it (`postern server` does, Go's
/// TLS never does).
pub fn outer_client_config(
    extra_ca: Option<&Path>,
    early_data: bool,
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // Individual unusable system certificates are common and harmless.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        // No system store (e.g. a minimal container): fall back to Mozilla's roots.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if let Some(path) = extra_ca {
        for cert in pem::load_certs(path).map_err(pem::blame(&[("--tls-ca", path)]))? {
            roots
                .add(cert)
                .with_context(|| format!("--tls-ca {}: unusable CA certificate", path.display()))?;
        }
    }
    // Webpki's verifier as `with_root_certificates` would build it, wrapped
    // only to name the issuer it refuses (an intercepting proxy's CA).
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .context("outer TLS verifier")?;
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(super::intercept::Explained(webpki)))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_early_data = early_data;
    Ok(Arc::new(config))
}

/// The verified identity of the peer of a finished handshake, if it sent a certificate.
pub fn peer_identity(state: &CommonState) -> Option<PeerIdentity> {
    let cert = state.peer_certificates()?.first()?;
    PeerIdentity::from_der(cert).ok()
}
