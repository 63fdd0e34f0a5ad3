//! Certificate revocation lists, and the serial numbers they list.

use anyhow::{anyhow, Result};
use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::Ca;

impl Ca {
    /// A CRL signed by this CA revoking `revoked_serials` (as returned by
    /// [`serial_of`]), valid from now for seven days.
    pub fn crl_pem(&self, revoked_serials: &[Vec<u8>]) -> Result<String> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::days(7),
            // CRL numbers must grow; time does that without keeping state.
            crl_number: SerialNumber::from_slice(&now.unix_timestamp_nanos().to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked_serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|e| anyhow!("signing the CRL: {e}"))?;
        crl.pem().map_err(|e| anyhow!("encoding the CRL: {e}"))
    }
}

/// The serial number of the first certificate in `cert_pem`, in the form
/// [`Ca::crl_pem`] takes.
pub fn serial_of(cert_pem: &str) -> Result<Vec<u8>> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow!("no PEM certificate found: {e}"))?;
    let (_, x509) =
        X509Certificate::from_der(&der).map_err(|e| anyhow!("unparsable certificate: {e}"))?;
    Ok(x509.raw_serial().to_vec())
}
