//! The provider's suite order, and a real inner handshake between our configs.

#![allow(clippy::disallowed_methods)] // test fixtures are written before anything runs

use std::sync::Arc;

use rustls::CommonState;
use rustls_pki_types::ServerName;

use super::*;
use crate::authz::Allow;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Certificates from one fresh CA, as configs take them.
pub(super) struct Fixture {
    dir: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    pub server: Arc<CertSlot>,
    pub client: Arc<CertSlot>,
}

impl Fixture {
    pub(super) fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("postern-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let set = crate::pki::bundle(&[], &[], Default::default()).unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca = write("ca.pem", &set.ca.cert_pem());
        let slot = |issued: &crate::pki::Issued, name: &str| {
            let cert = write(&format!("{name}.pem"), &issued.cert_pem);
            let key = write(&format!("{name}-key.pem"), &issued.key_pem);
            CertSlot::new(pem::load_identity(&cert, &key).unwrap())
        };
        let (server, client) = (slot(&set.server, "server"), slot(&set.client, "client"));
        Fixture {
            dir,
            ca,
            server,
            client,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The suite a real inner handshake between our own configs settles on
/// (the outer layer uses the same provider).
#[tokio::test]
async fn handshake_settles_on_aes_128_gcm() {
    let certs = Fixture::new("suite");
    let roots = pem::load_roots(&certs.ca).unwrap();
    let server = inner_server_config(
        certs.server.clone(),
        roots.clone(),
        Vec::new(),
        Allow::default(),
    )
    .unwrap();
    let client = inner_client_config(certs.client.clone(), roots).unwrap();

    let (a, b) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("localhost").unwrap();
    let (c, s) = tokio::join!(
        TlsConnector::from(client).connect(name, a),
        TlsAcceptor::from(server).accept(b)
    );
    let (c, s) = (c.unwrap(), s.unwrap());
    let states: [&CommonState; 2] = [c.get_ref().1, s.get_ref().1];
    for state in states {
        let suite = state.negotiated_cipher_suite().unwrap().suite();
        assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    }
}

#[test]
fn every_default_suite_stays_on_offer() {
    let ours: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
    let mut defaults: Vec<_> = rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(ours[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    let mut sorted = ours.clone();
    sorted.sort_by_key(|s| u16::from(*s));
    defaults.sort_by_key(|s| u16::from(*s));
    assert_eq!(
        sorted, defaults,
        "same suites as aws-lc-rs offers, reordered"
    );
}

/// Where a suite's implementation lives: two libraries' suites with the same
/// id compare equal, so they are told apart by address.
fn implementation(suite: &rustls::SupportedCipherSuite) -> *const () {
    match suite {
        rustls::SupportedCipherSuite::Tls13(s) => std::ptr::from_ref(*s).cast(),
        rustls::SupportedCipherSuite::Tls12(s) => std::ptr::from_ref(*s).cast(),
    }
}

#[test]
fn the_record_ciphers_come_from_the_library_chosen_for_this_cpu() {
    let (chosen, other) = match RecordCiphers::here() {
        RecordCiphers::AwsLc => (
            rustls::crypto::aws_lc_rs::default_provider(),
            rustls::crypto::ring::default_provider(),
        ),
        RecordCiphers::Ring => (
            rustls::crypto::ring::default_provider(),
            rustls::crypto::aws_lc_rs::default_provider(),
        ),
    };
    let from = |p: &rustls::crypto::CryptoProvider| -> Vec<_> {
        p.cipher_suites.iter().map(implementation).collect()
    };
    let (chosen, other) = (from(&chosen), from(&other));
    for suite in &provider().cipher_suites {
        let at = implementation(suite);
        assert!(
            chosen.contains(&at) && !other.contains(&at),
            "{:?} is not {}'s",
            suite.suite(),
            RecordCiphers::here().name()
        );
    }
}
