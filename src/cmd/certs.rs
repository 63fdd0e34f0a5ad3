//! `postern certs`: a private CA, a server and a client certificate with
//! their keys, written as ready-to-use files (issued by [`crate::pki`]).

// `postern certs` is synchronous: it runs no tunnels.
#![allow(clippy::disallowed_methods)]

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::authz::PeerIdentity;
use crate::pki::{self, KeyAlg, CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY, SERVER_CERT, SERVER_KEY};

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
        let ca = pki::Ca::from_pem(&read(CA_CERT)?, &read(CA_KEY)?)
            .with_context(|| format!("loading the CA from {}", dir.display()))?;
        pki::bundle_from(ca, &args.server_names, &args.client_names, args.alg)?
    } else {
        pki::bundle(&args.server_names, &args.client_names, args.alg)?
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
        .map_or(pki::DEFAULT_SERVER_NAME, String::as_str);
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
        pki::remove_if_exists(path).with_context(|| format!("removing old {}", path.display()))?;
    }
    pki::create_new(path, text.as_bytes(), secret).map_err(|e| match e.kind() {
        // Someone created it after the up-front check.
        ErrorKind::AlreadyExists => {
            anyhow!(
                "{} already exists; use --force to overwrite",
                path.display()
            )
        }
        _ => anyhow!(e).context(format!("writing {}", path.display())),
    })
}
