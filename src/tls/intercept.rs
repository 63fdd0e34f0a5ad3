//! The outer TLS verifier that explains a refusal: webpki decides exactly
//! as it would alone, and when it refuses a certificate for its issuer
//! (unknown, or a signature that does not check out), the error carries
//! the issuer's name as the certificate states it, so the client can say
//! that the path intercepts TLS and who re-signed the front end's
//! certificate (a TLS-inspecting proxy's CA: "mitmproxy", a vendor's name).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::{CertificateError, DigitallySignedStruct, OtherError, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// A certificate refused because its issuer is not trusted.
#[derive(Debug, thiserror::Error)]
#[error("certificate issued by \"{issuer}\", which is not trusted ({why:?})")]
pub(crate) struct Untrusted {
    /// The leaf's issuer distinguished name (`CN=mitmproxy, O=mitmproxy`).
    pub(crate) issuer: String,
    /// What webpki said (`UnknownIssuer`, `BadSignature`).
    pub(crate) why: CertificateError,
}

/// Webpki's verifier, its refusals for an untrusted issuer turned into
/// [`Untrusted`].
#[derive(Debug)]
pub(crate) struct Explained(pub(crate) Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for Explained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map_err(|e| match e {
                rustls::Error::InvalidCertificate(
                    why @ (CertificateError::UnknownIssuer | CertificateError::BadSignature),
                ) => match issuer_of(end_entity) {
                    Some(issuer) => rustls::Error::InvalidCertificate(CertificateError::Other(
                        OtherError(Arc::new(Untrusted { issuer, why })),
                    )),
                    None => rustls::Error::InvalidCertificate(why),
                },
                other => other,
            })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn issuer_of(der: &CertificateDer<'_>) -> Option<String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der.as_ref()).ok()?;
    Some(cert.issuer().to_string())
}

/// The [`Untrusted`] refusal inside a failed handshake's error, if that is
/// why it failed.
pub(crate) fn untrusted(err: &std::io::Error) -> Option<&Untrusted> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = err.get_ref().map(|e| e as _);
    while let Some(e) = current {
        if let Some(rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner)))) =
            e.downcast_ref::<rustls::Error>()
        {
            return inner.downcast_ref::<Untrusted>();
        }
        current = match e.downcast_ref::<std::io::Error>() {
            Some(io) => io.get_ref().map(|i| i as _),
            None => e.source(),
        };
    }
    None
}

/// The one-line explanation of an [`Untrusted`] front end certificate at
/// `host`, reached through `proxy` if any: the client's error and
/// `postern doctor`'s say the same.
pub(crate) fn explain(host: &str, issuer: &str, proxy: Option<&str>) -> String {
    match proxy {
        Some(proxy) => format!(
            "the path intercepts TLS: the certificate presented for {host} through proxy \
             {proxy} was issued by \"{issuer}\", not by a CA this client trusts (the proxy \
             re-signs the front end's certificate); pass --tls-ca <the proxy's CA certificate> \
             to accept the interception, or set NO_PROXY={host} to go around the proxy"
        ),
        None => format!(
            "the certificate presented for {host} was issued by \"{issuer}\", not by a CA this \
             client trusts: either the path intercepts TLS (a proxy re-signs the front end's \
             certificate; pass --tls-ca <the proxy's CA certificate>, or set NO_PROXY={host} \
             where the proxy is configured), or the front end's CA is private (pass --tls-ca \
             <that CA>)"
        ),
    }
}
