//! The identity-checking verifiers: webpki does the chain (and the name, on
//! the client side), then an allow-list or pin is applied inside the
//! handshake, so a refusal is a TLS alert and nothing else happens.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tracing::warn;

use crate::authz::{Allow, PeerIdentity};

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
pub(super) struct AllowVerifier {
    pub(super) inner: Arc<dyn ClientCertVerifier>,
    pub(super) allow: Allow,
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

/// Server verification by webpki (chain and name), then the identity pin.
#[derive(Debug)]
pub(super) struct PinVerifier {
    pub(super) inner: Arc<WebPkiServerVerifier>,
    pub(super) pin: Allow,
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
