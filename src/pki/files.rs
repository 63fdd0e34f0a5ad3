//! Certificates and keys on disk: the one way Postern writes a file only its
//! owner may read, the file names `postern certs` uses, and the flags that
//! point a server or client at them.

use std::fs;
use std::io::{self, ErrorKind, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::Bundle;

/// The CA certificate each side trusts for the other.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (written only by `postern certs`).
pub const CA_KEY: &str = "ca-key.pem";
/// The server's certificate chain.
pub const SERVER_CERT: &str = "server.pem";
/// The server's private key.
pub const SERVER_KEY: &str = "server-key.pem";
/// The client's certificate chain.
pub const CLIENT_CERT: &str = "client.pem";
/// The client's private key.
pub const CLIENT_KEY: &str = "client-key.pem";

/// Creates `path`, which must not exist yet (`AlreadyExists` otherwise).
/// With `private` it has mode 0600 from the moment it exists, so a key is
/// never readable by others even for an instant.
pub fn create_new(path: &Path, contents: &[u8], private: bool) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options.open(path)?.write_all(contents)
}

/// Removes `path` if it exists.
pub fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Writes `contents` to `path` with mode 0600, replacing any file there. The
/// old file is removed first, so its (possibly looser) mode is not inherited.
pub fn write_private(path: &Path, contents: &[u8]) -> io::Result<()> {
    remove_if_exists(path)?;
    create_new(path, contents, true)
}

/// A [`Bundle`] written to a directory under the names `postern certs` uses
/// (the CA's key aside), and the flags that point a server or client at it.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
}

impl CertDir {
    /// Writes the CA certificate and both leaves into `dir` (created if
    /// missing), every file 0600.
    pub fn write(dir: &Path, bundle: &Bundle) -> anyhow::Result<CertDir> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = [
            (CA_CERT, bundle.ca.cert_pem()),
            (SERVER_CERT, bundle.server.cert_pem.clone()),
            (SERVER_KEY, bundle.server.key_pem.clone()),
            (CLIENT_CERT, bundle.client.cert_pem.clone()),
            (CLIENT_KEY, bundle.client.key_pem.clone()),
        ];
        for (name, contents) in files {
            let path = dir.join(name);
            write_private(&path, contents.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(CertDir {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the directory, as a string for argv.
    pub fn arg(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `postern server`'s inner mTLS flags: its certificate and key, and the
    /// CA its clients' certificates must chain to. With `outer_tls`, the
    /// same certificate also serves the outer TLS (ALPN h2).
    pub fn server_flags(&self, outer_tls: bool) -> Vec<String> {
        let (cert, key) = (self.arg(SERVER_CERT), self.arg(SERVER_KEY));
        let mut flags = vec![
            "--cert".into(),
            cert.clone(),
            "--key".into(),
            key.clone(),
            "--client-ca".into(),
            self.arg(CA_CERT),
        ];
        if outer_tls {
            flags.extend(["--tls-cert".into(), cert, "--tls-key".into(), key]);
        }
        flags
    }

    /// `postern client`'s inner mTLS flags (its certificate and key, the CA
    /// the server's must chain to), and the same CA trusted for the outer
    /// TLS, whose front end certificate it issued too.
    pub fn client_flags(&self) -> Vec<String> {
        let ca = self.arg(CA_CERT);
        vec![
            "--cert".into(),
            self.arg(CLIENT_CERT),
            "--key".into(),
            self.arg(CLIENT_KEY),
            "--ca".into(),
            ca.clone(),
            "--tls-ca".into(),
            ca,
        ]
    }
}
