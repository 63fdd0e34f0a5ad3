//! The PEM loading paths, fed through a real file as at start-up and on
//! reload: certificates, keys, CRLs and CA bundles must load or fail with an
//! error, and every certificate that loads has its identity read the way a
//! verified peer's would be.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use postern::authz::identity::PeerIdentity;
use postern::tls::pem;

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("postern-fuzz-pem-{}.pem", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write scratch file");
    if let Ok(certs) = pem::load_certs(path) {
        for cert in &certs {
            let _ = PeerIdentity::from_der(cert);
            let _ = pem::check_validity(path, cert);
        }
    }
    let _ = pem::load_key(path);
    let _ = pem::load_crls(path);
    let _ = pem::load_roots(path);
    let _ = pem::load_identity(path, path);
    // The DER parser on its own, without the PEM armour.
    let _ = PeerIdentity::from_der(&data.to_vec().into());
});
