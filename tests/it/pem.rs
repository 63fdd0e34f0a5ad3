//! PEM handling with files made by openssl rather than by Postern: PKCS#8,
//! SEC1 and PKCS#1 keys, chains, and a tunnel that runs on them; plus the
//! start-up checks that name a bad file.

use std::process::Command;

use crate::harness::*;

fn openssl(dir: &TempDir, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir.root())
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have_openssl() -> bool {
    Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// An openssl CA plus server and client leaves; the key formats differ on purpose.
fn openssl_pki() -> TempDir {
    let dir = TempDir::new("openssl");
    dir.write(
        "ca.ext",
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n",
    );
    dir.write(
        "server.ext",
        "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
    );
    dir.write(
        "client.ext",
        "subjectAltName=URI:spiffe://openssl.test/client\nextendedKeyUsage=clientAuth\n",
    );
    // CA: PKCS#8 EC key.
    openssl(
        &dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca-key.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/CN=openssl CA",
            "-days",
            "30",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-out",
            "ca.pem",
        ],
    );
    // Server: PKCS#1 RSA key ("BEGIN RSA PRIVATE KEY").
    openssl(
        &dir,
        &["genrsa", "-traditional", "-out", "server-key.pem", "2048"],
    );
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-key",
            "server-key.pem",
            "-subj",
            "/CN=localhost",
            "-out",
            "server.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
    // Client: SEC1 EC key ("BEGIN EC PRIVATE KEY").
    openssl(
        &dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "client-key.pem",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-new",
            "-key",
            "client-key.pem",
            "-subj",
            "/CN=openssl client",
            "-out",
            "client.csr",
        ],
    );
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "client.ext",
            "-out",
            "client.pem",
        ],
    );
    dir
}

#[tokio::test]
async fn openssl_made_keys_and_certificates_carry_a_tunnel() {
    if !have_openssl() {
        eprintln!("SKIPPED: openssl not installed");
        return;
    }
    let dir = openssl_pki();
    let header = |f: &str| {
        std::fs::read_to_string(dir.path(f))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header("server-key.pem"), "-----BEGIN RSA PRIVATE KEY-----");
    assert_eq!(header("client-key.pem"), "-----BEGIN EC PRIVATE KEY-----");
    assert_eq!(header("ca-key.pem"), "-----BEGIN PRIVATE KEY-----");
    for (cert, key) in [
        ("server.pem", "server-key.pem"),
        ("client.pem", "client-key.pem"),
        ("ca.pem", "ca-key.pem"),
    ] {
        pem::load_identity(&dir.path(cert), &dir.path(key))
            .unwrap_or_else(|e| panic!("{cert}: {e}"));
    }
    let (got, report) = banner_with_files(dir.root()).await;
    assert_eq!(got, server::backend::BANNER.as_bytes());
    assert_eq!(
        report.identity.unwrap().uris,
        vec!["spiffe://openssl.test/client".to_string()]
    );
}

#[test]
fn a_chain_file_loads_leaf_first() {
    let root = pki::Ca::new("Root", KeyAlg::EcdsaP256).unwrap();
    let mid = root.intermediate("Intermediate").unwrap();
    let leaf = mid.issue(&LeafSpec::server(&["localhost"])).unwrap();
    let dir = TempDir::new("chain");
    write_pair(&dir, "leaf", &leaf);
    let certs = pem::load_certs(&dir.path("leaf.pem")).unwrap();
    assert_eq!(certs.len(), 2, "leaf plus intermediate");
    pem::load_identity(&dir.path("leaf.pem"), &dir.path("leaf-key.pem")).unwrap();
}

#[test]
fn bad_files_are_named_with_what_is_wrong() {
    let pki = Pki::new();
    let ca = pki::Ca::new("CA", KeyAlg::EcdsaP256).unwrap();
    let mut expired = LeafSpec::server(&["localhost"]);
    expired.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
    expired.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    write_pair(&pki.dir, "expired", &ca.issue(&expired).unwrap());
    let mut future = LeafSpec::server(&["localhost"]);
    future.not_before = time::OffsetDateTime::now_utc() + time::Duration::days(1);
    future.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(30);
    write_pair(&pki.dir, "future", &ca.issue(&future).unwrap());
    pki.dir.write("empty.pem", "");

    let path = |f: &str| pki.dir.path(f);
    let err = pem::load_identity(&path("expired.pem"), &path("expired-key.pem")).unwrap_err();
    assert!(
        matches!(err, PemError::Validity { .. }) && err.to_string().contains("expired"),
        "{err}"
    );
    assert!(err.to_string().contains("expired.pem"));
    let err = pem::load_identity(&path("future.pem"), &path("future-key.pem")).unwrap_err();
    assert!(err.to_string().contains("not valid until"), "{err}");
    let err = pem::load_identity(&path("server.pem"), &path("client-key.pem")).unwrap_err();
    assert!(matches!(err, PemError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("client-key.pem") && err.to_string().contains("server.pem"));
    let err = pem::load_certs(&path("empty.pem")).unwrap_err();
    assert!(err.to_string().contains("empty.pem"), "{err}");
    let err = pem::load_key(&path("server.pem")).unwrap_err();
    assert!(err.to_string().contains("PRIVATE KEY"), "{err}");
    let err = pem::load_roots(&path("nope.pem")).unwrap_err();
    assert!(err.to_string().contains("nope.pem"), "{err}");
    assert_eq!(
        err.to_string().lines().count(),
        1,
        "multi-line error: {err}"
    );
}
