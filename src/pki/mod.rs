//! Certificate issuance: the private CA behind the inner mutual TLS, and
//! the files `postern certs`, the demo and the benchmark write from it.
//!
//! Everything that mints certificates (the `certs` subcommand, the demo, the
//! benchmark and the tests) goes through here, so they all get the same
//! profile: [`Ca`] issues leaves described by a [`LeafSpec`] and CRLs;
//! [`bundle`] makes a CA with one server and one client leaf; [`CertDir`]
//! writes one out and names the flags that use it.

mod ca;
mod crl;
mod files;
mod leaf;
#[cfg(test)]
mod tests;

use anyhow::Result;

pub use ca::Ca;
pub use crl::serial_of;
pub use files::{
    create_new, remove_if_exists, write_private, CertDir, CA_CERT, CA_KEY, CLIENT_CERT, CLIENT_KEY,
    SERVER_CERT, SERVER_KEY,
};
pub use leaf::{Issued, KeyAlg, LeafSpec, Usage};

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
    bundle_from(Ca::new("Postern CA", alg)?, server_names, client_names, alg)
}

/// The server name of a bundle issued without server names.
pub const DEFAULT_SERVER_NAME: &str = "localhost";
/// The client name of a bundle issued without client names.
pub const DEFAULT_CLIENT_NAME: &str = "postern-client";

/// One server and one client certificate from an existing CA, as
/// [`bundle`] issues them.
pub fn bundle_from(ca: Ca, server: &[String], client: &[String], alg: KeyAlg) -> Result<Bundle> {
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
