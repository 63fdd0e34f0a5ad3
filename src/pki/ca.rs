//! Certificate authorities: a root, its intermediates, and issuing leaves.

use std::fmt;

use anyhow::{anyhow, bail, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::leaf::{san_for, Issued, KeyAlg, LeafSpec};

/// A certificate authority that can issue leaves and intermediates.
pub struct Ca {
    pub(super) issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    /// What must follow a leaf so peers that trust only the root can build a
    /// path: empty for a root, this CA and any CAs above it short of the root
    /// for an intermediate.
    chain_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

impl Ca {
    /// A new self-signed root CA valid for ten years.
    pub fn new(common_name: &str, alg: KeyAlg) -> Result<Ca> {
        let key = alg.generate()?;
        let params = ca_params(common_name)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| anyhow!("self-signing the CA certificate: {e}"))?;
        Ok(Ca {
            cert_pem: cert.pem(),
            chain_pem: String::new(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Reloads a saved CA (its PEM certificate, optionally followed by the
    /// rest of its chain, and its PEM private key) to issue more certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca> {
        let blocks = cert_blocks(cert_pem)?;
        let first = &blocks[0];
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| anyhow!("the CA key is not a usable PEM private key: {e}"))?;
        let (_, x509) = X509Certificate::from_der(&first.der)
            .map_err(|e| anyhow!("unparsable CA certificate: {e}"))?;
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            bail!("the CA private key does not belong to the CA certificate");
        }
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            _ => bail!("the CA certificate is not a CA (no basicConstraints CA:TRUE)"),
        }
        let issuer = Issuer::from_ca_cert_der(&first.der, key)
            .map_err(|e| anyhow!("unusable CA certificate: {e}"))?;
        let chain_pem = blocks
            .iter()
            .filter(|b| !b.self_signed)
            .map(|b| b.pem.as_str())
            .collect();
        Ok(Ca {
            issuer,
            cert_pem: first.pem.clone(),
            chain_pem,
        })
    }

    /// A new intermediate CA signed by this one, with a key of the same algorithm.
    pub fn intermediate(&self, common_name: &str) -> Result<Ca> {
        let key = KeyPair::generate_for(self.issuer.key().algorithm())
            .map_err(|e| anyhow!("generating the intermediate key: {e}"))?;
        let mut params = ca_params(common_name)?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| anyhow!("signing the intermediate certificate: {e}"))?;
        let cert_pem = cert.pem();
        Ok(Ca {
            chain_pem: format!("{cert_pem}{}", self.chain_pem),
            cert_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// This CA's own certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// This CA's private key, PEM (PKCS#8).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a leaf certificate. Its `cert_pem` is the leaf followed by any
    /// intermediates, ready to serve.
    pub fn issue(&self, spec: &LeafSpec) -> Result<Issued> {
        let Some(first) = spec.names.first() else {
            bail!("a certificate needs at least one name");
        };
        if spec.not_after <= spec.not_before {
            bail!("certificate for {first:?} would expire before it starts");
        }
        let mut params = CertificateParams::default();
        params.subject_alt_names = spec
            .names
            .iter()
            .map(|n| san_for(n))
            .collect::<Result<_>>()?;
        params.distinguished_name = common_name_dn(first);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.alg == KeyAlg::Rsa2048 {
            // TLS 1.2 RSA key transport, for peers other than rustls that still offer it.
            params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
        }
        params.extended_key_usages = spec.usage.ekus();
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.serial_number = Some(random_serial()?);
        params.use_authority_key_identifier_extension = true;
        let key = spec.alg.generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| anyhow!("signing the certificate for {first:?}: {e}"))?;
        Ok(Issued {
            cert_pem: format!("{}{}", cert.pem(), self.chain_pem),
            key_pem: key.serialize_pem(),
        })
    }
}

fn ca_params(common_name: &str) -> Result<CertificateParams> {
    if common_name.trim().is_empty() {
        bail!("a CA needs a non-empty common name");
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name_dn(common_name);
    // No path length limit, so intermediates can themselves issue intermediates.
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    params.serial_number = Some(random_serial()?);
    Ok(params)
}

fn common_name_dn(name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn
}

/// 16 random bytes, forced positive and without a leading zero byte so the
/// DER integer keeps exactly these bytes and `serial_of` reads them back.
fn random_serial() -> Result<SerialNumber> {
    let mut bytes = [0u8; 16];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

/// One certificate out of a PEM text, kept both as text (re-encoded the
/// way rcgen writes it, to write back out) and as DER (to inspect).
struct CertBlock {
    pem: String,
    der: CertificateDer<'static>,
    self_signed: bool,
}

fn cert_blocks(text: &str) -> Result<Vec<CertBlock>> {
    let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    let mut blocks = Vec::new();
    for block in pem::parse_many(text).map_err(|e| anyhow!("bad PEM: {e}"))? {
        if block.tag() != "CERTIFICATE" {
            continue;
        }
        let der = CertificateDer::from(block.contents().to_vec());
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|e| anyhow!("unparsable certificate: {e}"))?;
        let self_signed = x509.subject().as_raw() == x509.issuer().as_raw();
        blocks.push(CertBlock {
            pem: pem::encode_config(&block, lf),
            der,
            self_signed,
        });
    }
    if blocks.is_empty() {
        bail!("no PEM certificate found");
    }
    Ok(blocks)
}
