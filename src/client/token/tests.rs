#![allow(clippy::disallowed_methods)] // test fixtures are written before anything runs
use super::cache::*;
use super::fetch::*;
use super::metadata::*;
use super::source::default_metadata_host;
use super::*;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const AUD: &str = "https://svc-xyz.a.run.app";

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A JWT-shaped token (unsigned; nobody verifies it here).
fn jwt(exp: Option<i64>, tag: &str) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let mut claims = serde_json::json!({ "aud": AUD, "sub": tag });
    if let Some(exp) = exp {
        claims["exp"] = exp.into();
    }
    format!(
        "{}.{}.{}",
        b64(br#"{"alg":"RS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes()),
        b64(format!("signature-{tag}").as_bytes())
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .unwrap()
        .into_owned()
}

enum Reply {
    Token(String),
    ChunkedToken(String),
    Status(u16, &'static str),
    Hang,
}

/// A fake metadata server: checks the flavor header, path and audience
/// like the real one, then answers request `n` with `reply(n)`.
async fn fake_metadata(
    reply: impl Fn(usize) -> Reply + Send + Sync + 'static,
) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let reply = Arc::new(reply);
    let counter = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let reply = reply.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while find(&buf, b"\r\n\r\n").is_none() {
                    let got = sock.read(&mut chunk).await.unwrap();
                    if got == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..got]);
                }
                let req = String::from_utf8(buf).unwrap();
                let target = req.split_whitespace().nth(1).unwrap().to_owned();
                let flavor = req.lines().any(|l| {
                    l.split_once(':').is_some_and(|(k, v)| {
                        k.eq_ignore_ascii_case("metadata-flavor") && v.trim() == "Google"
                    })
                });
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let audience = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("audience="))
                    .map(percent_decode);
                let reply = if !flavor {
                    Reply::Status(403, "Missing Metadata-Flavor:Google header.")
                } else if path != "/computeMetadata/v1/instance/service-accounts/default/identity" {
                    Reply::Status(404, "not found")
                } else if audience.as_deref() != Some(AUD) || !query.contains("format=full") {
                    Reply::Status(400, "bad audience")
                } else {
                    reply(n)
                };
                let response = match reply {
                    Reply::Token(t) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{t}",
                        t.len()
                    ),
                    Reply::ChunkedToken(t) => {
                        let (a, b) = t.split_at(t.len() / 2);
                        format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                            a.len(),
                            b.len()
                        )
                    }
                    Reply::Status(code, msg) => format!(
                        "HTTP/1.1 {code} Nope\r\nContent-Length: {}\r\n\r\n{msg}\n",
                        msg.len() + 1
                    ),
                    Reply::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                };
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, count)
}

fn metadata(host: &str) -> IdTokens {
    IdTokens::new(
        TokenSource::Metadata {
            host: host.to_owned(),
        },
        AUD.to_owned(),
    )
}

fn assert_no_token(text: &str, token: &str) {
    assert!(!text.contains(token), "token leaked into: {text}");
}

#[tokio::test]
async fn metadata_token_is_bearer_and_sensitive() {
    let tok = jwt(Some(unix_now() + 3600), "a");
    let t2 = tok.clone();
    let (host, count) = fake_metadata(move |_| Reply::Token(t2.clone())).await;
    let tokens = metadata(&host);
    let value = tokens.bearer().await.unwrap();
    assert_eq!(value.to_str().unwrap(), format!("Bearer {tok}"));
    assert!(value.is_sensitive());
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.fetches(), 1);
    assert_no_token(&format!("{tokens:?}"), &tok);
}

#[tokio::test]
async fn metadata_chunked_response() {
    let tok = jwt(Some(unix_now() + 3600), "chunked");
    let t2 = tok.clone();
    let (host, _) = fake_metadata(move |_| Reply::ChunkedToken(t2.clone())).await;
    let value = metadata(&host).bearer().await.unwrap();
    assert_eq!(value.to_str().unwrap(), format!("Bearer {tok}"));
}

#[tokio::test]
async fn fifty_concurrent_callers_cause_one_fetch() {
    let tok = jwt(Some(unix_now() + 3600), "a");
    let t2 = tok.clone();
    let (host, count) = fake_metadata(move |_| Reply::Token(t2.clone())).await;
    let tokens = metadata(&host);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move { tokens.bearer().await }));
    }
    for task in tasks {
        let value = task.await.unwrap().unwrap();
        assert_eq!(value.to_str().unwrap(), format!("Bearer {tok}"));
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert_eq!(tokens.fetches(), 1);
}

#[tokio::test]
async fn token_inside_margin_is_refetched_once() {
    let first = jwt(Some(unix_now() + 30), "short");
    let second = jwt(Some(unix_now() + 3600), "long");
    let (f, s) = (first.clone(), second.clone());
    let (host, count) =
        fake_metadata(move |n| Reply::Token(if n == 0 { f.clone() } else { s.clone() })).await;
    let tokens = metadata(&host);
    assert_eq!(
        tokens.bearer().await.unwrap(),
        format!("Bearer {first}").as_str()
    );
    assert_eq!(
        tokens.bearer().await.unwrap(),
        format!("Bearer {second}").as_str()
    );
    assert_eq!(
        tokens.bearer().await.unwrap(),
        format!("Bearer {second}").as_str()
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert_eq!(tokens.fetches(), 2);
}

#[tokio::test]
async fn failed_refresh_falls_back_to_unexpired_token() {
    let first = jwt(Some(unix_now() + 120), "short");
    let f = first.clone();
    let (host, count) = fake_metadata(move |n| {
        if n == 0 {
            Reply::Token(f.clone())
        } else {
            Reply::Status(500, "internal error")
        }
    })
    .await;
    let tokens = metadata(&host);
    let want = format!("Bearer {first}");
    assert_eq!(tokens.bearer().await.unwrap(), want.as_str());
    // Inside the margin: refresh is tried, fails, cached token is used.
    assert_eq!(tokens.bearer().await.unwrap(), want.as_str());
    // And the source is left alone for a while.
    assert_eq!(tokens.bearer().await.unwrap(), want.as_str());
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn http_error_status_is_reported() {
    let (host, _) =
        fake_metadata(|_| Reply::Status(403, "Missing Metadata-Flavor:Google header.")).await;
    let err = metadata(&host).bearer().await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(
        err,
        TokenError::MetadataStatus { status: 403, .. }
    ));
    assert!(msg.contains("403"), "{msg}");
    assert!(msg.contains("Missing Metadata-Flavor"), "{msg}");
}

#[tokio::test]
async fn fake_server_rejects_requests_without_flavor() {
    // Keeps the fake honest: the 403 path is what a client without the
    // header would see, and our client does send it (other tests pass).
    let (host, _) = fake_metadata(|_| Reply::Token("x".into())).await;
    let (status, body) = http_get(&host, "/computeMetadata/v1/", &[]).await.unwrap();
    assert_eq!(status, 403);
    assert!(String::from_utf8(body).unwrap().contains("Metadata-Flavor"));
}

#[tokio::test]
async fn concurrent_callers_share_a_failure() {
    let (host, count) = fake_metadata(|_| Reply::Status(500, "down")).await;
    let tokens = metadata(&host);
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let tokens = tokens.clone();
        tasks.push(tokio::spawn(async move { tokens.bearer().await }));
    }
    for task in tasks {
        assert!(task.await.unwrap().is_err());
    }
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn metadata_rejects_opaque_token() {
    let (host, _) = fake_metadata(|_| Reply::Token("not-a-jwt-secret".into())).await;
    let err = metadata(&host).bearer().await.unwrap_err();
    assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    assert_no_token(&err.to_string(), "not-a-jwt-secret");
    assert_no_token(&format!("{err:?}"), "not-a-jwt-secret");
}

#[tokio::test]
async fn expired_token_is_rejected() {
    let tok = jwt(Some(unix_now() - 100), "old");
    let t2 = tok.clone();
    let (host, _) = fake_metadata(move |_| Reply::Token(t2.clone())).await;
    let err = metadata(&host).bearer().await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert_no_token(&err.to_string(), &tok);
}

#[tokio::test]
async fn hung_metadata_server_times_out() {
    let (host, _) = fake_metadata(|_| Reply::Hang).await;
    let tokens = metadata(&host).with_timeout(Duration::from_millis(200));
    let started = std::time::Instant::now();
    let err = tokens.bearer().await.unwrap_err();
    assert!(matches!(err, TokenError::Timeout { .. }), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn unreachable_metadata_server_is_an_error() {
    // Bind then drop to get a port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = metadata(&format!("127.0.0.1:{port}"))
        .bearer()
        .await
        .unwrap_err();
    assert!(matches!(err, TokenError::Metadata { .. }), "{err}");
    assert!(err.to_string().contains("connect"), "{err}");
}

fn command(cmd: &str) -> IdTokens {
    IdTokens::new(TokenSource::Command(cmd.to_owned()), AUD.to_owned())
}

#[tokio::test]
async fn command_token() {
    let tokens = command("echo '  opaque-token-123  '");
    assert_eq!(tokens.bearer().await.unwrap(), "Bearer opaque-token-123");
    // Opaque tokens are cached for a while.
    assert_eq!(tokens.bearer().await.unwrap(), "Bearer opaque-token-123");
    assert_eq!(tokens.fetches(), 1);
}

#[tokio::test]
async fn command_sees_audience() {
    let tokens = command("printf 'tok-%s' \"$POSTERN_AUDIENCE\"");
    assert_eq!(
        tokens.bearer().await.unwrap(),
        format!("Bearer tok-{AUD}").as_str()
    );
}

#[tokio::test]
async fn failing_command_reports_status_and_stderr() {
    let tokens = command("echo SECRET-TOKEN-XYZ; echo boom >&2; echo more >&2; exit 1");
    let err = tokens.bearer().await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("exit status: 1"), "{msg}");
    assert!(msg.contains("boom"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    assert_no_token(&msg, "SECRET-TOKEN-XYZ");
    assert_no_token(&format!("{err:?}"), "SECRET-TOKEN-XYZ");
}

#[tokio::test]
async fn empty_command_output_is_malformed() {
    let err = command("true").bearer().await.unwrap_err();
    assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
}

#[tokio::test]
async fn hung_command_times_out() {
    let tokens = command("sleep 30").with_timeout(Duration::from_millis(200));
    let err = tokens.bearer().await.unwrap_err();
    assert!(matches!(err, TokenError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn command_returning_the_same_token_is_not_rerun_at_once() {
    // gcloud hands back its cached token until its own threshold; we
    // must not rerun it for every tunnel meanwhile.
    let tok = jwt(Some(unix_now() + 120), "same");
    let tokens = command(&format!("echo {tok}"));
    for _ in 0..5 {
        assert_eq!(
            tokens.bearer().await.unwrap(),
            format!("Bearer {tok}").as_str()
        );
    }
    assert_eq!(tokens.fetches(), 2);
}

#[tokio::test]
async fn file_token_is_reread_on_refresh() {
    let dir = std::env::temp_dir().join(format!("postern-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("token");
    // exp inside the margin, so every call re-reads the file.
    let first = jwt(Some(unix_now() + 60), "one");
    std::fs::write(&path, format!("{first}\n")).unwrap();
    let tokens = IdTokens::new(TokenSource::File(path.clone()), AUD.to_owned());
    assert_eq!(
        tokens.bearer().await.unwrap(),
        format!("Bearer {first}").as_str()
    );
    let second = jwt(Some(unix_now() + 3600), "two");
    std::fs::write(&path, &second).unwrap();
    assert_eq!(
        tokens.bearer().await.unwrap(),
        format!("Bearer {second}").as_str()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn missing_file_names_the_path() {
    let path = PathBuf::from("/nonexistent/postern/token");
    let err = IdTokens::new(TokenSource::File(path), AUD.to_owned())
        .bearer()
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/postern/token"),
        "{err}"
    );
}

#[tokio::test]
async fn static_token_is_fetched_once() {
    let tokens = IdTokens::new(TokenSource::Static("static-secret".into()), AUD.to_owned());
    for _ in 0..3 {
        assert_eq!(tokens.bearer().await.unwrap(), "Bearer static-secret");
    }
    assert_eq!(tokens.fetches(), 1);
    assert_no_token(&format!("{tokens:?}"), "static-secret");
}

#[tokio::test]
async fn header_unsafe_token_is_malformed() {
    let tokens = IdTokens::new(TokenSource::Static("bad\u{7}tok".into()), AUD.to_owned());
    let err = tokens.bearer().await.unwrap_err();
    assert!(matches!(err, TokenError::Malformed { .. }), "{err}");
    assert_no_token(&format!("{err} {err:?}"), "bad\u{7}tok");
}

#[test]
fn parse_sources() {
    let expected_default = default_metadata_host();
    match "metadata".parse::<TokenSource>().unwrap() {
        TokenSource::Metadata { host } => assert_eq!(host, expected_default),
        other => panic!("{other:?}"),
    }
    match "metadata=127.0.0.1:8080".parse::<TokenSource>().unwrap() {
        TokenSource::Metadata { host } => assert_eq!(host, "127.0.0.1:8080"),
        other => panic!("{other:?}"),
    }
    match "command=gcloud auth print-identity-token --audiences=x"
        .parse::<TokenSource>()
        .unwrap()
    {
        TokenSource::Command(c) => {
            assert_eq!(c, "gcloud auth print-identity-token --audiences=x")
        }
        other => panic!("{other:?}"),
    }
    match "file=/run/secrets/token".parse::<TokenSource>().unwrap() {
        TokenSource::File(p) => assert_eq!(p, PathBuf::from("/run/secrets/token")),
        other => panic!("{other:?}"),
    }
    // PATH is always set; avoids set_var racing with other tests.
    let path_value = std::env::var("PATH").unwrap();
    match "env=PATH".parse::<TokenSource>().unwrap() {
        TokenSource::Static(t) => assert_eq!(t, path_value.trim()),
        other => panic!("{other:?}"),
    }
}

#[test]
fn parse_errors() {
    let err = "env=POSTERN_TEST_SURELY_UNSET_VAR_81723"
        .parse::<TokenSource>()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("POSTERN_TEST_SURELY_UNSET_VAR_81723"),
        "{err}"
    );
    assert!(err.to_string().contains("not set"), "{err}");

    for bad in [
        "bogus",
        "vault=x",
        "metadata=",
        "command=",
        "file=",
        "env=",
        "",
    ] {
        let err = bad.parse::<TokenSource>().unwrap_err();
        assert!(matches!(err, TokenError::Source(_)), "{bad}: {err}");
        assert!(!err.to_string().contains('\n'));
    }
    // A pasted token is not echoed back.
    let pasted = jwt(Some(1), "pasted");
    assert_no_token(
        &pasted.parse::<TokenSource>().unwrap_err().to_string(),
        &pasted,
    );
}

#[test]
fn static_source_debug_is_redacted() {
    let src = TokenSource::Static("hunter2-token".into());
    assert_no_token(&format!("{src:?}"), "hunter2-token");
}

#[test]
fn jwt_exp_parsing() {
    assert_eq!(jwt_exp(&jwt(Some(1234), "x")), Some(Some(1234)));
    assert_eq!(jwt_exp(&jwt(None, "x")), Some(None));
    assert_eq!(jwt_exp("opaque"), None);
    assert_eq!(jwt_exp("a.b"), None);
    assert_eq!(jwt_exp("a.!!!.c"), None);
    assert_eq!(jwt_exp("a.b.c.d"), None);
}

#[tokio::test]
async fn jwt_without_exp_from_command_is_cached() {
    let tok = jwt(None, "noexp");
    let tokens = command(&format!("echo {tok}"));
    tokens.bearer().await.unwrap();
    tokens.bearer().await.unwrap();
    assert_eq!(tokens.fetches(), 1);
}

#[test]
fn http_helpers() {
    assert_eq!(
        with_default_port("metadata.google.internal"),
        "metadata.google.internal:80"
    );
    assert_eq!(with_default_port("127.0.0.1:8080"), "127.0.0.1:8080");
    assert_eq!(with_default_port("[::1]"), "[::1]:80");
    assert_eq!(with_default_port("[::1]:9"), "[::1]:9");
    assert_eq!(with_default_port("::1"), "[::1]:80");
    assert_eq!(
        percent_encode("https://a.b/c?d=e f"),
        "https%3A%2F%2Fa.b%2Fc%3Fd%3De%20f"
    );
    assert_eq!(
        parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").unwrap(),
        (200, b"hi".to_vec())
    );
    assert_eq!(
        parse_response(b"HTTP/1.0 200 OK\r\n\r\nrest").unwrap(),
        (200, b"rest".to_vec())
    );
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nhi").is_err());
    assert!(parse_response(b"garbage\r\n\r\n").is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    assert!(dechunk(b"zz\r\n").is_err());
    assert!(dechunk(b"5\r\nab").is_err());
}
