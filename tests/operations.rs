//! Operations: logs Cloud Logging understands, the client draining on
//! SIGTERM, and ID tokens from service account keys and impersonation. The
//! real binary runs as a child process where its process-wide behaviour
//! (log format, signals, exit status) is what is tested.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::caddy::free_port;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// `postern SUB ARGS…` as a child process, its stderr in a file.
struct Postern {
    child: Child,
    log: PathBuf,
    _dir: TempDir,
}

impl Postern {
    fn spawn(sub: &str, args: &[String], env: &[(&str, &str)]) -> Postern {
        let dir = TempDir::new("operations");
        let log = dir.path("stderr.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
        cmd.arg(sub)
            .args(args)
            .env_remove("K_SERVICE")
            .env_remove("GOOGLE_CLOUD_PROJECT")
            .env_remove("POSTERN_LOG_FORMAT")
            .env("POSTERN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn postern");
        Postern {
            child,
            log,
            _dir: dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's lines, each parsed as JSON (panics on one that is not).
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))
            })
            .collect()
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("pid").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
    }

    async fn exit(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(LIMIT, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("postern did not exit:\n{}", self.log()),
        }
    }
}

/// Polls `check` every 20 ms until it holds, for at most [`LIMIT`].
async fn poll<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + LIMIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn wait_listening(port: u16, who: &Postern) {
    let up = poll(|| async { TcpStream::connect(("127.0.0.1", port)).await.is_ok() }).await;
    assert!(up, "never listened on {port}:\n{}", who.log());
}

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
    let mut server = Postern::spawn(
        "server",
        &server_args(&pki, port, backend.addr),
        &[("K_SERVICE", "svc"), ("GOOGLE_CLOUD_PROJECT", "test-proj")],
    );
    wait_listening(port, &server).await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    let trace_header = format!("X-Cloud-Trace-Context: {TRACE}/123;o=1");
    let flags = [
        "--cert",
        &pki.p("client.pem"),
        "--key",
        &pki.p("client-key.pem"),
        "--ca",
        &pki.p("ca.pem"),
        "--server-name",
        "localhost",
        "--header",
        &trace_header,
    ];
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
    assert!(both.await, "two tunnel lines never came:\n{}", server.log());
    server.sigterm();
    assert!(server.exit().await.success());

    let lines = server.json_lines();
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
    let mut args = s(&["--log-format", "json"]);
    args.extend(server_args(&pki, port, backend.addr));
    let mut server = Postern::spawn("server", &args, &[]);
    wait_listening(port, &server).await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    let header = format!("traceparent: 00-{TRACE}-00f067aa0ba902b7-01");
    let flags = [
        "--cert",
        &pki.p("client.pem"),
        "--key",
        &pki.p("client-key.pem"),
        "--ca",
        &pki.p("ca.pem"),
        "--server-name",
        "localhost",
        "--header",
        &header,
    ];
    let client = start_client(&url, &flags, &shutdown).await;
    assert_eq!(round_trip(client, b"w3c").await.expect("tunnel"), b"w3c");
    let found = poll(|| {
        let hit = server
            .json_lines()
            .iter()
            .any(|l| l["message"] == "tunnel ended");
        async move { hit }
    });
    assert!(found.await, "no tunnel line:\n{}", server.log());
    server.sigterm();
    assert!(server.exit().await.success());
    let lines = server.json_lines();
    let line = lines
        .iter()
        .find(|l| l["message"] == "tunnel ended")
        .expect("tunnel line");
    assert_eq!(line["logging.googleapis.com/trace"], TRACE);
    shutdown.cancel();
}

/// Human logs written to a pipe or file carry no ANSI escape codes.
#[tokio::test]
async fn human_logs_to_a_file_have_no_escape_codes() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let port = free_port().await;
    let mut server = Postern::spawn("server", &server_args(&pki, port, backend.addr), &[]);
    wait_listening(port, &server).await;
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    // A refused tunnel: a WARN line with fields, the most decorated kind.
    let plain = start_client(&url, &["--no-inner-tls"], &shutdown).await;
    let _ = round_trip(plain, b"refused").await;
    let warned = poll(|| {
        let hit = server.log().contains("tunnel ended");
        async move { hit }
    });
    assert!(warned.await, "no tunnel line:\n{}", server.log());
    server.sigterm();
    assert!(server.exit().await.success());
    let log = server.log();
    assert!(
        log.contains("WARN") && log.contains("server listening"),
        "{log}"
    );
    assert!(!log.contains('\u{1b}'), "escape codes in a file:\n{log:?}");
    shutdown.cancel();
}

/// An open echo tunnel through `client`, checked with one round trip.
async fn open_echo(client: u16, seed: u64) -> TcpStream {
    let mut sock = TcpStream::connect(("127.0.0.1", client))
        .await
        .expect("connect client");
    echo(&mut sock, seed).await;
    sock
}

async fn echo(sock: &mut TcpStream, seed: u64) {
    let data = random_bytes(16 * 1024, seed);
    let mut back = vec![0u8; data.len()];
    let (mut r, mut w) = sock.split();
    let both = async { tokio::join!(w.write_all(&data), r.read_exact(&mut back)) };
    let (wr, rd) = tokio::time::timeout(LIMIT, both).await.expect("echo hung");
    wr.expect("echo write");
    rd.expect("echo read");
    assert!(back == data, "echo {seed} came back altered");
}

/// Starts an in-process server and `postern client` in front of it.
async fn client_process(
    pki: &Pki,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> (Postern, u16, TestBackend) {
    let backend = TestBackend::start(Backend::Echo).await;
    let flags = [
        "--cert",
        &pki.p("server.pem"),
        "--key",
        &pki.p("server-key.pem"),
        "--client-ca",
        &pki.p("ca.pem"),
    ];
    let (server, _reports) = start_server(backend.addr, &flags, shutdown).await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let port = free_port().await;
    let client = Postern::spawn("client", &client_args(pki, port, &url, extra), &[]);
    wait_listening(port, &client).await;
    (client, port, backend)
}

/// SIGTERM: the listener closes, an open tunnel keeps working until the
/// application ends it, then the client exits 0.
#[tokio::test]
async fn client_sigterm_drains_open_tunnels_refuses_new_ones_and_exits_zero() {
    let pki = Pki::new();
    let shutdown = CancellationToken::new();
    let (mut client, port, backend) = client_process(&pki, &[], &shutdown).await;
    let mut open = open_echo(port, 1).await;
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
        client.child.try_wait().expect("try_wait").is_none(),
        "the client exited with a tunnel still open:\n{}",
        client.log()
    );
    open.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, open.read_to_end(&mut rest))
        .await
        .expect("tunnel did not end")
        .expect("orderly end");
    assert!(rest.is_empty());
    let status = client.exit().await;
    assert!(status.success(), "exit {status}:\n{}", client.log());
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
    let (mut client, port, _backend) =
        client_process(&pki, &["--drain-timeout", "500ms"], &shutdown).await;
    let mut stuck = open_echo(port, 3).await;
    client.sigterm();
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(LIMIT, stuck.read(&mut buf))
        .await
        .expect("the stuck tunnel was never closed");
    assert!(matches!(r, Ok(0) | Err(_)), "expected a close, got {r:?}");
    let status = client.exit().await;
    let log = client.log();
    assert!(status.success(), "exit {status}:\n{log}");
    assert!(
        log.contains("drain timeout"),
        "no drain timeout logged:\n{log}"
    );
}
