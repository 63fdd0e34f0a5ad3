//! The identity matrix through the real stack: one server with a CRL and an
//! allow-list, and one client per case. Refused cases must never reach the
//! backend, and the server's report must name the reason.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

mod common;
#[path = "common/trust.rs"]
mod trust;

use common::*;
use postern::pki::{serial_of, Ca, KeyAlg, LeafSpec, Usage};
use time::{Duration, OffsetDateTime};
use tokio_util::sync::CancellationToken;
use trust::*;

/// How a case must end.
enum Expect {
    /// The echo comes back; the report names this identity.
    Accepted(&'static str),
    /// Refused; the server's close reason label and outcome text fragment.
    Refused(&'static str, &'static str),
}

fn leaf(names: &[&str], usage: Usage) -> LeafSpec {
    let mut spec = LeafSpec::client(names);
    spec.usage = usage;
    spec
}

#[tokio::test]
async fn identity_matrix() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let now = OffsetDateTime::now_utc();

    let issue = |spec: &LeafSpec| pki.ca.issue(spec).expect("issue");
    let revoked = issue(&LeafSpec::client(&["spiffe://test.postern/revoked"]));
    let mut expired_spec = LeafSpec::client(&["spiffe://test.postern/expired"]);
    expired_spec.not_before = now - Duration::days(30);
    expired_spec.not_after = now - Duration::days(1);
    let mut future_spec = LeafSpec::client(&["spiffe://test.postern/future"]);
    future_spec.not_before = now + Duration::days(1);
    future_spec.not_after = now + Duration::days(30);
    let other_ca = Ca::new("Other CA", KeyAlg::EcdsaP256).expect("ca");
    let intermediate = pki
        .ca
        .intermediate("Test Intermediate")
        .expect("intermediate");

    let crl = pki
        .ca
        .crl_pem(&[serial_of(&revoked.cert_pem).expect("serial")])
        .expect("crl");
    pki.dir.write("crl.pem", &crl);
    let mut flags = inner_flags(&pki);
    let backend_addr = backend.addr.to_string();
    flags.extend(
        [
            "--backend",
            &backend_addr,
            "--crl",
            &pki.p("crl.pem"),
            "--allow",
            "spiffe://test.postern/*",
        ]
        .map(String::from),
    );
    let mut server = Server::start(&strs(&flags), &shutdown).await;
    let url = server.url("/");

    // Cases presented through hand-built rustls clients (the postern client
    // itself refuses to load expired or not-yet-valid certificates).
    let raw: Vec<(&str, Option<postern::pki::Issued>, Expect)> = vec![
        (
            "valid client",
            Some(issue(&LeafSpec::client(&[CLIENT_ID]))),
            Expect::Accepted(CLIENT_ID),
        ),
        (
            "no client certificate",
            None,
            Expect::Refused("handshake_failed", "no client certificate"),
        ),
        (
            "certificate from another CA",
            Some(
                other_ca
                    .issue(&LeafSpec::client(&["spiffe://test.postern/x"]))
                    .unwrap(),
            ),
            Expect::Refused("handshake_failed", "not issued by a trusted CA"),
        ),
        (
            "expired",
            Some(issue(&expired_spec)),
            Expect::Refused("handshake_failed", "expired"),
        ),
        (
            "not yet valid",
            Some(issue(&future_spec)),
            Expect::Refused("handshake_failed", "not yet valid"),
        ),
        (
            "server-only EKU",
            Some(issue(&leaf(&["spiffe://test.postern/srv"], Usage::Server))),
            Expect::Refused("handshake_failed", "not for client authentication"),
        ),
        (
            "no TLS EKU at all",
            Some(issue(&leaf(
                &["spiffe://test.postern/none"],
                Usage::Neither,
            ))),
            Expect::Refused("handshake_failed", "not for client authentication"),
        ),
        (
            "revoked by CRL",
            Some(revoked),
            Expect::Refused("handshake_failed", "revoked"),
        ),
        (
            "valid but not allowed",
            Some(issue(&LeafSpec::client(&["spiffe://elsewhere/client"]))),
            Expect::Refused("handshake_failed", "not allowed"),
        ),
        (
            "issued by an intermediate (no CRL for it: allowed)",
            Some(
                intermediate
                    .issue(&LeafSpec::client(&[
                        "spiffe://test.postern/via-intermediate",
                    ]))
                    .unwrap(),
            ),
            Expect::Accepted("spiffe://test.postern/via-intermediate"),
        ),
    ];
    let mut checked = 0;
    for (name, issued, expect) in raw {
        let client = raw_client(&url, raw_client_config(&pki, issued.as_ref()), &shutdown).await;
        check(name, client, expect, &mut server, &backend).await;
        checked += 1;
    }

    // Cases that go through the postern client's own flags.
    let flagged: Vec<(&str, Vec<&str>, Expect)> = vec![
        (
            "server name mismatch at the client",
            vec!["--server-name", "db.internal"],
            Expect::Refused("handshake_failed", "aborted the handshake"),
        ),
        (
            "server identity pin mismatch",
            vec!["--server-identity", "dns:db.internal"],
            Expect::Refused("handshake_failed", "aborted the handshake"),
        ),
        (
            "server identity pin match",
            vec![
                "--server-identity",
                "uri:spiffe://nope/*",
                "--server-identity",
                "dns:localhost",
            ],
            Expect::Accepted(CLIENT_ID),
        ),
    ];
    for (name, extra, expect) in flagged {
        let flags = client_flags(&pki, &extra);
        let client = start_client(&url, &strs(&flags), &shutdown).await;
        check(name, client, expect, &mut server, &backend).await;
        checked += 1;
    }
    assert_eq!(checked, 13);
    shutdown.cancel();
}

async fn check(
    name: &str,
    client: std::net::SocketAddr,
    expect: Expect,
    server: &mut Server,
    backend: &TestBackend,
) {
    let before = backend.accepts();
    let probe = format!("probe for {name}");
    match expect {
        Expect::Accepted(id) => {
            let back = round_trip(client, probe.as_bytes()).await.expect(name);
            assert_eq!(back, probe.as_bytes(), "{name}: echo");
            let report = server.report().await;
            assert_eq!(report.outcome, Ok(()), "{name}");
            assert_eq!(report.close, "closed", "{name}");
            assert_eq!(report.identity.expect(name).primary(), id, "{name}");
            assert_eq!(
                backend.accepts(),
                before + 1,
                "{name}: backend dialled once"
            );
            println!("{name:<52} -> accepted as {id}");
        }
        Expect::Refused(label, text) => {
            assert_refused(client).await;
            let report = server.report().await;
            let reason = report.outcome.expect_err(name);
            assert_eq!(report.close, label, "{name}: {reason}");
            assert!(
                reason.contains(text),
                "{name}: reason {reason:?} lacks {text:?}"
            );
            assert!(report.identity.is_none(), "{name}: refused but identified");
            assert_eq!(backend.accepts(), before, "{name}: backend was dialled");
            println!("{name:<52} -> refused: {reason}");
        }
    }
}
