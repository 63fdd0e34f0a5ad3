//! Operations: logs Cloud Logging understands, the client draining on
//! SIGTERM, and ID tokens from service account keys and impersonation. The
//! real binary runs as a child process where its process-wide behaviour
//! (log format, signals, exit status) is what is tested.

use std::net::SocketAddr;

use crate::harness::caddy::free_port;
use crate::harness::child::{json_lines, Launch, Proc};
use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn server_args(pki: &Pki, port: u16, backend: SocketAddr) -> Vec<String> {
    s(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--backend",
        &backend.to_string(),
        "--cert",
        &pki.p("server.pem"),
        "--key",
        &pki.p("server-key.pem"),
        "--client-ca",
        &pki.p("ca.pem"),
    ])
}

fn client_args(pki: &Pki, port: u16, url: &str, extra: &[&str]) -> Vec<String> {
    let mut args = s(&[
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--url",
        url,
        "--cert",
        &pki.p("client.pem"),
        "--key",
        &pki.p("client-key.pem"),
        "--ca",
        &pki.p("ca.pem"),
        "--server-name",
        "localhost",
    ]);
    args.extend(s(extra));
    args
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// On Cloud Run (`K_SERVICE` set) the server logs JSON without being asked;
/// every line carries `severity` and `message`, and the lines of a tunnel
/// whose request carried `X-Cloud-Trace-Context` carry its trace under the
/// project's name.
#[tokio::test]
async fn json_logs_carry_severity_message_and_the_tunnels_trace() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let port = free_port().await;
    let server = Launch::new("server", &strs(&server_args(&pki, port, backend.addr)))
        .own_log_format()
        .env("K_SERVICE", "svc")
        .env("GOOGLE_CLOUD_PROJECT", "test-proj")
        .start_on(port)
        .await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    let trace_header = format!("X-Cloud-Trace-Context: {TRACE}/123;o=1");
    let flags = client_flags(&pki, &["--header", &trace_header]);
    let flags = strs(&flags);
    let traced = start_client(&url, &flags, &shutdown).await;
    assert_eq!(
        round_trip(traced, b"traced").await.expect("tunnel"),
        b"traced"
    );
    // No inner TLS against a server that wants it: refused, logged as a warning.
    let plain = start_client(&url, &["--no-inner-tls"], &shutdown).await;
    let _ = round_trip(plain, b"refused").await;
    let ended = |lines: &[serde_json::Value]| {
        lines
            .iter()
            .filter(|l| l["message"] == "tunnel ended")
            .count()
    };
    let both = poll(|| {
        let n = ended(&server.json_lines());
        async move { n >= 2 }
    });
    assert!(
        both.await,
        "two tunnel lines never came:\n{}",
        server.log_text()
    );
    server.sigterm();
    let (status, log) = server.exit(LIMIT).await;
    assert!(status.success(), "{log}");

    let lines = json_lines(&log);
    assert!(!lines.is_empty());
    for line in &lines {
        let severity = line["severity"].as_str().unwrap_or_default();
        assert!(
            ["DEBUG", "INFO", "WARNING", "ERROR"].contains(&severity),
            "bad severity in {line}"
        );
        assert!(line["message"].is_string(), "no message in {line}");
    }
    let listening = lines
        .iter()
        .find(|l| l["message"] == "server listening")
        .expect("a listening line");
    assert_eq!(listening["severity"], "INFO");
    let tunnels: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "tunnel ended")
        .collect();
    let ok = tunnels
        .iter()
        .find(|l| l["close"] == "closed")
        .expect("the traced tunnel's line");
    assert_eq!(ok["severity"], "INFO");
    assert_eq!(
        ok["logging.googleapis.com/trace"],
        format!("projects/test-proj/traces/{TRACE}")
    );
    assert_eq!(ok["identity"], CLIENT_ID, "span and event fields kept");
    let refused = tunnels
        .iter()
        .find(|l| l["close"] != "closed")
        .expect("the refused tunnel's line");
    assert_eq!(refused["severity"], "WARNING");
    assert!(
        refused.get("logging.googleapis.com/trace").is_none(),
        "a tunnel without the header got a trace: {refused}"
    );
    shutdown.cancel();
}

/// `traceparent` works as well; without a project the bare ID is logged.
#[tokio::test]
async fn traceparent_without_a_project_logs_the_bare_trace_id() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let port = free_port().await;
    let args = server_args(&pki, port, backend.addr);
    let server = Launch::new("server", &strs(&args)).start_on(port).await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    let header = format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01");
    let flags = client_flags(&pki, &["--header", &header]);
    let flags = strs(&flags);
    let client = start_client(&url, &flags, &shutdown).await;
    assert_eq!(round_trip(client, b"w3c").await.expect("tunnel"), b"w3c");
    let found = poll(|| {
        let hit = server
            .json_lines()
            .iter()
            .any(|l| l["message"] == "tunnel ended");
        async move { hit }
    });
    assert!(found.await, "no tunnel line:\n{}", server.log_text());
    server.sigterm();
    let (status, log) = server.exit(LIMIT).await;
    assert!(status.success(), "{log}");
    let lines = json_lines(&log);
    let line = lines
        .iter()
        .find(|l| l["message"] == "tunnel ended")
        .expect("tunnel line");
    assert_eq!(line["logging.googleapis.com/trace"], TRACE);
    shutdown.cancel();
}

/// Human logs written to a pipe carry no ANSI escape codes.
#[tokio::test]
async fn human_logs_to_a_pipe_have_no_escape_codes() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let port = free_port().await;
    let args = server_args(&pki, port, backend.addr);
    let server = Launch::new("server", &strs(&args))
        .own_log_format()
        .start_on(port)
        .await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    // A refused tunnel: a WARN line with fields, the most decorated kind.
    let plain = start_client(&url, &["--no-inner-tls"], &shutdown).await;
    let _ = round_trip(plain, b"refused").await;
    let warned = poll(|| {
        let hit = server.log_text().contains("tunnel ended");
        async move { hit }
    });
    assert!(warned.await, "no tunnel line:\n{}", server.log_text());
    server.sigterm();
    let (status, log) = server.exit(LIMIT).await;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("WARN") && log.contains("server listening"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "escape codes in a pipe:\n{log:?}");
    shutdown.cancel();
}

/// Starts an in-process server and `postern client` in front of it.
async fn client_process(
    pki: &Pki,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> (Proc, u16, TestBackend) {
    let backend = TestBackend::start(Backend::Echo).await;
    let flags = server_flags(pki);
    let flags = strs(&flags);
    let (server, _reports) = start_server(backend.addr, &flags, shutdown).await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let port = free_port().await;
    let args = client_args(pki, port, &url, extra);
    let client = Launch::new("client", &strs(&args)).start_on(port).await;
    (client, port, backend)
}

/// SIGTERM: the listener closes, an open tunnel keeps working until the
/// application ends it, then the client exits 0.
#[tokio::test]
async fn client_sigterm_drains_open_tunnels_refuses_new_ones_and_exits_zero() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let (mut client, port, backend) = client_process(&pki, &[], &shutdown).await;
    let mut open = open_echo(local(port), 1).await;
    client.sigterm();
    let closed = poll(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_err() });
    assert!(closed.await, "client kept listening after SIGTERM");
    let accepted = backend.accepts();
    echo(&mut open, 2).await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "a new local connection was accepted while draining"
    );
    assert!(
        !client.exited(),
        "the client exited with a tunnel still open:\n{}",
        client.log_text()
    );
    open.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, open.read_to_end(&mut rest))
        .await
        .expect("tunnel did not end")
        .expect("orderly end");
    assert!(rest.is_empty());
    let (status, log) = client.exit(LIMIT).await;
    assert!(status.success(), "exit {status}:\n{log}");
    assert_eq!(
        backend.accepts(),
        accepted,
        "no tunnel opened after SIGTERM"
    );
    shutdown.cancel();
}

/// A tunnel still open when --drain-timeout runs out is closed, and the
/// exit status is still 0.
#[tokio::test]
async fn client_tunnel_outliving_the_drain_is_closed_and_the_exit_is_zero() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let (client, port, _backend) =
        client_process(&pki, &["--drain-timeout", "500ms"], &shutdown).await;
    let mut stuck = open_echo(local(port), 3).await;
    client.sigterm();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(LIMIT, stuck.read(&mut buf))
        .await
        .expect("the stuck tunnel was never closed");
    assert!(matches!(r, Ok(0) | Err(_)), "expected a close, got {r:?}");
    let (status, log) = client.exit(LIMIT).await;
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("drain timeout"),
        "no drain timeout logged:\n{log}"
    );
}

// ---- ID tokens from service account keys and impersonation ----

mod google {
    //! A stand-in for Google's token endpoint and IAM Credentials on
    //! loopback: real HTTP/1.1, assertions verified with the key's public
    //! half, every request recorded.

    use std::sync::{Arc, Mutex};
    use std::time::{SystemTime, UNIX_EPOCH};

    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use rustls::SignatureScheme;
    use serde_json::{json, Value};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use crate::harness::TempDir;

    pub(super) const EMAIL: &str = "caller@proj.iam.gserviceaccount.com";

    /// One request the stand-in answered.
    #[derive(Debug, Clone)]
    pub(super) struct Seen {
        pub path: String,
        /// The verified assertion's claims (token endpoint), or the JSON body (IAM).
        pub claims: Value,
        pub authorization: Option<String>,
    }

    pub(super) struct Google {
        pub url: String,
        pub seen: Arc<Mutex<Vec<Seen>>>,
        pub key_file: String,
        pub key_pem: String,
        _dir: TempDir,
    }

    pub(super) fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An unsigned JWT (the client only reads `exp`; the service verifies).
    pub(super) fn jwt(claims: Value) -> String {
        format!(
            "{}.{}.{}",
            b64(br#"{"alg":"RS256","typ":"JWT"}"#),
            b64(claims.to_string().as_bytes()),
            b64(b"sig")
        )
    }

    pub(super) fn claims_of(jwt: &str) -> Value {
        let payload = jwt.split('.').nth(1).expect("a JWT");
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64")).expect("json")
    }

    /// Checks an RS256 JWT against the RSA public key (PKCS#1 DER); returns its claims.
    fn verify(jwt: &str, public: &[u8]) -> Result<Value, String> {
        let (input, sig) = jwt.rsplit_once('.').ok_or("no signature")?;
        let sig = URL_SAFE_NO_PAD
            .decode(sig)
            .map_err(|_| "signature not base64")?;
        let claims = claims_of(&format!("{input}.x"));
        let header_json: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(input.split('.').next().unwrap())
                .unwrap(),
        )
        .unwrap();
        if header_json["alg"] != "RS256" || header_json["kid"] != "key-1" {
            return Err(format!("bad header {header_json}"));
        }
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        let (_, rsa) = algs
            .mapping
            .iter()
            .find(|(s, _)| *s == SignatureScheme::RSA_PKCS1_SHA256)
            .unwrap();
        rsa[0]
            .verify_signature(public, input.as_bytes(), &sig)
            .map_err(|_| "signature does not verify".to_owned())?;
        Ok(claims)
    }

    fn form(body: &str) -> Vec<(String, String)> {
        body.split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| {
                let d = |s: &str| {
                    percent_encoding::percent_decode_str(&s.replace('+', " "))
                        .decode_utf8()
                        .unwrap()
                        .into_owned()
                };
                (d(k), d(v))
            })
            .collect()
    }

    /// Starts the stand-in; ID tokens it mints live `lifetime` seconds, and
    /// with `refuse` every token request gets a 403.
    pub(super) async fn start(lifetime: u64, refuse: bool) -> Google {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("RSA key");
        let public = key.public_key_raw().to_vec();
        let key_pem = key.serialize_pem();
        let dir = TempDir::new("google");
        let token_uri = format!("{url}/token");
        let key_json = json!({
            "type": "service_account",
            "project_id": "proj",
            "private_key_id": "key-1",
            "private_key": key_pem,
            "client_email": EMAIL,
            "token_uri": token_uri,
        });
        let key_file = dir.write("key.json", &key_json.to_string());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while let Ok((mut sock, _)) = listener.accept().await {
                n += 1;
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let (head, body) = loop {
                    let got = sock.read(&mut buf).await.unwrap_or(0);
                    if got == 0 {
                        break (String::new(), String::new());
                    }
                    raw.extend_from_slice(&buf[..got]);
                    let text = String::from_utf8_lossy(&raw).into_owned();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                let (k, v) = l.split_once(':')?;
                                k.eq_ignore_ascii_case("content-length")
                                    .then(|| v.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break (head.to_owned(), body[..len].to_owned());
                        }
                    }
                };
                let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
                let authorization = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("authorization")
                        .then(|| v.trim().to_owned())
                });
                let (status, reply, claims) = if refuse {
                    (
                        403,
                        json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
                        Value::Null,
                    )
                } else if path == "/token" {
                    let fields = form(&body);
                    let get = |k: &str| {
                        fields
                            .iter()
                            .find(|(n, _)| n == k)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_default()
                    };
                    match verify(&get("assertion"), &public) {
                        Ok(claims)
                            if get("grant_type")
                                == "urn:ietf:params:oauth:grant-type:jwt-bearer"
                                && claims["aud"] == token_uri
                                && claims["iss"] == EMAIL =>
                        {
                            let reply = if let Some(aud) = claims["target_audience"].as_str() {
                                json!({ "id_token": jwt(json!({
                                    "aud": aud, "email": EMAIL, "n": n,
                                    "exp": unix_now() + lifetime,
                                })) })
                            } else {
                                json!({ "access_token": format!("access-{n}"), "expires_in": 3599 })
                            };
                            (200, reply, claims)
                        }
                        Ok(claims) => (400, json!({"error": "invalid_request"}), claims),
                        Err(e) => (
                            401,
                            json!({ "error": "invalid_grant", "error_description": e }),
                            Value::Null,
                        ),
                    }
                } else if path.ends_with(":generateIdToken") {
                    let body: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let target = path
                        .trim_start_matches("/v1/projects/-/serviceAccounts/")
                        .trim_end_matches(":generateIdToken")
                        .to_owned();
                    let reply = json!({ "token": jwt(json!({
                        "aud": body["audience"], "email": target, "n": n,
                        "exp": unix_now() + lifetime,
                    })) });
                    (200, reply, body)
                } else {
                    (404, json!({"error": "not found"}), Value::Null)
                };
                record.lock().unwrap().push(Seen {
                    path,
                    claims,
                    authorization,
                });
                let reply = reply.to_string();
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            }
        });
        Google {
            url,
            seen,
            key_file,
            key_pem,
            _dir: dir,
        }
    }

    impl Google {
        pub(super) fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }
}

/// Many tunnels through a client with `--id-token service-account=FILE`:
/// one JWT-bearer grant, whose assertion verifies with the key's public
/// half and asks for the service's origin as the audience.
#[tokio::test]
async fn service_account_key_is_exchanged_once_for_many_tunnels() {
    let google = google::start(3600, false).await;
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let source = format!("service-account={}", google.key_file);
    let stack = Stack::build(&pki, backend.addr, Front::None, &["--id-token", &source]).await;
    for i in 0..5u8 {
        let data = [i; 100];
        assert_eq!(round_trip(stack.client, &data).await.expect("tunnel"), data);
    }
    let seen = google.seen();
    assert_eq!(seen.len(), 1, "one token fetch for five tunnels: {seen:?}");
    assert_eq!(seen[0].path, "/token");
    let audience = format!("http://127.0.0.1:{}", stack.server.port());
    assert_eq!(seen[0].claims["target_audience"], audience.as_str());
    assert_eq!(seen[0].claims["sub"], google::EMAIL);
}

/// A token with less than the refresh margin left is fetched again on the
/// next use; a fresh one is reused.
#[tokio::test]
async fn service_account_tokens_are_refreshed_inside_the_margin() {
    use postern::client::{IdTokens, TokenSource};
    let aud = "https://svc-xyz.a.run.app";
    let source = |g: &google::Google| {
        format!("service-account={}", g.key_file)
            .parse::<TokenSource>()
            .expect("key file")
    };
    // Four minutes of life: inside the five-minute margin.
    let short = google::start(240, false).await;
    let tokens = IdTokens::new(source(&short), aud.to_owned());
    let first = tokens.bearer().await.expect("first token");
    let second = tokens.bearer().await.expect("refreshed token");
    assert_ne!(first, second, "the token inside the margin was reused");
    assert_eq!(short.seen().len(), 2);
    let token = second.to_str().unwrap().trim_start_matches("Bearer ");
    assert_eq!(google::claims_of(token)["aud"], aud);

    let long = google::start(3600, false).await;
    let tokens = IdTokens::new(source(&long), aud.to_owned());
    let first = tokens.bearer().await.expect("token");
    for _ in 0..3 {
        assert_eq!(tokens.bearer().await.expect("cached"), first);
    }
    assert_eq!(long.seen().len(), 1);
    assert_eq!(tokens.fetches(), 1);
}

/// `impersonate=SA` in the real binary: the caller's ADC key
/// (GOOGLE_APPLICATION_CREDENTIALS) buys an access token, which calls
/// generateIdToken for the target account and the service's audience.
#[tokio::test]
async fn impersonation_calls_generate_id_token_with_the_callers_access_token() {
    let google = google::start(3600, false).await;
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let flags = server_flags(&pki);
    let flags = strs(&flags);
    let (server, _reports) = start_server(backend.addr, &flags, &shutdown).await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let port = free_port().await;
    let target = "backend-invoker@proj.iam.gserviceaccount.com";
    let source = format!("impersonate={target}");
    let args = client_args(&pki, port, &url, &["--id-token", &source]);
    let client = Launch::new("client", &strs(&args))
        .env("GOOGLE_APPLICATION_CREDENTIALS", &google.key_file)
        .env("POSTERN_IAM_CREDENTIALS_URL", &google.url)
        .start_on(port)
        .await;
    for i in 0..3u8 {
        let data = [i; 64];
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        assert_eq!(round_trip(addr, &data).await.expect("tunnel"), data);
    }
    let seen = google.seen();
    assert_eq!(seen.len(), 2, "one access token, one ID token: {seen:?}");
    assert_eq!(seen[0].path, "/token");
    assert_eq!(
        seen[0].claims["scope"],
        "https://www.googleapis.com/auth/cloud-platform"
    );
    assert!(seen[0].claims.get("target_audience").is_none());
    assert_eq!(
        seen[1].path,
        format!("/v1/projects/-/serviceAccounts/{target}:generateIdToken")
    );
    assert_eq!(seen[1].authorization.as_deref(), Some("Bearer access-1"));
    let audience = format!("http://127.0.0.1:{}", server.port());
    assert_eq!(seen[1].claims["audience"], audience.as_str());
    let log = client.log_text();
    assert!(
        !log.contains("access-1") && !log.contains("eyJ"),
        "a token in the log:\n{log}"
    );
    shutdown.cancel();
}

/// Bad key files and refusals from the endpoint: one line naming the file
/// or the status, never the key, the assertion or a token.
#[tokio::test]
async fn credential_errors_are_one_line_and_name_the_file_or_status() {
    use postern::client::{IdTokens, TokenSource};
    let google = google::start(3600, true).await;
    let dir = TempDir::new("keys");
    let secret_body = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    let cases = [
        ("missing.json", None),
        ("not-json.json", Some(format!("{{\"private_key\": \"{secret_body}"))),
        (
            "bad-key.json",
            Some(
                serde_json::json!({
                    "type": "service_account",
                    "client_email": google::EMAIL,
                    "private_key": format!("-----BEGIN PRIVATE KEY-----\n{secret_body}\n-----END PRIVATE KEY-----\n"),
                })
                .to_string(),
            ),
        ),
        (
            "no-email.json",
            Some(
                serde_json::json!({ "type": "service_account", "private_key": google.key_pem })
                    .to_string(),
            ),
        ),
    ];
    for (name, contents) in &cases {
        let path = match contents {
            Some(text) => dir.write(name, text),
            None => dir.path(name).display().to_string(),
        };
        let err = format!("service-account={path}")
            .parse::<TokenSource>()
            .err()
            .unwrap_or_else(|| panic!("{name} accepted"))
            .to_string();
        assert!(err.contains(&path), "{name}: the file is not named: {err}");
        assert!(!err.contains('\n'), "{name}: more than one line: {err}");
        assert!(
            !err.contains(secret_body) && !err.contains("PRIVATE KEY"),
            "{name}: {err}"
        );
    }
    // The same through the binary: exit status 1, one line on stderr.
    let missing = dir.path("missing.json").display().to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["client", "--url", "https://svc.example/", "--no-inner-tls"])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--id-token", &format!("service-account={missing}")])
        .output()
        .expect("run postern");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&missing) && stderr.contains("--id-token"),
        "{stderr}"
    );

    let source: TokenSource = format!("service-account={}", google.key_file)
        .parse()
        .expect("good key");
    let err = IdTokens::new(source, "https://svc.example".to_owned())
        .bearer()
        .await
        .expect_err("a 403 gave a token")
        .to_string();
    assert!(
        err.contains("HTTP 403") && err.contains("Invalid JWT Signature"),
        "{err}"
    );
    assert!(err.contains(&format!("{}/token", google.url)), "{err}");
    assert!(!err.contains('\n') && !err.contains("eyJ"), "{err}");
}

/// The loopback address of a port a child process reported.
fn local(port: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}
