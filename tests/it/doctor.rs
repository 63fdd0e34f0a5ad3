//! `postern doctor` (the real binary) against a healthy local path and
//! against each kind of misconfiguration it should explain.

use crate::harness::*;
use tokio_util::sync::CancellationToken;

struct Outcome {
    ok: bool,
    stdout: String,
}

async fn doctor(url: &str, flags: &[&str]) -> Outcome {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_postern"));
    cmd.arg("doctor")
        .arg("--url")
        .arg(url)
        .args(flags)
        .kill_on_drop(true);
    let out = tokio::time::timeout(LIMIT, cmd.output())
        .await
        .expect("doctor hung")
        .expect("doctor ran");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    Outcome {
        ok: out.status.success(),
        stdout,
    }
}

/// A server (inner mTLS) behind the TLS front end; returns the front's URL.
async fn service(pki: &Pki, backend: Backend, shutdown: &CancellationToken) -> String {
    let backend = TestBackend::start(backend).await;
    let (server, _reports) = start_server(backend.addr, &strs(&server_flags(pki)), shutdown).await;
    let front = start_front(pki, server, shutdown).await;
    format!("https://localhost:{}/", front.port())
}

fn client_flags(pki: &Pki) -> Vec<String> {
    [
        "--cert",
        "client.pem",
        "--key",
        "client-key.pem",
        "--ca",
        "ca.pem",
        "--tls-ca",
        "ca.pem",
    ]
    .chunks(2)
    .flat_map(|pair| [pair[0].to_owned(), pki.p(pair[1])])
    .collect()
}

#[tokio::test]
async fn healthy_path_passes_every_step_and_names_both_identities() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let url = service(&pki, Backend::Echo, &shutdown).await;
    let flags = client_flags(&pki);
    let mut argv: Vec<&str> = flags.iter().map(String::as_str).collect();
    argv.extend(["--throughput", "4"]);
    let out = doctor(&url, &argv).await;
    assert!(out.ok, "doctor failed on a healthy path");
    for step in [
        "DNS",
        "TCP",
        "TLS",
        "HTTP/2",
        "server",
        "tunnel",
        "mTLS",
        "RTT",
        "resume",
        "throughput",
    ] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.contains("[ok]") && l.contains(step)),
            "step {step} not reported ok"
        );
    }
    assert!(out.stdout.contains(CLIENT_ID), "client identity missing");
    assert!(
        out.stdout.contains("'localhost'"),
        "server identity missing"
    );
    assert!(out.stdout.contains("all checks passed"));
    shutdown.cancel();
}

#[tokio::test]
async fn wrong_path_is_explained() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let url = service(&pki, Backend::Banner, &shutdown).await;
    let flags = client_flags(&pki);
    let argv: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = doctor(&format!("{url}wrong"), &argv).await;
    assert!(!out.ok);
    assert!(
        out.stdout.contains("[FAIL] tunnel") && out.stdout.contains("404"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("--path"));
    shutdown.cancel();
}

#[tokio::test]
async fn untrusted_front_end_certificate_is_explained() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let url = service(&pki, Backend::Banner, &shutdown).await;
    let flags = client_flags(&pki);
    // Drop --tls-ca: the system roots do not know the test CA.
    let argv: Vec<&str> = flags[..6].iter().map(String::as_str).collect();
    let out = doctor(&url, &argv).await;
    assert!(!out.ok);
    assert!(
        out.stdout.contains("[FAIL] TLS") && out.stdout.contains("--tls-ca"),
        "{}",
        out.stdout
    );
    shutdown.cancel();
}

#[tokio::test]
async fn refused_client_certificate_is_explained() {
    let pki = Pki::new();
    let other = pki::Ca::new("Other CA", pki::KeyAlg::EcdsaP256).unwrap();
    let stranger = other.issue(&pki::LeafSpec::client(&["stranger"])).unwrap();
    write_pair(&pki.dir, "stranger", &stranger);
    let shutdown = CancellationToken::new();
    let url = service(&pki, Backend::Echo, &shutdown).await;
    let mut flags = client_flags(&pki);
    flags[1] = pki.p("stranger.pem");
    flags[3] = pki.p("stranger-key.pem");
    let argv: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = doctor(&url, &argv).await;
    assert!(!out.ok);
    assert!(
        out.stdout.contains("[FAIL] mTLS") && out.stdout.contains("--client-ca"),
        "{}",
        out.stdout
    );
    shutdown.cancel();
}

#[tokio::test]
async fn front_end_that_cannot_speak_h2c_to_the_container_is_explained() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    // The "container" speaks a plain TCP protocol, as a server without
    // --use-http2 would look to an h2c front end.
    let not_h2c = TestBackend::start(Backend::Banner).await;
    let front = start_front(&pki, not_h2c.addr, &shutdown).await;
    let flags = client_flags(&pki);
    let argv: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = doctor(&format!("https://localhost:{}/", front.port()), &argv).await;
    assert!(!out.ok);
    assert!(
        out.stdout.contains("[FAIL]") && out.stdout.contains("--use-http2"),
        "{}",
        out.stdout
    );
    shutdown.cancel();
}

#[tokio::test]
async fn through_caddy_healthy_and_without_h2c_upstream() {
    if !caddy::installed("doctor through_caddy") {
        return;
    }
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let (server, _reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let flags = client_flags(&pki);
    let argv: Vec<&str> = flags.iter().map(String::as_str).collect();
    let healthy = caddy::Caddy::start(&pki, server).await;
    let out = doctor(&healthy.url(), &argv).await;
    assert!(out.ok, "doctor failed through Caddy:\n{}", healthy.log());
    assert!(out.stdout.contains("[ok]   mTLS") && out.stdout.contains(CLIENT_ID));
    // The session moved to a second request through Caddy and carried data.
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("[ok]   resume") && l.contains("answered across it")),
        "{}",
        out.stdout
    );
    // Caddy proxying h2c to something that is not an HTTP/2 server: what a
    // service deployed without --use-http2 looks like from outside.
    let not_h2c = TestBackend::start(Backend::Banner).await;
    let broken = caddy::Caddy::start(&pki, not_h2c.addr).await;
    let out = doctor(&broken.url(), &argv).await;
    assert!(!out.ok);
    assert!(
        out.stdout.contains("[FAIL] server") && out.stdout.contains("--use-http2"),
        "{}",
        out.stdout
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_server_without_resume_is_reported_and_not_a_failure() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut flags = server_flags(&pki);
    flags.push("--no-resume".into());
    let (server, _reports) = start_server(backend.addr, &strs(&flags), &shutdown).await;
    let front = start_front(&pki, server, &shutdown).await;
    let url = format!("https://localhost:{}/", front.port());
    let flags = client_flags(&pki);
    let argv: Vec<&str> = flags.iter().map(String::as_str).collect();
    let out = doctor(&url, &argv).await;
    assert!(out.ok, "{}", out.stdout);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("[skip] resume") && l.contains("does not offer resume")),
        "{}",
        out.stdout
    );
}
