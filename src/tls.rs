//! rustls configurations for both TLS layers, and the peer identity a
//! finished handshake yields.
//!
//! - The *outer* layer is ordinary web TLS between `postern client` and the
//!   front end (or a self-hosted `postern server`): ALPN `h2`, public roots.
//! - The *inner* layer is the end-to-end mTLS that runs inside each tunnel.
//!   It always verifies both sides against private CAs; there is no switch to
//!   make it verify less, only `--no-inner-tls` to leave it out entirely.
//!
//! Certificates are served through [`CertSlot`], a resolver whose contents can
//! be swapped while tunnels are open, so reloads never touch live sessions.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use tracing::warn;

use crate::identity::PeerIdentity;
use crate::pem;
use crate::policy::Allow;

/// ALPN protocol id for HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider for every config: aws-lc-rs.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A certificate and key that can be replaced while in use.
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    /// Wraps a loaded certificate and key.
    pub fn new(key: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(CertSlot(RwLock::new(key)))
    }

    /// Serves `key` to every handshake from now on.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        // A poisoned lock only means a panic elsewhere mid-swap of an Arc;
        // the value inside is still a whole Arc, so keep using it.
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// The certificate and key currently served.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CertSlot(<key redacted>)")
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for CertSlot {
    fn resolve(
        &self,
        _issuers: &[&[u8]],
        _schemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The inner mTLS server: requires a client certificate chaining to
/// `client_roots`, not revoked by `crls`, whose identity `allow` accepts.
///
/// The identity check runs inside the handshake, so a refused client gets an
/// `access_denied` alert it can report, and nothing else happens.
pub fn inner_server_config(
    cert: Arc<CertSlot>,
    client_roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    allow: Allow,
) -> anyhow::Result<Arc<ServerConfig>> {
    let webpki = WebPkiClientVerifier::builder_with_provider(client_roots, provider())
        .with_crls(crls)
        .build()
        .context("building the client certificate verifier")?;
    let verifier = Arc::new(AllowVerifier {
        inner: webpki,
        allow,
    });
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    Ok(Arc::new(config))
}

/// Chain verification by webpki, then the identity allow-list.
#[derive(Debug)]
struct AllowVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: Allow,
}

impl ClientCertVerifier for AllowVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|e| warn!(reason = %e, "client certificate rejected"))?;
        if self.allow.is_any() {
            return Ok(verified);
        }
        let id = PeerIdentity::from_der(end_entity).map_err(|e| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                std::io::Error::other(e),
            ))))
        })?;
        match self.allow.check(&id) {
            Ok(_) => Ok(verified),
            Err(denied) => {
                warn!(identity = %id, reason = %denied, "client identity not allowed");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::ApplicationVerificationFailure,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The inner mTLS client: presents `cert` and verifies the server against `server_roots`.
pub fn inner_client_config(
    cert: Arc<CertSlot>,
    server_roots: Arc<RootCertStore>,
) -> anyhow::Result<Arc<ClientConfig>> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(server_roots)
        .with_client_cert_resolver(cert);
    Ok(Arc::new(config))
}

/// The outer TLS server (self-hosted `postern server`, or the demo front end): ALPN h2.
pub fn outer_server_config(cert: Arc<CertSlot>) -> anyhow::Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The outer TLS client: the system's roots plus `extra_ca`, ALPN h2.
pub fn outer_client_config(extra_ca: Option<&Path>) -> anyhow::Result<Arc<ClientConfig>> {
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
        for cert in pem::load_certs(path)? {
            roots
                .add(cert)
                .with_context(|| format!("{}: unusable CA certificate", path.display()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The verified identity of the peer of a finished handshake, if it sent a certificate.
pub fn peer_identity(state: &CommonState) -> Option<PeerIdentity> {
    let cert = state.peer_certificates()?.first()?;
    PeerIdentity::from_der(cert).ok()
}
