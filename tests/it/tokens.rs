//! Private services: the client sends a Google ID token that a front end
//! acting like Cloud Run's IAM check demands. Tokens come from a fake
//! metadata server or a fake token command, and are cached across tunnels.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::harness::*;
use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn jwt(aud: &str, exp_in_secs: u64, tag: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let b64 = |s: String| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","typ":"JWT"}"#.into()),
        b64(format!(
            r#"{{"aud":"{aud}","exp":{},"tag":"{tag}"}}"#,
            now + exp_in_secs
        )),
        b64("signature".into())
    )
}

/// A private front end (401/403 unless one of `tokens` is presented) in front
/// of a server with a banner backend; returns the front's URL.
async fn private_service(
    pki: &Pki,
    backend: SocketAddr,
    tokens: Vec<String>,
    shutdown: &CancellationToken,
) -> String {
    let (server, _reports) = start_server(backend, &strs(&server_flags(pki)), shutdown).await;
    let port = start_front_with(pki, server, Some(tokens), shutdown)
        .await
        .port();
    format!("https://localhost:{port}/")
}

#[tokio::test]
async fn token_from_a_command_is_fetched_once_for_many_tunnels() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Banner).await;
    let shutdown = CancellationToken::new();
    let token = jwt("https://localhost", 3600, "cmd");
    let url = private_service(&pki, backend.addr, vec![token.clone()], &shutdown).await;
    let calls = pki.dir.path("calls");
    let script = pki.dir.write(
        "token.sh",
        &format!(
            "echo \"$POSTERN_AUDIENCE\" >> '{}'\nprintf '%s' '{token}'\n",
            calls.display()
        ),
    );
    let source = format!("command=sh {script}");
    let client = start_client_trusting_front(&pki, &url, &["--id-token", &source], &shutdown).await;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        tasks.spawn(async move { read_all(client).await });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        assert_eq!(String::from_utf8_lossy(&r.unwrap().unwrap()), BANNER);
        ok += 1;
    }
    assert_eq!(ok, 20);
    let log = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(lines.len(), 1, "token command ran {} times", lines.len());
    // The default audience is the service URL without its path.
    let port = url.trim_end_matches('/').rsplit(':').next().unwrap();
    assert_eq!(lines[0], format!("https://localhost:{port}"));
    assert_eq!(backend.accepts(), 20);
    shutdown.cancel();
}

/// A fake GCE metadata server: checks the flavour header, records the
/// audiences asked for, and hands out the given tokens in turn.
async fn fake_metadata(
    tokens: Vec<String>,
) -> (SocketAddr, Arc<Mutex<Vec<String>>>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let audiences = Arc::new(Mutex::new(Vec::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let (aud, count) = (audiences.clone(), served.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req).to_string();
            let flavoured = text
                .to_ascii_lowercase()
                .contains("metadata-flavor: google");
            let audience = text
                .split("audience=")
                .nth(1)
                .and_then(|s| s.split(['&', ' ']).next())
                .unwrap_or_default()
                .replace("%3A", ":")
                .replace("%2F", "/");
            aud.lock().unwrap().push(audience);
            let n = count.fetch_add(1, Ordering::SeqCst);
            let body = tokens[n.min(tokens.len() - 1)].clone();
            let status = if flavoured { "200 OK" } else { "403 Forbidden" };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (addr, audiences, served)
}

#[tokio::test]
async fn token_from_the_metadata_server_is_refreshed_near_expiry() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Banner).await;
    let shutdown = CancellationToken::new();
    // The first token is inside the refresh margin, so the next tunnel
    // fetches again; the second lasts an hour and is reused.
    let short = jwt("aud", 60, "short");
    let long = jwt("aud", 3600, "long");
    let (meta, audiences, served) = fake_metadata(vec![short.clone(), long.clone()]).await;
    let url = private_service(&pki, backend.addr, vec![short, long], &shutdown).await;
    let source = format!("metadata={meta}");
    let client = start_client_trusting_front(
        &pki,
        &url,
        &[
            "--id-token",
            &source,
            "--audience",
            "https://svc.example.run.app",
        ],
        &shutdown,
    )
    .await;
    for expected_fetches in [1, 2, 2, 2] {
        let got = read_all(client).await.unwrap();
        assert_eq!(String::from_utf8_lossy(&got), BANNER);
        assert_eq!(served.load(Ordering::SeqCst), expected_fetches);
    }
    let audiences = audiences.lock().unwrap().clone();
    assert!(!audiences.is_empty());
    assert!(
        audiences.iter().all(|a| a == "https://svc.example.run.app"),
        "{audiences:?}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn failing_token_command_refuses_the_tunnel_without_hanging() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Banner).await;
    let shutdown = CancellationToken::new();
    let url = private_service(&pki, backend.addr, vec!["never".into()], &shutdown).await;
    let client = start_client_trusting_front(
        &pki,
        &url,
        &["--id-token", "command=echo no credentials >&2; exit 3"],
        &shutdown,
    )
    .await;
    let got = read_all(client).await;
    assert!(
        matches!(&got, Ok(b) if b.is_empty()) || got.is_err(),
        "{got:?}"
    );
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_by_the_front_end() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Banner).await;
    let shutdown = CancellationToken::new();
    let url = private_service(&pki, backend.addr, vec![jwt("a", 3600, "right")], &shutdown).await;
    let wrong = pki.dir.write("wrong-token", &jwt("a", 3600, "wrong"));
    let source = format!("file={wrong}");
    let with_wrong =
        start_client_trusting_front(&pki, &url, &["--id-token", &source], &shutdown).await;
    let without = start_client_trusting_front(&pki, &url, &[], &shutdown).await;
    for client in [with_wrong, without] {
        let got = read_all(client).await;
        assert!(
            matches!(&got, Ok(b) if b.is_empty()) || got.is_err(),
            "{got:?}"
        );
    }
    assert_eq!(backend.accepts(), 0);
    shutdown.cancel();
}
