//! Loading certificates, keys, CAs and CRLs from PEM files, with errors that
//! name the file and what is wrong with it.
//!
//! Everything is checked at start-up (and on reload) rather than at the first
//! handshake: a key that does not match its certificate, an expired
//! certificate or an empty CA file would otherwise surface as an obscure
//! handshake failure on some later tunnel.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::provider::provider;

/// A problem with one of the PEM files Postern was given.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// The file could not be read or held no usable PEM block.
    #[error("{path}: {reason}")]
    Unreadable {
        /// The offending file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The certificate's validity period does not include the present.
    #[error("{path}: certificate {subject} {reason}")]
    Validity {
        /// The offending file.
        path: PathBuf,
        /// The certificate's subject, to tell chain members apart.
        subject: String,
        /// "expired on …" or "is not valid until …".
        reason: String,
    },
    /// The private key is not the one the certificate was issued for.
    #[error("{key}: private key does not match the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

impl PemError {
    /// The file the problem is in (for a mismatched pair, the key's).
    pub fn path(&self) -> &Path {
        match self {
            PemError::Unreadable { path, .. } | PemError::Validity { path, .. } => path,
            PemError::KeyMismatch { key, .. } => key,
        }
    }
}

/// Names the flag that gave the offending file, so a user reads
/// `--cert client.pem: No such file or directory` rather than a bare path.
/// `flags` pairs each flag with the path it was given.
pub fn blame<'a>(flags: &'a [(&'a str, &'a Path)]) -> impl Fn(PemError) -> anyhow::Error + 'a {
    move |e| match flags.iter().find(|(_, path)| *path == e.path()) {
        Some((flag, _)) => anyhow::anyhow!("{flag} {e}"),
        None => e.into(),
    }
}

fn unreadable(path: &Path, reason: impl ToString) -> PemError {
    PemError::Unreadable {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn describe(path: &Path, err: rustls_pki_types::pem::Error) -> PemError {
    use rustls_pki_types::pem::Error as E;
    match err {
        E::Io(e) => unreadable(path, e),
        E::NoItemsFound => unreadable(path, "no PEM data of the expected kind found"),
        other => unreadable(path, format!("malformed PEM ({other:?})")),
    }
}

/// Reads every certificate in a PEM file (a leaf followed by its chain, or a CA bundle).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    load_all(path, "CERTIFICATE")
}

/// Reads every PEM block of one kind (`label` names it in the error when
/// there is none); blocks of other kinds are skipped.
fn load_all<T: PemObject>(path: &Path, label: &str) -> Result<Vec<T>, PemError> {
    let items = T::pem_file_iter(path)
        .map_err(|e| describe(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| describe(path, e))?;
    if items.is_empty() {
        return Err(unreadable(path, format!("no {label} block found")));
    }
    Ok(items)
}

/// Reads one private key: PKCS#8, SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => {
            unreadable(path, "no PRIVATE KEY block found")
        }
        other => describe(path, other),
    })
}

/// Reads CRLs from a PEM file (`X509 CRL` blocks).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    load_all(path, "X509 CRL")
}

/// Reads a CA file into a root store; every certificate in it must parse.
pub fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, PemError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        check_validity(path, &cert)?;
        roots
            .add(cert)
            .map_err(|e| unreadable(path, format!("unusable CA certificate: {e}")))?;
    }
    Ok(Arc::new(roots))
}

/// Loads a certificate chain and its key, checking that they belong together
/// and that every certificate in the chain is currently valid.
pub fn load_identity(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, PemError> {
    let chain = load_certs(cert)?;
    for c in &chain {
        check_validity(cert, c)?;
    }
    let der = load_key(key)?;
    let certified = CertifiedKey::from_der(chain, der, &provider()).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => PemError::KeyMismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        },
        other => unreadable(key, format!("unusable private key: {other}")),
    })?;
    Ok(Arc::new(certified))
}

/// Fails if `cert` is expired or not yet valid.
pub fn check_validity(path: &Path, cert: &CertificateDer<'_>) -> Result<(), PemError> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| unreadable(path, format!("unparsable certificate: {e}")))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    let reason = if now > validity.not_after {
        format!("expired on {}", validity.not_after)
    } else if now < validity.not_before {
        format!("is not valid until {}", validity.not_before)
    } else {
        return Ok(());
    };
    Err(PemError::Validity {
        path: path.to_owned(),
        subject: parsed.subject().to_string(),
        reason,
    })
}
