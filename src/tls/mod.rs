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

pub mod pem;

use std::fmt;
use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, ServerName, UnixTime};
use tracing::warn;

use crate::authz::identity::PeerIdentity;
use crate::authz::policy::Allow;

/// ALPN protocol id for HTTP/2 over TLS.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider for every config: aws-lc-rs for key exchange,
/// signatures and randomness, with the record ciphers taken from *ring* and
/// AES-128-GCM preferred.
///
/// Every tunnelled byte is sealed and opened twice (inner and outer TLS), and
/// AES-GCM is the largest single cost in the byte path (a third of both
/// processes' CPU in a bulk profile). *ring* carries a VAES/AVX2 AES-GCM
/// that aws-lc-rs lacks (it has only the AVX-512 one): sealing 16 KiB
/// records measured 6.3–7.6 GB/s against 3.2–4.0 GB/s with aws-lc-rs on
/// this AVX2 machine. AES-128 (10 rounds against 14) is the suite TLS 1.3
/// makes mandatory; AES-256 and ChaCha20 stay on offer. Servers follow the
/// client's order, so a Postern client picks it for both layers. Figures
/// are in the README's Performance section.
///
/// Key exchange stays at the aws-lc-rs default order (X25519 key share
/// first; X25519MLKEM768 offered for servers that ask for it). Sending the
/// hybrid post-quantum share first measured 745 new tunnels/s against
/// 890–990 and roughly doubled the per-tunnel handshake time at 0 ms RTT.
pub fn provider() -> Arc<CryptoProvider> {
    let mut suites = rustls::crypto::ring::default_provider().cipher_suites;
    // A stable sort keeps the rest of the default order as it was.
    suites.sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let provider = CryptoProvider {
        cipher_suites: suites,
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    Arc::new(provider)
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
    Ok(Arc::new(config))
}

/// Applies an allow-list to a chain-verified end-entity certificate. A
/// refusal is `ApplicationVerificationFailure`, which rustls sends as an
/// `access_denied` alert; the identity is logged here, where it is known.
fn enforce(
    allow: &Allow,
    end_entity: &CertificateDer<'_>,
    what: &str,
) -> Result<(), rustls::Error> {
    if allow.is_any() {
        return Ok(());
    }
    let id = PeerIdentity::from_der(end_entity).map_err(|e| {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
            std::io::Error::other(e),
        ))))
    })?;
    allow.check(&id).map(|_| ()).map_err(|denied| {
        warn!(identity = %id, reason = %denied, "{what}");
        rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
    })
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
        enforce(&self.allow, end_entity, "client identity not allowed")?;
        Ok(verified)
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
    let builder = if pin.is_any() {
        builder.with_root_certificates(server_roots)
    } else {
        let webpki = WebPkiServerVerifier::builder_with_provider(server_roots, provider())
            .build()
            .context("building the server certificate verifier")?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier { inner: webpki, pin }))
    };
    Ok(Arc::new(builder.with_client_cert_resolver(cert)))
}

/// Server verification by webpki (chain and name), then the identity pin.
#[derive(Debug)]
struct PinVerifier {
    inner: Arc<WebPkiServerVerifier>,
    pin: Allow,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        enforce(
            &self.pin,
            end_entity,
            "server identity does not match --server-identity",
        )?;
        Ok(verified)
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

/// Why an inner handshake failed, reduced to the few cases an operator acts
/// on; used for the tunnel's log line and the handshake-failure metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// The client sent no certificate.
    NoCertificate,
    /// The certificate does not chain to a trusted CA (or its signature is bad).
    UnknownCa,
    /// The certificate (or one in its chain) has expired.
    Expired,
    /// The certificate is not valid yet.
    NotYetValid,
    /// The certificate is not for TLS client authentication (EKU).
    WrongUsage,
    /// A CRL revokes the certificate.
    Revoked,
    /// The verified identity is not on the route's allow-list.
    NotAllowed,
    /// The peer aborted with an alert or by resetting the stream (for
    /// example, it rejected our certificate).
    PeerAlert,
    /// Anything else: malformed records, unsupported parameters, I/O.
    Other,
}

impl HandshakeFailure {
    /// Classifies the error a failed `tokio_rustls` handshake returned,
    /// looking through the layers of `io::Error` wrapping for the TLS error
    /// or the stream reset underneath.
    pub fn of(err: &std::io::Error) -> Self {
        let mut current: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
        let mut reset = matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        );
        while let Some(e) = current {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Self::of_tls(tls);
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                reset |= h2.is_reset() || h2.is_go_away();
            }
            // io::Error's source() skips the error it wraps; get_ref() does not.
            current = match e.downcast_ref::<std::io::Error>() {
                Some(io) => io.get_ref().map(|i| i as _),
                None => e.source(),
            };
        }
        // A client that rejects our certificate may reset its stream before
        // its alert gets through; to us that is the same thing.
        if reset {
            Self::PeerAlert
        } else {
            Self::Other
        }
    }

    fn of_tls(tls: &rustls::Error) -> Self {
        use rustls::Error as E;
        match tls {
            E::NoCertificatesPresented => Self::NoCertificate,
            E::AlertReceived(_) => Self::PeerAlert,
            E::InvalidCertificate(c) => match c {
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    Self::Expired
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    Self::NotYetValid
                }
                CertificateError::Revoked => Self::Revoked,
                CertificateError::UnknownIssuer | CertificateError::BadSignature => Self::UnknownCa,
                CertificateError::InvalidPurpose
                | CertificateError::InvalidPurposeContext { .. } => Self::WrongUsage,
                CertificateError::ApplicationVerificationFailure => Self::NotAllowed,
                _ => Self::Other,
            },
            _ => Self::Other,
        }
    }

    /// A stable snake_case label (metrics, JSON logs).
    pub fn label(self) -> &'static str {
        match self {
            Self::NoCertificate => "no_certificate",
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongUsage => "wrong_usage",
            Self::Revoked => "revoked",
            Self::NotAllowed => "not_allowed",
            Self::PeerAlert => "peer_alert",
            Self::Other => "other",
        }
    }
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NoCertificate => "no client certificate",
            Self::UnknownCa => "client certificate not issued by a trusted CA",
            Self::Expired => "client certificate expired",
            Self::NotYetValid => "client certificate not yet valid",
            Self::WrongUsage => "client certificate not for client authentication (EKU)",
            Self::Revoked => "client certificate revoked",
            Self::NotAllowed => "client identity not allowed on this route",
            Self::PeerAlert => "client aborted the handshake",
            Self::Other => "TLS error",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    /// The suite a real inner handshake between our own configs settles on
    /// (the outer layer uses the same provider).
    #[tokio::test]
    async fn handshake_settles_on_aes_128_gcm() {
        let dir = std::env::temp_dir().join(format!("postern-tls-suite-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let set = crate::pki::bundle(&[], &[], Default::default()).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = write("ca.pem", &set.ca.cert_pem());
        let slot = |issued: &crate::pki::Issued, name: &str| {
            let cert = write(&format!("{name}.pem"), &issued.cert_pem);
            let key = write(&format!("{name}-key.pem"), &issued.key_pem);
            CertSlot::new(pem::load_identity(&cert, &key).unwrap())
        };
        let roots = pem::load_roots(&ca).unwrap();
        let server = inner_server_config(
            slot(&set.server, "server"),
            roots.clone(),
            Vec::new(),
            Allow::default(),
        )
        .unwrap();
        let client = inner_client_config(slot(&set.client, "client"), roots).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let (a, b) = tokio::io::duplex(64 * 1024);
        let name = ServerName::try_from("localhost").unwrap();
        let (c, s) = tokio::join!(
            TlsConnector::from(client).connect(name, a),
            TlsAcceptor::from(server).accept(b)
        );
        let (c, s) = (c.unwrap(), s.unwrap());
        let states: [&CommonState; 2] = [c.get_ref().1, s.get_ref().1];
        for state in states {
            let suite = state.negotiated_cipher_suite().unwrap().suite();
            assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        }
    }

    #[test]
    fn every_default_suite_stays_on_offer() {
        let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        let mut defaults: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
            .cipher_suites
            .iter()
            .map(|s| s.suite())
            .collect();
        assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut sorted = ours.clone();
        sorted.sort_by_key(|s| u16::from(*s));
        defaults.sort_by_key(|s| u16::from(*s));
        assert_eq!(
            sorted, defaults,
            "same suites as aws-lc-rs offers, reordered"
        );
    }
}
