//! The `postern` binary as a user runs it: the demo, `certs`, several
//! forwards from one client, `--stdio`, and one-line errors for bad input.

use std::process::Stdio;

use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

fn postern() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
    cmd.kill_on_drop(true).env("POSTERN_LOG", "warn");
    cmd
}

async fn run(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(LIMIT, postern().args(args).output())
        .await
        .expect("postern hung")
        .expect("postern ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn demo_prints_the_banner_and_every_hop() {
    let (ok, stdout, stderr) = run(&["demo"]).await;
    assert!(ok, "demo failed: {stderr}");
    assert!(stdout.contains(BANNER), "banner missing:\n{stdout}");
    for hop in [
        "certs", "backend", "server", "front", "client", "app", "identity",
    ] {
        assert!(
            stdout.lines().any(|l| l.trim_start().starts_with(hop)),
            "hop {hop} not printed"
        );
    }
    assert!(stdout.contains(demo::CLIENT_ID));
}

#[tokio::test]
async fn certs_writes_a_usable_set_and_refuses_to_overwrite() {
    let dir = TempDir::new("cli-certs");
    let out = dir.path("set").display().to_string();
    let args = [
        "certs",
        "--out",
        &out,
        "--server-name",
        "localhost",
        "--client-name",
        "spiffe://cli.test/app",
    ];
    let (ok, stdout, stderr) = run(&args).await;
    assert!(ok, "{stderr}");
    assert!(!stdout.contains("PRIVATE KEY"), "key material printed");
    let (again, _, err) = run(&args).await;
    assert!(!again);
    assert!(err.contains("--force"), "{err}");
    // The issued set drives a real tunnel.
    let (got, report) = banner_with_files(&dir.path("set")).await;
    assert_eq!(got, BANNER.as_bytes());
    assert_eq!(
        report.identity.unwrap().uris,
        vec!["spiffe://cli.test/app".to_string()]
    );
}

#[tokio::test]
async fn one_client_process_serves_several_forwards_and_stdio() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let banner = TestBackend::start(Backend::Banner).await;
    let echo = TestBackend::start(Backend::Echo).await;
    let flags = [
        "--cert",
        &pki.p("server.pem"),
        "--key",
        &pki.p("server-key.pem"),
        "--client-ca",
        &pki.p("ca.pem"),
    ];
    let (s1, _r1) = start_server(banner.addr, &flags, &shutdown).await;
    let (s2, _r2) = start_server(echo.addr, &flags, &shutdown).await;
    let (l1, l2) = (dead_addr().await, dead_addr().await);
    let f1 = format!("{l1}=http://127.0.0.1:{}/", s1.port());
    let f2 = format!("{l2}=http://127.0.0.1:{}/", s2.port());
    let (cert, key, ca) = (
        pki.p("client.pem"),
        pki.p("client-key.pem"),
        pki.p("ca.pem"),
    );
    let common = [
        "--cert",
        &cert,
        "--key",
        &key,
        "--ca",
        &ca,
        "--server-name",
        "localhost",
    ];
    let mut child = postern()
        .arg("client")
        .args(["--forward", &f1, "--forward", &f2])
        .args(common)
        .spawn()
        .unwrap();
    // Wait for both listeners by retrying the connect (bounded).
    let got = retry_until_ok(|| read_all(l1)).await;
    assert_eq!(got, BANNER.as_bytes());
    let back = retry_until_ok(|| round_trip(l2, b"second forward")).await;
    assert_eq!(back, b"second forward");
    child.kill().await.unwrap();

    // --stdio: the tunnel is this process's stdin/stdout, as for ssh ProxyCommand.
    let url = format!("http://127.0.0.1:{}/", s2.port());
    let mut child = postern()
        .args(["client", "--stdio", "--url", &url])
        .args(common)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let data = random_bytes(200_000, 9);
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            stdin.write_all(&data).await.unwrap();
            drop(stdin);
        })
    };
    let mut back = Vec::new();
    tokio::time::timeout(LIMIT, stdout.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    writer.await.unwrap();
    assert_eq!(sha256(&back), sha256(&data));
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "stdio client exited with {status}");
    shutdown.cancel();
}

async fn retry_until_ok<F, Fut>(mut attempt: F) -> Vec<u8>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<Vec<u8>>>,
{
    for _ in 0..200 {
        if let Ok(bytes) = attempt().await {
            if !bytes.is_empty() {
                return bytes;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("forward never became ready");
}

#[tokio::test]
async fn bad_input_gets_one_line_errors_naming_the_culprit() {
    let pki = Pki::new();
    let garbage = pki.dir.write("garbage.pem", "not a certificate\n");
    let other = pki::Ca::new("Other", pki::KeyAlg::EcdsaP256).unwrap();
    let stray = other.issue(&pki::LeafSpec::server(&["localhost"])).unwrap();
    let stray_key = pki.dir.write("stray-key.pem", &stray.key_pem);
    let missing = pki.p("missing.pem");
    let (server, key, ca) = (
        pki.p("server.pem"),
        pki.p("server-key.pem"),
        pki.p("ca.pem"),
    );
    // Each file error names the flag that gave the file.
    let (cert_missing, ca_garbage, client_ca_missing) = (
        format!("--cert {missing}"),
        format!("--client-ca {garbage}"),
        format!("--ca {missing}"),
    );
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "server",
                "--backend",
                "127.0.0.1:1",
                "--cert",
                &missing,
                "--key",
                &key,
                "--client-ca",
                &ca,
            ],
            &cert_missing,
        ),
        (
            vec![
                "client",
                "--url",
                "http://127.0.0.1:1/",
                "--listen",
                "127.0.0.1:0",
                "--cert",
                &server,
                "--key",
                &key,
                "--ca",
                &missing,
            ],
            &client_ca_missing,
        ),
        (
            vec![
                "server",
                "--backend",
                "127.0.0.1:1",
                "--cert",
                &garbage,
                "--key",
                &key,
                "--client-ca",
                &ca,
            ],
            "garbage.pem",
        ),
        (
            vec![
                "server",
                "--backend",
                "127.0.0.1:1",
                "--cert",
                &server,
                "--key",
                &stray_key,
                "--client-ca",
                &ca,
            ],
            "does not match",
        ),
        (
            vec![
                "server",
                "--backend",
                "127.0.0.1:1",
                "--cert",
                &server,
                "--key",
                &key,
                "--client-ca",
                &garbage,
            ],
            &ca_garbage,
        ),
        (
            vec![
                "server",
                "--backend",
                "127.0.0.1:1",
                "--no-inner-tls",
                "--allow",
                "spiffe://x/*/y",
            ],
            "--allow",
        ),
        (
            vec!["server", "--backend", "builtin:nope", "--no-inner-tls"],
            "builtin:nope",
        ),
        (
            vec![
                "server",
                "--backend",
                "127.0.0.1:1",
                "--no-inner-tls",
                "--workers",
                "0",
            ],
            "--workers",
        ),
        (
            vec![
                "client",
                "--url",
                "ftp://x",
                "--listen",
                "127.0.0.1:0",
                "--no-inner-tls",
            ],
            "--url",
        ),
        (
            vec![
                "client",
                "--url",
                "https://x/",
                "--listen",
                "127.0.0.1:0",
                "--no-inner-tls",
                "--header",
                "no colon",
            ],
            "--header",
        ),
        (
            vec![
                "client",
                "--url",
                "https://x/",
                "--listen",
                "127.0.0.1:0",
                "--no-inner-tls",
                "--id-token",
                "env=POSTERN_TEST_UNSET_VAR",
            ],
            "POSTERN_TEST_UNSET_VAR",
        ),
        (vec!["server", "--bogus"], "--bogus"),
    ];
    assert!(!cases.is_empty());
    for (args, culprit) in &cases {
        let (ok, _, stderr) = run(args).await;
        assert!(!ok, "{args:?} succeeded");
        let first = stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_default();
        assert!(
            first.contains(culprit),
            "{args:?}: error does not name {culprit:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    }
}
