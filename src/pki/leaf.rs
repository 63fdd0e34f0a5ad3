//! What a leaf certificate is: its names, usage, validity and key
//! algorithm, and the issued certificate with its key.

use std::fmt;
use std::net::IpAddr;

use anyhow::{anyhow, bail, Result};
use rcgen::{ExtendedKeyUsagePurpose, KeyPair, SanType, SignatureAlgorithm};
use rustls_pki_types::DnsName;
use time::{Duration, OffsetDateTime};

/// A PEM certificate (or chain) plus its PEM private key.
#[derive(Clone)]
pub struct Issued {
    /// The leaf certificate, followed by any intermediates needed to reach the root.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

impl fmt::Debug for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Issued")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Key algorithm choice.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlg {
    /// ECDSA on P-256 with SHA-256: small, fast and universally supported.
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures, for peers that need RSA.
    Rsa2048,
}

impl KeyAlg {
    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlg::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            KeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
            // With the aws-lc-rs backend rcgen generates 2048-bit RSA keys here.
            KeyAlg::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    pub(super) fn generate(self) -> Result<KeyPair> {
        KeyPair::generate_for(self.signature_algorithm())
            .map_err(|e| anyhow!("generating a {self:?} key: {e}"))
    }
}

/// What a leaf certificate may be used for (extended key usage).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Usage {
    /// TLS server authentication (serverAuth).
    Server,
    /// TLS client authentication (clientAuth).
    Client,
    /// Both serverAuth and clientAuth.
    Both,
    /// Neither: only codeSigning, so TLS verifiers must reject it.
    Neither,
}

impl Usage {
    pub(super) fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
        use ExtendedKeyUsagePurpose::*;
        match self {
            Usage::Server => vec![ServerAuth],
            Usage::Client => vec![ClientAuth],
            Usage::Both => vec![ServerAuth, ClientAuth],
            Usage::Neither => vec![CodeSigning],
        }
    }
}

/// Everything that describes a leaf certificate.
#[derive(Clone, Debug)]
pub struct LeafSpec {
    /// Subject alternative names; the first is also the subject common name.
    /// IP addresses become IP SANs, anything with `://` a URI SAN, the rest DNS SANs.
    pub names: Vec<String>,
    /// Extended key usage.
    pub usage: Usage,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Algorithm of the leaf's own key (the CA signs with its own key).
    pub alg: KeyAlg,
}

impl LeafSpec {
    /// A server leaf for `names`, valid from an hour ago for 365 days.
    pub fn server(names: &[&str]) -> Self {
        Self::new(names, Usage::Server)
    }

    /// A client leaf for `names`, valid from an hour ago for 365 days.
    pub fn client(names: &[&str]) -> Self {
        Self::new(names, Usage::Client)
    }

    pub(super) fn new(names: &[&str], usage: Usage) -> Self {
        let now = OffsetDateTime::now_utc();
        LeafSpec {
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            usage,
            // Backdated so that peers with slightly slow clocks accept fresh certificates.
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(365),
            alg: KeyAlg::default(),
        }
    }
}

/// Turns one user-supplied name into a SAN, refusing anything a verifier
/// would later choke on so the mistake surfaces here, with the name in hand.
pub(super) fn san_for(name: &str) -> Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    if let Some((scheme, rest)) = name.split_once("://") {
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok || rest.is_empty() || !name.chars().all(|c| c.is_ascii_graphic()) {
            bail!("invalid URI name {name:?}: expected scheme://rest with no spaces");
        }
        let uri = name
            .try_into()
            .map_err(|e| anyhow!("invalid URI {name:?}: {e}"))?;
        return Ok(SanType::URI(uri));
    }
    // A leading "*." is a wildcard; the rest must be an ordinary host name.
    let host = name.strip_prefix("*.").unwrap_or(name);
    if name.ends_with('.') || DnsName::try_from(host).is_err() {
        bail!("invalid name {name:?}: not an IP address, a URI (scheme://...) or a DNS name");
    }
    let dns = name
        .try_into()
        .map_err(|e| anyhow!("invalid DNS name {name:?}: {e}"))?;
    Ok(SanType::DnsName(dns))
}
