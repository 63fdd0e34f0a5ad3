#![allow(clippy::disallowed_methods)] // test fixtures are written before anything runs
use super::*;
use std::fs;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::authz::PeerIdentity;
use crate::cmd::certs::{run, Args};
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
    let tmp = tempfile::tempdir().unwrap();
    // A nested path shows the directory is created.
    let out = tmp.path().join("nested");
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

    let empty = tmp.path().join("empty");
    let err = run(args(&empty, true, false)).unwrap_err();
    assert!(format!("{err:#}").contains(CA_CERT), "{err:#}");
}

#[test]
fn cert_dir_writes_private_files_and_flags_both_sides_accept() {
    use crate::cmd::parse_args;
    let tmp = tempfile::tempdir().unwrap();
    // A loose file already there must not lend its mode to the new one.
    fs::write(tmp.path().join(SERVER_KEY), "old").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(
            tmp.path().join(SERVER_KEY),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let b = bundle(&[], &[], KeyAlg::default()).unwrap();
    let dir = CertDir::write(tmp.path(), &b).unwrap();
    assert_eq!(
        fs::read_to_string(tmp.path().join(SERVER_KEY)).unwrap(),
        b.server.key_pem
    );
    #[cfg(unix)]
    for name in [CA_CERT, SERVER_CERT, SERVER_KEY, CLIENT_CERT, CLIENT_KEY] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(tmp.path().join(name))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let mut server = vec!["--backend".to_owned(), "127.0.0.1:1".into()];
    server.extend(dir.server_flags(true));
    let server: Vec<&str> = server.iter().map(String::as_str).collect();
    parse_args::<crate::server::Args>("server", &server).unwrap();
    let mut client = vec!["--url".to_owned(), "https://localhost/".into()];
    client.extend(dir.client_flags());
    let client: Vec<&str> = client.iter().map(String::as_str).collect();
    let args = parse_args::<crate::client::Args>("client", &client).unwrap();
    assert_eq!(args.ca, Some(tmp.path().join(CA_CERT)));
    assert_eq!(args.tls_ca, Some(tmp.path().join(CA_CERT)));
}
