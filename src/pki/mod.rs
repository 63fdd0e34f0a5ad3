//! Certificate issuance: the private CA behind the inner mutual TLS, and the
//! `postern certs` subcommand that writes a ready-to-use set of files.
//!
//! Everything that mints certificates (the subcommand, the demo, the benchmark
//! and the tests) goes through here, so they all get the same profile.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, DnsName};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authz::PeerIdentity;

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

    fn generate(self) -> Result<KeyPair> {
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
    fn ekus(self) -> Vec<ExtendedKeyUsagePurpose> {
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

    fn new(names: &[&str], usage: Usage) -> Self {
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

/// A certificate authority that can issue leaves and intermediates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
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

/// A CA plus one server and one client certificate: what `postern certs` and
/// `postern demo` produce.
#[derive(Debug)]
pub struct Bundle {
    /// The root that signed both leaves; each side trusts it for the other.
    pub ca: Ca,
    /// The server's certificate and key.
    pub server: Issued,
    /// The client's certificate and key.
    pub client: Issued,
}

/// A fresh root CA with one server and one client certificate, all using `alg`.
/// Empty name lists fall back to `localhost` and `postern-client`.
pub fn bundle(server_names: &[String], client_names: &[String], alg: KeyAlg) -> Result<Bundle> {
    leaves_from(Ca::new("Postern CA", alg)?, server_names, client_names, alg)
}

const DEFAULT_SERVER_NAME: &str = "localhost";
const DEFAULT_CLIENT_NAME: &str = "postern-client";

fn leaves_from(ca: Ca, server: &[String], client: &[String], alg: KeyAlg) -> Result<Bundle> {
    let leaf = |names: &[String], default: &str, usage| {
        let mut spec = LeafSpec::new(&[default], usage);
        if !names.is_empty() {
            spec.names = names.to_vec();
        }
        spec.alg = alg;
        ca.issue(&spec)
    };
    let server = leaf(server, DEFAULT_SERVER_NAME, Usage::Server)?;
    let client = leaf(client, DEFAULT_CLIENT_NAME, Usage::Client)?;
    Ok(Bundle { ca, server, client })
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

/// Turns one user-supplied name into a SAN, refusing anything a verifier
/// would later choke on so the mistake surfaces here, with the name in hand.
fn san_for(name: &str) -> Result<SanType> {
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

/// One certificate out of a PEM text, kept both as text (to write back out
/// unchanged) and as DER (to inspect).
struct CertBlock {
    pem: String,
    der: CertificateDer<'static>,
    self_signed: bool,
}

fn cert_blocks(pem: &str) -> Result<Vec<CertBlock>> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find(BEGIN) {
        let len = rest[start..]
            .find(END)
            .ok_or_else(|| anyhow!("truncated PEM certificate"))?
            + END.len();
        let text = format!("{}\n", &rest[start..start + len]);
        let der = CertificateDer::from_pem_slice(text.as_bytes())
            .map_err(|e| anyhow!("bad PEM certificate: {e}"))?;
        let (_, x509) =
            X509Certificate::from_der(&der).map_err(|e| anyhow!("unparsable certificate: {e}"))?;
        let self_signed = x509.subject().as_raw() == x509.issuer().as_raw();
        blocks.push(CertBlock {
            pem: text,
            der,
            self_signed,
        });
        rest = &rest[start + len..];
    }
    if blocks.is_empty() {
        bail!("no PEM certificate found");
    }
    Ok(blocks)
}

/// Arguments of `postern certs`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to write into (created if missing).
    #[arg(long, default_value = "postern-certs")]
    pub out: PathBuf,
    /// Name for the server certificate (DNS name or IP); repeatable. Default: localhost.
    #[arg(long = "server-name")]
    pub server_names: Vec<String>,
    /// Identity for the client certificate (DNS name, or a URI such as a SPIFFE ID);
    /// repeatable. Default: postern-client.
    #[arg(long = "client-name")]
    pub client_names: Vec<String>,
    /// Key algorithm.
    #[arg(long, value_enum, default_value_t)]
    pub alg: KeyAlg,
    /// Issue from an existing CA in --out (ca.pem + ca-key.pem) instead of making a new one.
    #[arg(long)]
    pub reuse_ca: bool,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";
const CLIENT_CERT: &str = "client.pem";
const CLIENT_KEY: &str = "client-key.pem";

/// Runs `postern certs`: writes a CA, a server and a client certificate with
/// their keys into `args.out`, then prints what it wrote and how to use it.
pub fn run(args: Args) -> Result<()> {
    let dir = &args.out;
    let mut names = vec![SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY];
    if !args.reuse_ca {
        names.splice(0..0, [CA_CERT, CA_KEY]);
    }
    // Every target is checked before anything is written, so a refusal never
    // leaves a mixed set of old and new files behind.
    if !args.force {
        if let Some(path) = names
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.symlink_metadata().is_ok())
        {
            bail!(
                "{} already exists; use --force to overwrite",
                path.display()
            );
        }
    }

    let bundle = if args.reuse_ca {
        let read = |name: &str| {
            let path = dir.join(name);
            fs::read_to_string(&path).with_context(|| {
                format!(
                    "reading {} (--reuse-ca needs {CA_CERT} and {CA_KEY})",
                    path.display()
                )
            })
        };
        let ca = Ca::from_pem(&read(CA_CERT)?, &read(CA_KEY)?)
            .with_context(|| format!("loading the CA from {}", dir.display()))?;
        leaves_from(ca, &args.server_names, &args.client_names, args.alg)?
    } else {
        bundle(&args.server_names, &args.client_names, args.alg)?
    };
    let (ca_cert, ca_key) = (bundle.ca.cert_pem(), bundle.ca.key_pem());
    let (server, client) = (&bundle.server, &bundle.client);
    // (file, what it is, contents, whether it is a private key)
    let files = [
        (CA_CERT, "CA certificate", ca_cert.as_str(), false),
        (CA_KEY, "CA private key", ca_key.as_str(), true),
        (
            SERVER_CERT,
            "server certificate",
            server.cert_pem.as_str(),
            false,
        ),
        (
            SERVER_KEY,
            "server private key",
            server.key_pem.as_str(),
            true,
        ),
        (
            CLIENT_CERT,
            "client certificate",
            client.cert_pem.as_str(),
            false,
        ),
        (
            CLIENT_KEY,
            "client private key",
            client.key_pem.as_str(),
            true,
        ),
    ];
    let files: Vec<_> = files.iter().filter(|f| names.contains(&f.0)).collect();

    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, _, text, secret) in &files {
        write_new(&dir.join(name), text, *secret, args.force)?;
    }

    println!("Wrote {} files to {}:", files.len(), dir.display());
    for (name, what, text, secret) in &files {
        let detail = match secret {
            true if cfg!(unix) => " (mode 0600)".to_owned(),
            true => String::new(),
            false => describe(text).with_context(|| format!("re-reading {name}"))?,
        };
        println!("  {name:<16}{what}{detail}");
    }
    let p = |name: &str| dir.join(name).display().to_string();
    let server_name = args
        .server_names
        .first()
        .map_or(DEFAULT_SERVER_NAME, String::as_str);
    println!("\nUse them with:");
    println!(
        "  server: --cert {} --key {} --client-ca {}",
        p(SERVER_CERT),
        p(SERVER_KEY),
        p(CA_CERT)
    );
    println!(
        "  client: --cert {} --key {} --ca {} --server-name {server_name}",
        p(CLIENT_CERT),
        p(CLIENT_KEY),
        p(CA_CERT)
    );
    Ok(())
}

/// " for NAMES, expires YYYY-MM-DD", read back from the certificate itself so
/// the summary shows what was actually issued.
fn describe(cert_pem: &str) -> Result<String> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| anyhow!("{e}"))?;
    let id = PeerIdentity::from_der(&der).map_err(|e| anyhow!(e))?;
    let mut names: Vec<&str> = (id.dns_names.iter().chain(&id.ips).chain(&id.uris))
        .map(String::as_str)
        .collect();
    if names.is_empty() {
        names.extend(id.common_name.as_deref());
    }
    let expires = OffsetDateTime::from_unix_timestamp(id.not_after)
        .map(|t| format!("{}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))
        .unwrap_or_else(|_| "unknown".into());
    Ok(format!(" for {}, expires {expires}", names.join(", ")))
}

/// Creates `path` afresh. Keys get mode 0600 at creation, so they are never
/// readable by others even for an instant; with `replace`, an old file is
/// removed first so its (possibly looser) mode is not inherited.
fn write_new(path: &Path, text: &str, secret: bool, replace: bool) -> Result<()> {
    if replace {
        match fs::remove_file(path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing old {}", path.display()));
            }
            _ => {}
        }
    }
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = opts.open(path).map_err(|e| match e.kind() {
        // Someone created it after the up-front check.
        ErrorKind::AlreadyExists => {
            anyhow!(
                "{} already exists; use --force to overwrite",
                path.display()
            )
        }
        _ => anyhow!(e).context(format!("creating {}", path.display())),
    })?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
    use rustls_pki_types::{CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime};
    use std::sync::Arc;
    use x509_parser::prelude::parse_x509_crl;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn chain(pem: &str) -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn x509_of<T>(der: &CertificateDer<'_>, f: impl FnOnce(&X509Certificate<'_>) -> T) -> T {
        let (_, cert) = X509Certificate::from_der(der).unwrap();
        f(&cert)
    }

    fn roots(ca: &Ca) -> Arc<RootCertStore> {
        let mut roots = RootCertStore::empty();
        roots.add(chain(&ca.cert_pem()).remove(0)).unwrap();
        Arc::new(roots)
    }

    fn verify_server(
        root: &Ca,
        leaf: &Issued,
        name: &str,
        crls: Vec<CertificateRevocationListDer<'static>>,
    ) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(root), provider())
            .with_crls(crls)
            .build()
            .unwrap();
        let certs = chain(&leaf.cert_pem);
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier
            .verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
            .map(|_| ())
    }

    fn verify_client(root: &Ca, leaf: &Issued) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(root), provider())
            .build()
            .unwrap();
        let certs = chain(&leaf.cert_pem);
        verifier
            .verify_client_cert(&certs[0], &certs[1..], UnixTime::now())
            .map(|_| ())
    }

    fn identity(issued: &Issued) -> PeerIdentity {
        PeerIdentity::from_der(&chain(&issued.cert_pem)[0]).unwrap()
    }

    /// (serverAuth, clientAuth, codeSigning) of the first certificate.
    fn ekus(issued: &Issued) -> (bool, bool, bool) {
        x509_of(&chain(&issued.cert_pem)[0], |c| {
            let eku = c.extended_key_usage().unwrap().unwrap().value;
            (eku.server_auth, eku.client_auth, eku.code_signing)
        })
    }

    /// A full mutual TLS 1.3 handshake over memory; returns the client identity the server saw.
    fn handshake(b: &Bundle, server_name: &str) -> Result<PeerIdentity, rustls::Error> {
        let key = |pem: &str| PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap();
        let client_verifier = WebPkiClientVerifier::builder_with_provider(roots(&b.ca), provider())
            .build()
            .unwrap();
        let server_cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(chain(&b.server.cert_pem), key(&b.server.key_pem))?;
        let client_cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots(&b.ca))
            .with_client_auth_cert(chain(&b.client.cert_pem), key(&b.client.key_pem))?;
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client = ClientConnection::new(Arc::new(client_cfg), name)?;
        let mut server = ServerConnection::new(Arc::new(server_cfg))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut buf).unwrap();
            }
            let mut rest = &buf[..];
            while !rest.is_empty() {
                server.read_tls(&mut rest).unwrap();
                server.process_new_packets()?;
            }
            buf.clear();
            while server.wants_write() {
                server.write_tls(&mut buf).unwrap();
            }
            let mut rest = &buf[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).unwrap();
                client.process_new_packets()?;
            }
            if !client.is_handshaking() && !server.is_handshaking() {
                let peer = &server.peer_certificates().unwrap()[0];
                return Ok(PeerIdentity::from_der(peer).unwrap());
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn names_land_in_the_right_san_kinds() {
        let ca = Ca::new("Test CA", KeyAlg::EcdsaP256).unwrap();
        let names = [
            "svc.example.com",
            "127.0.0.1",
            "::1",
            "spiffe://example.org/ns/prod/sa/app",
            "*.apps.example.com",
        ];
        let id = identity(&ca.issue(&LeafSpec::server(&names)).unwrap());
        assert_eq!(id.dns_names, ["svc.example.com", "*.apps.example.com"]);
        assert_eq!(id.ips, ["127.0.0.1", "::1"]);
        assert_eq!(id.uris, ["spiffe://example.org/ns/prod/sa/app"]);
        assert_eq!(id.common_name.as_deref(), Some("svc.example.com"));

        let id = identity(&ca.issue(&LeafSpec::client(&[names[3]])).unwrap());
        assert_eq!(id.uris, [names[3]]);
        assert!(id.dns_names.is_empty() && id.ips.is_empty());
        assert_eq!(id.primary(), names[3]);
    }

    #[test]
    fn usage_sets_extended_key_usage() {
        let ca = Ca::new("Test CA", KeyAlg::EcdsaP256).unwrap();
        let leaf = |usage| {
            let spec = LeafSpec {
                usage,
                ..LeafSpec::server(&["a.example"])
            };
            ca.issue(&spec).unwrap()
        };
        assert_eq!(ekus(&leaf(Usage::Server)), (true, false, false));
        assert_eq!(ekus(&leaf(Usage::Client)), (false, true, false));
        assert_eq!(ekus(&leaf(Usage::Both)), (true, true, false));
        assert_eq!(ekus(&leaf(Usage::Neither)), (false, false, true));

        assert!(verify_server(&ca, &leaf(Usage::Server), "a.example", vec![]).is_ok());
        assert!(verify_server(&ca, &leaf(Usage::Both), "a.example", vec![]).is_ok());
        assert!(verify_server(&ca, &leaf(Usage::Client), "a.example", vec![]).is_err());
        assert!(verify_server(&ca, &leaf(Usage::Neither), "a.example", vec![]).is_err());
        assert!(verify_client(&ca, &leaf(Usage::Client)).is_ok());
        assert!(verify_client(&ca, &leaf(Usage::Server)).is_err());
        assert!(verify_client(&ca, &leaf(Usage::Neither)).is_err());

        let ca_is_ca = x509_of(&chain(&ca.cert_pem())[0], |c| {
            c.basic_constraints().unwrap().unwrap().value.ca
        });
        let leaf_is_ca = x509_of(&chain(&leaf(Usage::Server).cert_pem)[0], |c| {
            c.basic_constraints().unwrap().unwrap().value.ca
        });
        assert!(ca_is_ca && !leaf_is_ca);
    }

    #[test]
    fn intermediate_chain_verifies_against_root_only() {
        let root = Ca::new("Test Root", KeyAlg::EcdsaP256).unwrap();
        let inter = root.intermediate("Test Intermediate").unwrap();
        assert_eq!(chain(&inter.cert_pem()).len(), 1);

        let server = inter.issue(&LeafSpec::server(&["svc.example"])).unwrap();
        let certs = chain(&server.cert_pem);
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[1], chain(&inter.cert_pem())[0]);
        assert!(verify_server(&root, &server, "svc.example", vec![]).is_ok());
        assert!(verify_server(&root, &server, "other.example", vec![]).is_err());

        let client = inter.issue(&LeafSpec::client(&["spiffe://t/c"])).unwrap();
        assert!(verify_client(&root, &client).is_ok());

        // Without the intermediate in the chain there is no path to the root.
        let leaf_only = Issued {
            cert_pem: server
                .cert_pem
                .split_inclusive("-----END CERTIFICATE-----")
                .next()
                .unwrap()
                .to_owned(),
            key_pem: String::new(),
        };
        assert!(verify_server(&root, &leaf_only, "svc.example", vec![]).is_err());

        let stranger = Ca::new("Test Root", KeyAlg::EcdsaP256).unwrap();
        assert!(verify_server(&stranger, &server, "svc.example", vec![]).is_err());

        // A second level of intermediates still chains to the root.
        let sub = inter.intermediate("Test Sub").unwrap();
        let deep = sub.issue(&LeafSpec::server(&["deep.example"])).unwrap();
        assert_eq!(chain(&deep.cert_pem).len(), 3);
        assert!(verify_server(&root, &deep, "deep.example", vec![]).is_ok());
    }

    #[test]
    fn expired_spec_gives_past_not_after() {
        let ca = Ca::new("Test CA", KeyAlg::EcdsaP256).unwrap();
        let now = OffsetDateTime::now_utc();
        let spec = LeafSpec {
            not_before: now - Duration::days(30),
            not_after: now - Duration::days(1),
            ..LeafSpec::server(&["old.example"])
        };
        let old = ca.issue(&spec).unwrap();
        assert!(identity(&old).not_after < now.unix_timestamp());
        let err = verify_server(&ca, &old, "old.example", vec![]).unwrap_err();
        assert!(format!("{err:?}").contains("Expired"), "{err:?}");

        let fresh = identity(&ca.issue(&LeafSpec::server(&["new.example"])).unwrap());
        assert!(fresh.not_after > (now + Duration::days(364)).unix_timestamp());

        let backwards = LeafSpec {
            not_after: spec.not_before,
            not_before: spec.not_after,
            ..spec
        };
        assert!(ca.issue(&backwards).is_err());
    }

    #[test]
    fn crl_lists_revoked_serial_and_revokes() {
        let root = Ca::new("Test Root", KeyAlg::EcdsaP256).unwrap();
        let inter = root.intermediate("Test Intermediate").unwrap();
        let revoked = inter.issue(&LeafSpec::server(&["r.example"])).unwrap();
        let kept = inter.issue(&LeafSpec::server(&["r.example"])).unwrap();
        let serial = serial_of(&revoked.cert_pem).unwrap();
        assert_eq!(serial.len(), 16);
        assert_ne!(serial, serial_of(&kept.cert_pem).unwrap());

        let crl_pem = inter.crl_pem(std::slice::from_ref(&serial)).unwrap();
        let crl_der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
        let (_, crl) = parse_x509_crl(&crl_der).unwrap();
        let listed: Vec<&[u8]> = crl
            .iter_revoked_certificates()
            .map(|r| r.raw_serial())
            .collect();
        assert_eq!(listed, [serial.as_slice()]);
        let next = crl.next_update().unwrap().timestamp();
        let week = (OffsetDateTime::now_utc() + Duration::days(7)).unix_timestamp();
        assert!((next - week).abs() < 60);
        let inter_name = x509_of(&chain(&inter.cert_pem())[0], |c| {
            c.subject().as_raw().to_vec()
        });
        assert_eq!(crl.issuer().as_raw(), inter_name.as_slice());

        // webpki checks every certificate in the path, so the root's (empty) CRL is needed too.
        let root_crl = root.crl_pem(&[]).unwrap();
        let root_crl = CertificateRevocationListDer::from_pem_slice(root_crl.as_bytes()).unwrap();
        let crls = vec![crl_der.clone(), root_crl];
        let err = verify_server(&root, &revoked, "r.example", crls.clone()).unwrap_err();
        assert!(format!("{err:?}").contains("Revoked"), "{err:?}");
        assert!(verify_server(&root, &kept, "r.example", crls).is_ok());
    }

    #[test]
    fn from_pem_round_trips() {
        let ca = Ca::new("Test CA", KeyAlg::EcdsaP384).unwrap();
        let again = Ca::from_pem(&ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        assert_eq!(again.key_pem(), ca.key_pem());
        let leaf = again.issue(&LeafSpec::server(&["x.example"])).unwrap();
        assert_eq!(chain(&leaf.cert_pem).len(), 1);
        assert!(verify_server(&ca, &leaf, "x.example", vec![]).is_ok());

        // A reloaded intermediate (given with its root) still serves the full chain.
        let inter = ca.intermediate("Test Intermediate").unwrap();
        let with_root = format!("{}{}", inter.cert_pem(), ca.cert_pem());
        let inter_again = Ca::from_pem(&with_root, &inter.key_pem()).unwrap();
        assert_eq!(inter_again.cert_pem(), inter.cert_pem());
        let leaf = inter_again
            .issue(&LeafSpec::server(&["y.example"]))
            .unwrap();
        assert_eq!(chain(&leaf.cert_pem).len(), 2);
        assert!(verify_server(&ca, &leaf, "y.example", vec![]).is_ok());

        let other = Ca::new("Other", KeyAlg::EcdsaP384).unwrap();
        let err = Ca::from_pem(&ca.cert_pem(), &other.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
        let err = Ca::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
        assert!(Ca::from_pem("nothing here", &ca.key_pem()).is_err());
        assert!(Ca::from_pem(&ca.cert_pem(), "nothing here").is_err());
    }

    #[test]
    fn invalid_names_are_rejected_by_value() {
        let ca = Ca::new("Test CA", KeyAlg::EcdsaP256).unwrap();
        for bad in [
            "",
            "bad name",
            "-lead.example",
            "a..b",
            "trailing.dot.",
            "under\u{e9}.example",
            "x://",
            "://nothing",
            "spiffe://has space",
            "1http://x",
        ] {
            let err = ca
                .issue(&LeafSpec::server(&["ok.example", bad]))
                .unwrap_err();
            assert!(
                err.to_string().contains(&format!("{bad:?}")),
                "{bad:?}: {err}"
            );
        }
        let empty = LeafSpec {
            names: vec![],
            ..LeafSpec::server(&[])
        };
        assert!(ca.issue(&empty).is_err());
        assert!(Ca::new(" ", KeyAlg::EcdsaP256).is_err());
    }

    #[test]
    fn debug_never_shows_keys() {
        let b = bundle(&[], &[], KeyAlg::EcdsaP256).unwrap();
        assert!(b.server.key_pem.contains("PRIVATE KEY"));
        for shown in [
            format!("{:?}", b.server),
            format!("{:?}", b.ca),
            format!("{b:?}"),
        ] {
            assert!(!shown.contains("PRIVATE KEY"), "{shown}");
            assert!(shown.contains("<redacted>"));
        }
    }

    #[test]
    fn every_algorithm_completes_a_mutual_handshake() {
        for alg in [
            KeyAlg::EcdsaP256,
            KeyAlg::EcdsaP384,
            KeyAlg::Ed25519,
            KeyAlg::Rsa2048,
        ] {
            let b = bundle(
                &["svc.example".into(), "10.0.0.1".into()],
                &["spiffe://example.org/client".into()],
                alg,
            )
            .unwrap();
            let peer = handshake(&b, "svc.example").unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(peer.uris, ["spiffe://example.org/client"]);
            assert!(handshake(&b, "10.0.0.1").is_ok(), "{alg:?}");
            assert!(handshake(&b, "wrong.example").is_err(), "{alg:?}");
            let key = PrivateKeyDer::from_pem_slice(b.ca.key_pem().as_bytes()).unwrap();
            assert!(matches!(key, PrivateKeyDer::Pkcs8(_)), "{alg:?}");
        }
        // Defaults when no names are given.
        let b = bundle(&[], &[], KeyAlg::default()).unwrap();
        assert_eq!(
            handshake(&b, "localhost").unwrap().dns_names,
            ["postern-client"]
        );
    }

    struct TempDir(PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn args(out: &Path, reuse_ca: bool, force: bool) -> Args {
        Args {
            out: out.to_owned(),
            server_names: vec!["svc.example".into()],
            client_names: vec!["spiffe://example.org/c".into()],
            alg: KeyAlg::EcdsaP256,
            reuse_ca,
            force,
        }
    }

    #[test]
    fn run_writes_refuses_and_forces() {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let tmp = TempDir(
            std::env::temp_dir().join(format!("postern-certs-test-{}-{nanos}", std::process::id())),
        );
        // A nested path shows the directory is created.
        let out = tmp.0.join("nested");
        run(args(&out, false, false)).unwrap();
        let files = [
            CA_CERT,
            CA_KEY,
            SERVER_CERT,
            SERVER_KEY,
            CLIENT_CERT,
            CLIENT_KEY,
        ];
        assert_eq!(fs::read_dir(&out).unwrap().count(), 6);
        let read = |name: &str| fs::read_to_string(out.join(name)).unwrap();
        for name in files {
            assert!(!read(name).is_empty(), "{name}");
        }
        #[cfg(unix)]
        let assert_key_modes = || {
            use std::os::unix::fs::PermissionsExt;
            for name in [CA_KEY, SERVER_KEY, CLIENT_KEY] {
                let mode = fs::metadata(out.join(name)).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{name}");
            }
        };
        #[cfg(unix)]
        assert_key_modes();

        let ca = Ca::from_pem(&read(CA_CERT), &read(CA_KEY)).unwrap();
        let server = Issued {
            cert_pem: read(SERVER_CERT),
            key_pem: read(SERVER_KEY),
        };
        assert!(verify_server(&ca, &server, "svc.example", vec![]).is_ok());

        let before = read(SERVER_CERT);
        let err = run(args(&out, false, false)).unwrap_err().to_string();
        assert!(
            err.contains("use --force") && err.contains(CA_CERT),
            "{err}"
        );
        assert_eq!(read(SERVER_CERT), before);

        // Loosen a key's mode; --force must not inherit it.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(out.join(SERVER_KEY), fs::Permissions::from_mode(0o644)).unwrap();
        }
        run(args(&out, false, true)).unwrap();
        assert_ne!(read(SERVER_CERT), before);
        #[cfg(unix)]
        assert_key_modes();

        let ca_before = read(CA_CERT);
        let err = run(args(&out, true, false)).unwrap_err().to_string();
        assert!(
            err.contains(SERVER_CERT) && err.contains("use --force"),
            "{err}"
        );
        run(args(&out, true, true)).unwrap();
        assert_eq!(read(CA_CERT), ca_before);
        let ca = Ca::from_pem(&read(CA_CERT), &read(CA_KEY)).unwrap();
        let client = Issued {
            cert_pem: read(CLIENT_CERT),
            key_pem: read(CLIENT_KEY),
        };
        assert!(verify_client(&ca, &client).is_ok());

        let empty = tmp.0.join("empty");
        let err = run(args(&empty, true, false)).unwrap_err();
        assert!(format!("{err:#}").contains(CA_CERT), "{err:#}");
    }
}
