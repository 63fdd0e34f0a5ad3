//! The typed identity of an authenticated peer, read from its certificate.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Who the peer proved to be in the inner mTLS handshake.
///
/// Built from the verified end-entity certificate, so every field is something
/// the peer's CA vouched for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerIdentity {
    /// URI subject alternative names (SPIFFE IDs live here).
    pub uris: Vec<String>,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// IP address subject alternative names, in their text form.
    pub ips: Vec<String>,
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// The end of the certificate's validity, as a Unix timestamp.
    pub not_after: i64,
    /// The name the allow-list matched, when one did (set by the server
    /// after the handshake; see [`PeerIdentity::name`]).
    pub matched: Option<String>,
}

impl PeerIdentity {
    /// Reads the identity out of a DER certificate.
    pub fn from_der(der: &CertificateDer<'_>) -> Result<Self, String> {
        let (_, cert) = X509Certificate::from_der(der.as_ref())
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let mut id = PeerIdentity {
            common_name: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            not_after: cert.validity().not_after.timestamp(),
            ..Default::default()
        };
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::URI(u) => id.uris.push((*u).to_owned()),
                    GeneralName::DNSName(d) => id.dns_names.push((*d).to_owned()),
                    GeneralName::IPAddress(raw) => {
                        if let Some(ip) = ip_from_bytes(raw) {
                            id.ips.push(ip.to_string());
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(id)
    }

    /// The single most specific name: the first URI SAN, else DNS SAN, else CN.
    pub fn primary(&self) -> &str {
        self.uris
            .first()
            .or(self.dns_names.first())
            .or(self.ips.first())
            .or(self.common_name.as_ref())
            .map(String::as_str)
            .unwrap_or("<anonymous>")
    }
}

impl PeerIdentity {
    /// The name to log and announce: the one the allow-list matched, else
    /// [`PeerIdentity::primary`].
    pub fn name(&self) -> &str {
        self.matched.as_deref().unwrap_or_else(|| self.primary())
    }

    /// Every name in the certificate, as `uri:…`, `dns:…`, `ip:…`, `cn:…`.
    pub fn all_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        names.extend(self.uris.iter().map(|u| format!("uri:{u}")));
        names.extend(self.dns_names.iter().map(|d| format!("dns:{d}")));
        names.extend(self.ips.iter().map(|i| format!("ip:{i}")));
        names.extend(self.common_name.iter().map(|c| format!("cn:{c}")));
        names
    }
}

impl fmt::Display for PeerIdentity {
    /// [`PeerIdentity::name`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn ip_from_bytes(raw: &[u8]) -> Option<std::net::IpAddr> {
    match raw.len() {
        4 => <[u8; 4]>::try_from(raw).ok().map(Into::into),
        16 => <[u8; 16]>::try_from(raw).ok().map(Into::into),
        _ => None,
    }
}
