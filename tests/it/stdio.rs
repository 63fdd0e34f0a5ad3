//! `postern client --stdio`, the ssh ProxyCommand: it exits when its tunnel
//! fails however quiet stdin is, ends its session on the server before it
//! exits (at EOF and on SIGHUP/SIGTERM/SIGINT, which drain), keeps the
//! user's terminal free of log lines, and the server answers a session's
//! CLOSE with its own CLOSE and END_STREAM rather than a reset. ssh itself
//! drives one of them, with a real sshd behind the server.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::*;

/// A `postern client --stdio` child: its stdin and stdout are the tunnel's
/// ends, its stderr is collected whole.
struct StdioClient {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: JoinHandle<String>,
}

impl StdioClient {
    /// Starts it towards `url` with the test PKI's client flags and `extra`;
    /// `log` is POSTERN_LOG (None: unset, the default a user gets).
    fn start(pki: &Pki, url: &str, extra: &[&str], log: Option<&str>) -> StdioClient {
        let flags = client_flags(pki, extra);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_postern"));
        cmd.args(["client", "--stdio", "--url", url])
            .args(&flags)
            .env_remove("POSTERN_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(log) = log {
            cmd.env("POSTERN_LOG", log);
        }
        let mut child = cmd.spawn().expect("spawn postern client --stdio");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let mut err = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text).await;
            text
        });
        StdioClient {
            child,
            stdin,
            stdout,
            stderr,
        }
    }

    /// Writes `data` and reads the same number of bytes back.
    async fn echo(&mut self, data: &[u8]) -> Vec<u8> {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(data).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(LIMIT, self.stdout.read_exact(&mut back))
            .await
            .expect("echo through stdio hung")
            .expect("read stdout");
        back
    }

    /// Closes stdin and reads stdout to its end.
    async fn close_and_drain(&mut self) -> Vec<u8> {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        tokio::time::timeout(LIMIT, self.stdout.read_to_end(&mut rest))
            .await
            .expect("stdout never ended")
            .expect("read stdout");
        rest
    }

    fn signal(&self, name: &str) {
        let pid = self.child.id().expect("client still running").to_string();
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the exit (the limit only turns a hang into a failure) and
    /// returns the status and everything written to stderr.
    async fn exit(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the client"),
            Err(_) => {
                let _ = self.child.kill().await;
                let err = self.stderr.await.unwrap_or_default();
                panic!("postern client --stdio still running after {limit:?}; stderr:\n{err}");
            }
        };
        let err = tokio::time::timeout(LIMIT, self.stderr)
            .await
            .expect("stderr left open after the exit")
            .expect("stderr task");
        (status, err)
    }
}

/// The stdio client must exit once its tunnel has failed even though stdin
/// stays open and silent (as ssh's does), saying why on one line.
async fn exits_when_the_tunnel_fails(resume: bool) {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut server = child::server(&pki, backend.addr, &[]);
    let url = format!("http://{}/", server.addr);
    let extra: &[&str] = if resume { &[] } else { &["--no-resume"] };
    let mut client = StdioClient::start(&pki, &url, extra, None);
    let data = random_bytes(4096, 1);
    assert!(client.echo(&data).await == data, "echo came back altered");
    server.kill();
    let killed = Instant::now();
    // With resume the restarted server does not know the session: the
    // client's resumes are answered 404 and it gives up.
    let _restarted =
        resume.then(|| child::server_on(&pki, backend.addr, &server.addr.to_string(), &[]));
    let (status, err) = client.exit(LIMIT).await;
    eprintln!(
        "stdio client (resume {resume}) exited {:?} after the server was killed",
        killed.elapsed()
    );
    assert!(!status.success(), "a failed tunnel exited with {status}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, no log lines:\n{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    if resume {
        assert!(lines[0].contains("does not know this session"), "{err}");
    }
}

#[tokio::test]
async fn stdio_exits_after_the_server_dies_without_resume() {
    exits_when_the_tunnel_fails(false).await;
}

#[tokio::test]
async fn stdio_exits_when_the_restarted_server_cannot_resume() {
    exits_when_the_tunnel_fails(true).await;
}

/// How a stdio session ends in the test below.
#[derive(Clone, Copy, Debug)]
enum Ending {
    /// The application closes stdin and reads to EOF.
    Eof,
    /// As ssh does when it exits: SIGHUP to its ProxyCommand, then its
    /// pipes close.
    Hangup,
}

/// After every stdio session the server holds no detached session: each one
/// ended with its CLOSE delivered, at EOF and on SIGHUP alike.
#[tokio::test]
async fn stdio_sessions_leave_nothing_detached_on_the_server() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (mut server, metrics) = Server::with_metrics(&pki, backend.addr, &shutdown).await;
    let url = server.url("/");
    const SESSIONS: u64 = 20;
    let mut failed = Vec::new();
    for i in 0..SESSIONS {
        let ending = if i % 2 == 0 {
            Ending::Eof
        } else {
            Ending::Hangup
        };
        let mut client = StdioClient::start(&pki, &url, &[], None);
        let data = random_bytes(1000 + i as usize * 997, i);
        assert!(
            client.echo(&data).await == data,
            "echo {i} came back altered"
        );
        if let Ending::Hangup = ending {
            client.signal("HUP");
        }
        let rest = client.close_and_drain().await;
        assert!(rest.is_empty(), "session {i}: bytes after the echo");
        let (status, err) = client.exit(LIMIT).await;
        if !status.success() {
            failed.push(format!("session {i} ({ending:?}): {status}\n{err}"));
        }
    }
    let (ended, detached) = settled(&mut server, metrics, SESSIONS).await;
    eprintln!("after {SESSIONS} stdio sessions: {ended} ended, {detached} detached");
    assert_eq!(detached, 0.0, "sessions left detached on the server");
    assert_eq!(ended, SESSIONS, "every session ended on the server");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    shutdown.cancel();
}

/// Waits until each of `sessions` has either ended on the server (its
/// report) or waits there, detached, for a resume that cannot come; returns
/// both counts.
async fn settled(server: &mut Server, metrics: SocketAddr, sessions: u64) -> (u64, f64) {
    let mut ended = 0;
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        while server.reports.try_recv().is_ok() {
            ended += 1;
        }
        let text = scrape(metrics).await;
        let detached = sample(&text, "postern_sessions_detached").expect("detached gauge");
        if ended + detached as u64 >= sessions || tokio::time::Instant::now() > deadline {
            return (ended, detached);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A backend that runs `sshd -i` (inetd mode: the connection is its stdin
/// and stdout) for each connection, with a host key and one authorized user
/// key made in `dir`; returns its address and the user key's path.
pub(crate) async fn sshd_backend(dir: &TempDir) -> (SocketAddr, String) {
    for key in ["host", "user"] {
        let status = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(dir.path(key))
            .status()
            .expect("run ssh-keygen");
        assert!(status.success(), "ssh-keygen {key}");
    }
    let public = std::fs::read_to_string(dir.path("user.pub")).expect("user.pub");
    let authorized = dir.write("authorized_keys", &public);
    let config = dir.write(
        "sshd_config",
        &format!(
            "HostKey {}\nAuthorizedKeysFile {authorized}\nPidFile none\nUsePAM no\n\
             StrictModes no\nPermitRootLogin yes\nPasswordAuthentication no\n\
             KbdInteractiveAuthentication no\nLogLevel ERROR\n",
            dir.path("host").display()
        ),
    );
    // sshd running as root wants its privilege separation directory, which
    // Debian's service unit creates at start.
    let _ = std::fs::create_dir_all("/run/sshd");
    let log = dir.path("sshd.log");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sshd backend");
    let addr = listener.local_addr().expect("sshd backend addr");
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let sock = sock.into_std().expect("std socket");
            sock.set_nonblocking(false).expect("blocking socket");
            let out = sock.try_clone().expect("socket fd");
            let err = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("sshd log");
            let child = Command::new("sshd")
                .arg("-i")
                .arg("-f")
                .arg(&config)
                .stdin(std::os::fd::OwnedFd::from(sock))
                .stdout(std::os::fd::OwnedFd::from(out))
                .stderr(err)
                .kill_on_drop(true)
                .spawn();
            if let Ok(mut child) = child {
                tokio::spawn(async move { child.wait().await });
            }
        }
    });
    (addr, dir.path("user").display().to_string())
}

/// ssh itself as the user: each login runs `postern client --stdio` as its
/// ProxyCommand, through the server to a real sshd, and ends as ssh ends
/// it (SIGHUP to the ProxyCommand as ssh exits, its pipes closing): the
/// server is left with no detached session.
#[tokio::test]
async fn ssh_over_a_stdio_proxy_command_leaves_nothing_detached() {
    let test = "ssh_over_a_stdio_proxy_command_leaves_nothing_detached";
    if !peer::installed("sshd", "-V", "openssh-server", test)
        || !peer::installed("ssh", "-V", "openssh-client", test)
    {
        return;
    }
    let pki = Pki::new();
    let dir = TempDir::new("sshd");
    let (sshd, user_key) = sshd_backend(&dir).await;
    let shutdown = CancellationToken::new();
    let (mut server, metrics) = Server::with_metrics(&pki, sshd, &shutdown).await;
    let proxy = format!(
        "ProxyCommand={} client --stdio --url {} {}",
        env!("CARGO_BIN_EXE_postern"),
        server.url("/"),
        client_flags(&pki, &[]).join(" ")
    );
    let who = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    let who = String::from_utf8_lossy(&who.stdout).trim().to_owned();
    const LOGINS: u64 = 6;
    for i in 0..LOGINS {
        // A command, then a file through stdin as scp would send one.
        let data = random_bytes(if i % 2 == 0 { 0 } else { 300_000 }, 40 + i);
        let remote = if data.is_empty() {
            "echo hello-$((40+2))"
        } else {
            "sha256sum"
        };
        let mut ssh = Command::new("ssh")
            .args(["-F", "/dev/null", "-i", &user_key, "-l", &who])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", &proxy])
            .args(["build-box", remote])
            .env_remove("POSTERN_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn ssh");
        let mut stdin = ssh.stdin.take().expect("ssh stdin");
        let writer = tokio::spawn(async move {
            let _ = stdin.write_all(&data).await;
        });
        let out = tokio::time::timeout(LIMIT, ssh.wait_with_output())
            .await
            .expect("ssh hung")
            .expect("ssh ran");
        writer.await.expect("writer");
        let sshd_log = std::fs::read_to_string(dir.path("sshd.log")).unwrap_or_default();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(
            out.status.success(),
            "ssh {i}: {}\n{stderr}\nsshd: {sshd_log}",
            out.status
        );
        assert_eq!(stderr, "", "ssh {i}: lines in the user's terminal");
        let want = if i % 2 == 0 {
            "hello-42".to_owned()
        } else {
            format!("{}  -", sha256(&random_bytes(300_000, 40 + i)))
        };
        assert_eq!(stdout.trim_end(), want, "ssh {i}");
    }
    let (ended, detached) = settled(&mut server, metrics, LOGINS).await;
    eprintln!("after {LOGINS} ssh logins: {ended} ended, {detached} detached");
    assert_eq!(
        detached, 0.0,
        "ssh logins left sessions detached on the server"
    );
    assert_eq!(
        ended, LOGINS,
        "every ssh login's session ended on the server"
    );
    shutdown.cancel();
}

/// SIGINT and SIGTERM drain, as for the listener: the open tunnel goes on
/// carrying bytes and ends cleanly; one still open when the drain timeout
/// passes is closed, and its session ended on the server, not left detached.
#[tokio::test]
async fn stdio_drains_on_sigint_and_sigterm() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (mut server, metrics) = Server::with_metrics(&pki, backend.addr, &shutdown).await;
    let url = server.url("/");
    for signal in ["INT", "TERM"] {
        let mut client = StdioClient::start(&pki, &url, &[], None);
        let first = random_bytes(5000, 7);
        assert!(client.echo(&first).await == first);
        client.signal(signal);
        let after = random_bytes(70_000, 8);
        assert!(
            client.echo(&after).await == after,
            "SIG{signal}: the tunnel stopped carrying bytes"
        );
        assert!(client.close_and_drain().await.is_empty());
        let (status, err) = client.exit(LIMIT).await;
        assert!(status.success(), "SIG{signal}: {status}\n{err}");
        server.report().await;
    }
    // Stdin held open past the drain timeout.
    let mut client = StdioClient::start(&pki, &url, &["--drain-timeout", "500ms"], None);
    let data = random_bytes(3000, 9);
    assert!(client.echo(&data).await == data);
    client.signal("TERM");
    let (status, err) = client.exit(LIMIT).await;
    assert!(!status.success(), "a tunnel closed by the drain: {status}");
    assert!(err.contains("drain"), "{err}");
    server.report().await;
    let text = scrape(metrics).await;
    assert_eq!(
        sample(&text, "postern_sessions_detached"),
        Some(0.0),
        "{text}"
    );
    shutdown.cancel();
}

/// A loopback relay to `target`; `cut` drops every connection open through
/// it (what a front end that dies does to a tunnel), new ones still pass.
async fn cuttable_relay(target: SocketAddr) -> (SocketAddr, Arc<Notify>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind relay");
    let addr = listener.local_addr().expect("relay addr");
    let cut = Arc::new(Notify::new());
    let cuts = cut.clone();
    tokio::spawn(async move {
        while let Ok((mut near, _)) = listener.accept().await {
            let cut = cuts.clone();
            tokio::spawn(async move {
                let Ok(mut far) = tokio::net::TcpStream::connect(target).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut near, &mut far) => {}
                    () = cut.notified() => {}
                }
            });
        }
    });
    (addr, cut)
}

/// Stdio mode writes into the user's terminal: errors only by default, even
/// across a cut and its resume; POSTERN_LOG still opens it up, and `--help`
/// says so.
#[tokio::test]
async fn stdio_is_quiet_unless_postern_log_says_otherwise() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let mut flags = server_flags(&pki);
    flags.extend(["--backend".into(), backend.addr.to_string()]);
    let server = Server::start(&strs(&flags), &shutdown).await;
    let (relay, cut) = cuttable_relay(server.addr).await;
    let url = format!("http://{relay}/");
    for log in [None, Some("debug")] {
        let mut client = StdioClient::start(&pki, &url, &[], log);
        let data = random_bytes(2000, 3);
        assert!(client.echo(&data).await == data);
        cut.notify_waiters();
        let more = random_bytes(3000, 4);
        assert!(
            client.echo(&more).await == more,
            "not resumed after the cut"
        );
        client.close_and_drain().await;
        let (status, err) = client.exit(LIMIT).await;
        assert!(status.success(), "{status}\n{err}");
        match log {
            None => assert_eq!(err, "", "log lines in the user's terminal"),
            Some(_) => assert!(err.contains("DEBUG"), "POSTERN_LOG=debug ignored:\n{err}"),
        }
    }
    let help = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args(["client", "--help"])
        .output()
        .await
        .expect("postern client --help");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("POSTERN_LOG"), "{text}");
    shutdown.cancel();
}

/// Session frames by hand (docs/protocol.md §7).
fn session_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(payload);
    out
}

const S_DATA: u8 = 0x01;
const S_ACK: u8 = 0x02;
const S_FIN: u8 = 0x03;
const S_CLOSE: u8 = 0x04;

/// The session frames in `body`, as (type, payload); a partial last one is left out.
fn session_frames(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    let mut rest = body;
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([0, rest[1], rest[2], rest[3]]) as usize;
        if rest.len() < 4 + len {
            break;
        }
        frames.push((rest[0], rest[4..4 + len].to_vec()));
        rest = &rest[4 + len..];
    }
    frames
}

/// A client's CLOSE 0 arriving with its END_STREAM is answered as the
/// protocol says: the server's CLOSE 0 and END_STREAM, never a reset (which
/// a front end would log, and which drops whatever the stream had queued).
#[tokio::test]
async fn close_with_end_stream_is_answered_with_close_and_end_stream() {
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let backend_flag = backend.addr.to_string();
    let server = Server::start(&["--no-inner-tls", "--backend", &backend_flag], &shutdown).await;
    let mut conn = rawh2::RawConn::handshake(server.addr).await;
    let mut block = rawh2::post_block();
    block.extend(rawh2::header_block(&[("postern-session", "1")]));
    conn.send(&rawh2::frame(rawh2::HEADERS, rawh2::END_HEADERS, 1, &block))
        .await
        .expect("request headers");
    conn.wait_for(LIMIT, "the 200", |s| s.responses.contains_key(&1))
        .await;
    let mut body = session_frame(S_DATA, &[&0u64.to_be_bytes()[..], b"ping"].concat());
    body.extend(session_frame(S_FIN, &4u64.to_be_bytes()));
    conn.send(&rawh2::frame(rawh2::DATA, 0, 1, &body))
        .await
        .expect("data and FIN");
    // The echo and the server's FIN, and its ACK of our 4 bytes and FIN.
    let has = |s: &rawh2::Seen, kind: u8, payload: &[u8]| {
        let body = s.bodies.get(&1).map(Vec::as_slice).unwrap_or_default();
        session_frames(body)
            .iter()
            .any(|(k, p)| *k == kind && p == payload)
    };
    conn.wait_for(LIMIT, "the server's FIN and its ACK of ours", |s| {
        has(s, S_FIN, &4u64.to_be_bytes()) && has(s, S_ACK, &5u64.to_be_bytes())
    })
    .await;
    // Everything acknowledged, then CLOSE 0 and END_STREAM together.
    let mut last = session_frame(S_ACK, &5u64.to_be_bytes());
    last.extend(session_frame(S_CLOSE, &0u32.to_be_bytes()));
    conn.send(&rawh2::frame(rawh2::DATA, rawh2::END_STREAM, 1, &last))
        .await
        .expect("ACK, CLOSE and END_STREAM");
    let seen = conn
        .wait_for(LIMIT, "the server's end of stream 1", |s| {
            s.ended.contains(&1) || s.resets.contains_key(&1)
        })
        .await;
    assert_eq!(seen.resets.get(&1), None, "stream reset: {seen:?}");
    assert!(
        has(&seen, S_CLOSE, &0u32.to_be_bytes()),
        "no CLOSE 0 before END_STREAM: {:?}",
        session_frames(&seen.bodies[&1])
    );
    shutdown.cancel();
}
