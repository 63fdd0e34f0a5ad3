//! Destinations chosen per tunnel, through the real binaries: curl through
//! `--socks5` and `--http-proxy`, ssh through `--stdio --to`, the policy's
//! refusals with their codes (and nothing reaching the host refused), the
//! deny list under a rule for everything, the limits, the dial timeout,
//! bad SOCKS and CONNECT requests, and a SOCKS tunnel across a Caddy kill.
//! Hosts are distinct loopback addresses (127.0.0.2, 127.0.0.3); names are
//! given to the server through its policy's `hosts`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

use crate::harness::caddy::{self, Caddy};
use crate::harness::child::Proc;
use crate::harness::*;

/// A backend on `ip`: an HTTP server answering `hello from IP`, or an echo.
struct Host {
    addr: SocketAddr,
    accepts: Arc<AtomicUsize>,
}

async fn host(ip: &str, http: bool) -> Host {
    host_on(ip, 0, http).await
}

async fn host_on(ip: &str, port: u16, http: bool) -> Host {
    let listener = TcpListener::bind((ip, port))
        .await
        .expect("bind loopback host");
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(AtomicUsize::new(0));
    let count = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if http {
                    let mut head = Vec::new();
                    let mut b = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && sock.read_exact(&mut b).await.is_ok() {
                        head.push(b[0]);
                    }
                    let body = format!("hello from {}\n", addr.ip());
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                    let _ = sock.shutdown().await;
                } else {
                    let (mut r, mut w) = sock.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    Host { addr, accepts }
}

impl Host {
    fn accepts(&self) -> usize {
        self.accepts.load(Ordering::SeqCst)
    }
}

/// A server whose config has one route (to a dead backend: nothing here
/// should reach it) and `destinations`, a TOML `[destinations]` body.
fn start_server(pki: &Pki, dir: &TempDir, destinations: Option<&str>) -> Proc {
    start_server_to(pki, dir, "127.0.0.1:9", destinations)
}

/// [`start_server`] with the route's backend at `backend`.
fn start_server_to(pki: &Pki, dir: &TempDir, backend: &str, destinations: Option<&str>) -> Proc {
    let mut text = format!("[[route]]\npath = \"/\"\nbackend = \"{backend}\"\n");
    if let Some(d) = destinations {
        text.push_str("\n[destinations]\n");
        text.push_str(d);
    }
    let config = dir.write("postern.toml", &text);
    let flags = server_flags(pki);
    let mut args = vec!["--listen", "127.0.0.1:0", "--config", &config];
    args.extend(strs(&flags));
    Proc::start("server", &args, "addr")
}

/// A client for `url` with `extra` (e.g. `--socks5 0`), its listener's address.
fn client(pki: &Pki, url: &str, extra: &[&str]) -> Proc {
    let flags = client_flags(pki, extra);
    let mut args = vec!["--url", url];
    args.extend(strs(&flags));
    Proc::start("client", &args, "listen")
}

fn url(server: &Proc) -> String {
    format!("http://{}/", server.addr)
}

/// The test client's rule: 127.0.0.2 (and the name web.test) on `port`.
fn rule(port: u16, extra: &str) -> String {
    format!(
        "hosts = {{ \"web.test\" = [\"127.0.0.2\"], \"other.test\" = [\"127.0.0.3\"] }}\n{extra}\n\
         [[destinations.rule]]\nname = \"web\"\nallow = [\"{CLIENT_ID}\"]\n\
         to = [\"127.0.0.2/32\", \"web.test\"]\nports = [{port}]\n"
    )
}

async fn curl(args: &[&str]) -> (i32, String) {
    let out = tokio::time::timeout(
        LIMIT,
        Command::new("curl")
            .args(["-s", "-S", "--max-time", "30"])
            .args(args)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("curl hung")
    .expect("run curl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// A raw SOCKS5 CONNECT: the greeting, `request` (after VER CMD RSV), and
/// the reply's code (None: the connection closed without one).
async fn socks(proxy: SocketAddr, cmd: u8, addr: &[u8], port: u16) -> (Option<u8>, TcpStream) {
    let mut sock = TcpStream::connect(proxy)
        .await
        .expect("connect SOCKS listener");
    sock.write_all(&[5, 1, 0]).await.unwrap();
    let mut method = [0u8; 2];
    sock.read_exact(&mut method).await.expect("method reply");
    assert_eq!(method, [5, 0]);
    let mut req = vec![5, cmd, 0];
    req.extend_from_slice(addr);
    req.extend_from_slice(&port.to_be_bytes());
    sock.write_all(&req).await.unwrap();
    let mut reply = [0u8; 10];
    let code = match tokio::time::timeout(LIMIT, sock.read_exact(&mut reply)).await {
        Ok(Ok(_)) => Some(reply[1]),
        Ok(Err(_)) => None,
        Err(_) => panic!("no SOCKS reply"),
    };
    (code, sock)
}

fn name(n: &str) -> Vec<u8> {
    let mut v = vec![3, n.len() as u8];
    v.extend_from_slice(n.as_bytes());
    v
}

fn ipv4(ip: [u8; 4]) -> Vec<u8> {
    let mut v = vec![1];
    v.extend_from_slice(&ip);
    v
}

#[tokio::test]
async fn curl_reaches_a_host_by_name_and_by_address_through_socks5_and_http_connect() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let web = host("127.0.0.2", true).await;
    let server = start_server(&pki, &dir, Some(&rule(web.addr.port(), "")));
    let socks5 = client(&pki, &url(&server), &["--socks5", "0"]);
    let proxy = client(&pki, &url(&server), &["--http-proxy", "0"]);
    let port = web.addr.port();
    let want = "hello from 127.0.0.2";
    for (how, proxy_flag, proxy_addr, target) in [
        (
            "socks5 by name",
            "--socks5-hostname",
            socks5.addr.to_string(),
            format!("http://web.test:{port}/"),
        ),
        (
            "socks5 by address",
            "--socks5",
            socks5.addr.to_string(),
            format!("http://127.0.0.2:{port}/"),
        ),
        (
            "CONNECT by name",
            "--proxy",
            format!("http://{}", proxy.addr),
            format!("http://web.test:{port}/"),
        ),
        (
            "CONNECT by address",
            "--proxy",
            format!("http://{}", proxy.addr),
            format!("http://127.0.0.2:{port}/"),
        ),
    ] {
        let tunnel = if how.starts_with("CONNECT") {
            "--proxytunnel"
        } else {
            "-4"
        };
        let (code, out) = curl(&[proxy_flag, &proxy_addr, tunnel, &target]).await;
        assert_eq!(code, 0, "{how}: {out}\n{}", server.log_text());
        assert!(out.contains(want), "{how}: {out}");
    }
    assert_eq!(web.accepts(), 4);
    // The audit line names the destination, the address dialled and the rule.
    let lines = server.wait_log_lines("web.test").await;
    let line = lines
        .iter()
        .find(|l| l.contains("tunnel ended"))
        .expect("summary line");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["destination"], format!("web.test:{port}"));
    assert_eq!(v["dialled"], web.addr.to_string());
    assert_eq!(v["rule"], "web");
}

#[tokio::test]
async fn an_identity_allowed_to_x_cannot_reach_y_and_one_without_a_rule_reaches_nothing() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    // Y on X's port: only the address tells them apart.
    let y = host_on("127.0.0.3", x.addr.port(), false).await;
    let server = start_server(&pki, &dir, Some(&rule(x.addr.port(), "")));
    let proxy = client(&pki, &url(&server), &["--socks5", "0", "--http-proxy", "0"]);
    let (code, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 3]), y.addr.port()).await;
    assert_eq!(code, Some(0x02), "Y by address: not allowed");
    let (code, _) = socks(proxy.addr, 1, &name("other.test"), y.addr.port()).await;
    assert_eq!(code, Some(0x02), "Y by name: not allowed");
    let (code, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port() ^ 1).await;
    assert_eq!(code, Some(0x02), "X on another port: not allowed");
    let (code, mut sock) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    assert_eq!(code, Some(0x00), "X: {}", server.log_text());
    echo(&mut sock, 7).await;
    assert_eq!(y.accepts(), 0, "nothing reached Y");
    assert_eq!(x.accepts(), 1);
    let refusals = server.wait_log_lines("destination_refused").await;
    assert!(
        refusals
            .iter()
            .any(|l| l.contains("127.0.0.3 is on the built-in deny list")),
        "{refusals:?}"
    );
    assert!(refusals.iter().any(|l| l.contains("port")), "{refusals:?}");

    // Another identity: the same policy, its rule for someone else.
    let other = rule(x.addr.port(), "").replace(CLIENT_ID, "spiffe://test.postern/other");
    let dir2 = TempDir::new("dest");
    let server2 = server_fn(&pki, &dir2, &other);
    let proxy2 = client(&pki, &url(&server2), &["--socks5", "0"]);
    let (code, _) = socks(proxy2.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    assert_eq!(code, Some(0x02), "no rule for this identity");
    assert!(!server2
        .wait_log_lines("no destination rule for this identity")
        .await
        .is_empty());

    // And a server without a policy refuses every destination, saying so.
    let dir3 = TempDir::new("dest");
    let server3 = start_server(&pki, &dir3, None);
    let proxy3 = client(&pki, &url(&server3), &["--http-proxy", "0"]);
    let target = format!("http://127.0.0.2:{}/", x.addr.port());
    let via = format!("http://{}", proxy3.addr);
    let (code, out) = curl(&["-v", "--proxytunnel", "--proxy", &via, &target]).await;
    assert_ne!(code, 0);
    assert!(out.contains("403"), "{out}");
    assert!(
        !proxy3
            .wait_log_lines("no destination policy")
            .await
            .is_empty(),
        "{}",
        proxy3.log_text()
    );
    assert_eq!(x.accepts(), 1, "nothing more reached X");
}

fn server_fn(pki: &Pki, dir: &TempDir, destinations: &str) -> Proc {
    start_server(pki, dir, Some(destinations))
}

#[tokio::test]
async fn the_deny_list_holds_under_a_rule_for_everything_in_every_spelling() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    // A loopback host on 127.0.0.1, the address every spelling below means.
    let target = host("127.0.0.1", false).await;
    let port = target.addr.port();
    let policy = format!(
        "hosts = {{ \"rebound.test\" = [\"127.0.0.1\"] }}\n\
         [[destinations.rule]]\nname = \"all\"\nallow = [\"{CLIENT_ID}\"]\n\
         to = [\"0.0.0.0/0\", \"::/0\", \"*.test\"]\nports = [\"1-65535\"]\n"
    );
    let server = start_server(&pki, &dir, Some(&policy));
    let proxy = client(&pki, &url(&server), &["--socks5", "0"]);
    let names = [
        "localhost",
        "127.0.0.1",
        "127.1",
        "127.0.0.1.",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "0177.0.0.1",
        "::1",
        "::ffff:127.0.0.1",
        "::ffff:7f00:1",
        "64:ff9b::7f00:1",
        "2002:7f00:1::",
        "rebound.test",
        "169.254.169.254",
        "metadata.google.internal",
    ];
    for n in names {
        let (code, _) = socks(proxy.addr, 1, &name(n), port).await;
        assert!(matches!(code, Some(0x02) | Some(0x01)), "{n}: {code:?}");
    }
    let (code, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 1]), port).await;
    assert_eq!(code, Some(0x02));
    let mut v6 = vec![4];
    v6.extend_from_slice(
        &"::ffff:127.0.0.1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets(),
    );
    let (code, _) = socks(proxy.addr, 1, &v6, port).await;
    assert_eq!(code, Some(0x02));
    assert_eq!(target.accepts(), 0, "a denied spelling reached loopback");
    // Names with a colon are not host names: the client refuses them itself.
    let want = names.iter().filter(|n| !n.contains(':')).count() + 2;
    let all_logged = poll(|| async { server.log_lines("destination_refused").len() >= want });
    assert!(all_logged.await, "{}", server.log_text());
    let lines = server.log_lines("destination_refused");
    assert!(lines.iter().any(|l| l.contains("deny list")));
    assert!(lines.iter().any(|l| l.contains("metadata")));
}

#[tokio::test]
async fn ssh_reaches_sshd_through_stdio_to() {
    let test = "ssh_reaches_sshd_through_stdio_to";
    if !peer::installed("sshd", "-V", "openssh-server", test)
        || !peer::installed("ssh", "-V", "openssh-client", test)
    {
        return;
    }
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let (sshd, user_key) = crate::stdio::sshd_backend(&dir).await;
    let policy = format!(
        "hosts = {{ \"build-box\" = [\"127.0.0.1\"] }}\n\
         [[destinations.rule]]\nname = \"ssh\"\nallow = [\"{CLIENT_ID}\"]\n\
         to = [\"127.0.0.0/8\", \"build-box\"]\nports = [{}]\n",
        sshd.port()
    );
    let server = start_server(&pki, &dir, Some(&policy));
    let proxy = format!(
        "ProxyCommand={} client --stdio --to %h:%p --url {} {}",
        env!("CARGO_BIN_EXE_postern"),
        url(&server),
        client_flags(&pki, &[]).join(" ")
    );
    let who = std::process::Command::new("id")
        .arg("-un")
        .output()
        .expect("id -un");
    let who = String::from_utf8_lossy(&who.stdout).trim().to_owned();
    let out = tokio::time::timeout(
        LIMIT,
        Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-i",
                &user_key,
                "-l",
                &who,
                "-p",
                &sshd.port().to_string(),
            ])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", &proxy])
            .args(["build-box", "echo hello-$((40+2))"])
            .env_remove("POSTERN_LOG")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("ssh hung")
    .expect("ssh ran");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{}", server.log_text());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "hello-42");
    let lines = server.wait_log_lines("build-box").await;
    assert!(
        lines.iter().any(|l| l.contains("\"rule\":\"ssh\"")),
        "{lines:?}"
    );
}

#[tokio::test]
async fn a_fixed_forward_destination_carries_bytes_and_no_inner_tls_cannot_name_one() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    let server = start_server(&pki, &dir, Some(&rule(x.addr.port(), "")));
    let to = format!("web.test:{}", x.addr.port());
    let forward = format!("127.0.0.1:0={},to={to}", url(&server));
    let fwd = {
        let flags = client_flags(&pki, &["--forward", &forward]);
        Proc::start("client", &strs(&flags), "listen")
    };
    let data = random_bytes(1 << 20, 3);
    let back = round_trip(fwd.addr, &data).await.expect("round trip");
    assert_eq!(sha256(&back), sha256(&data));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "client",
            "--url",
            "http://127.0.0.1:1/",
            "--no-inner-tls",
            "--stdio",
            "--to",
            &to,
        ])
        .output()
        .expect("run client");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--to") && err.contains("--no-inner-tls"),
        "{err}"
    );
}

#[tokio::test]
async fn the_per_identity_limit_refuses_the_next_tunnel_with_its_reason() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    let server = start_server(
        &pki,
        &dir,
        Some(&rule(x.addr.port(), "max_tunnels_per_identity = 2")),
    );
    let proxy = client(&pki, &url(&server), &["--socks5", "0"]);
    let (a, mut first) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    let (b, mut second) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    assert_eq!((a, b), (Some(0), Some(0)));
    echo(&mut first, 1).await;
    let (c, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    assert_eq!(c, Some(0x02), "the third tunnel is over the limit");
    assert!(
        !server.wait_log_lines("tunnel_limit").await.is_empty(),
        "{}",
        server.log_text()
    );
    assert_eq!(x.accepts(), 2);
    // One closes: the next fits again.
    drop(first);
    echo(&mut second, 2).await;
    let opened = poll(|| async {
        let (code, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
        code == Some(0)
    });
    assert!(opened.await, "a slot came back");
}

#[tokio::test]
async fn a_blackholed_destination_is_refused_at_the_dial_timeout() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    // A listener that never accepts, its queue full: SYNs go unanswered.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from(([127, 0, 0, 2], 0)).into())
        .unwrap();
    sock.listen(0).unwrap();
    let hole: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(hole)).await
        {
            fillers.push(s);
        }
    }
    let server = start_server(
        &pki,
        &dir,
        Some(&rule(hole.port(), "dial_timeout = \"1s\"")),
    );
    let proxy = client(&pki, &url(&server), &["--socks5", "0", "--http-proxy", "0"]);
    let (code, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), hole.port()).await;
    assert_eq!(code, Some(0x06), "timed out: {}", server.log_text());
    assert!(!server.wait_log_lines("dial_timeout").await.is_empty());
    drop(sock);
}

#[tokio::test]
async fn bad_socks_and_connect_requests_get_their_errors_and_a_log_line_each() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    let server = start_server(&pki, &dir, Some(&rule(x.addr.port(), "")));
    let socks5 = client(&pki, &url(&server), &["--socks5", "0"]);
    let proxy = client(&pki, &url(&server), &["--http-proxy", "0"]);
    let port = x.addr.port();
    // Not SOCKS5: closed without a reply.
    let mut s = TcpStream::connect(socks5.addr).await.unwrap();
    s.write_all(&[4, 1, 0, 80, 127, 0, 0, 2, 0]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut rest))
        .await
        .expect("closed");
    assert!(rest.is_empty(), "{rest:?}");
    // No acceptable method: 0xFF.
    let mut s = TcpStream::connect(socks5.addr).await.unwrap();
    s.write_all(&[5, 1, 2]).await.unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).await.unwrap();
    assert_eq!(m, [5, 0xff]);
    // BIND and UDP ASSOCIATE: 0x07; an unknown address type: 0x08;
    // a name over 253 bytes: 0x01.
    assert_eq!(
        socks(socks5.addr, 2, &ipv4([127, 0, 0, 2]), port).await.0,
        Some(0x07)
    );
    assert_eq!(
        socks(socks5.addr, 3, &ipv4([127, 0, 0, 2]), port).await.0,
        Some(0x07)
    );
    assert_eq!(socks(socks5.addr, 1, &[9, 1, 2], port).await.0, Some(0x08));
    assert_eq!(
        socks(socks5.addr, 1, &name(&"a".repeat(255)), port).await.0,
        Some(0x01)
    );
    for (needle, _) in [
        ("not a SOCKS5 greeting", 0),
        ("no method", 0),
        ("BIND", 0),
        ("UDP ASSOCIATE", 0),
        ("address type", 0),
        ("host name of 255 bytes", 0),
    ] {
        assert_eq!(
            socks5.wait_log_lines(needle).await.len(),
            1,
            "{needle}: {}",
            socks5.log_text()
        );
    }
    // CONNECT without a port: 400; not CONNECT: 405; a head over 8 KiB: 431.
    for (req, status) in [
        (
            "CONNECT web.test HTTP/1.1\r\nhost: web.test\r\n\r\n".to_owned(),
            "400",
        ),
        (
            "GET http://web.test/ HTTP/1.1\r\nhost: web.test\r\n\r\n".to_owned(),
            "405",
        ),
        (
            format!(
                "CONNECT web.test:{port} HTTP/1.1\r\nx: {}\r\n\r\n",
                "a".repeat(9000)
            ),
            "431",
        ),
    ] {
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let _ = s.write_all(req.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(LIMIT, s.read_to_end(&mut answer))
            .await
            .expect("answered");
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:.40}: {answer}"
        );
    }
    assert_eq!(proxy.wait_log_lines("needs host:port").await.len(), 1);
    assert_eq!(x.accepts(), 0, "no bad request reached a host");
    // And the listener still serves a good one.
    let (code, mut sock) = socks(socks5.addr, 1, &ipv4([127, 0, 0, 2]), port).await;
    assert_eq!(code, Some(0));
    echo(&mut sock, 9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socks_tunnel_survives_caddy_killed_and_the_front_end_never_sees_the_destination() {
    if !caddy::installed(
        "a_socks_tunnel_survives_caddy_killed_and_the_front_end_never_sees_the_destination",
    ) {
        return;
    }
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    let server = start_server(&pki, &dir, Some(&rule(x.addr.port(), "")));
    let mut front = Caddy::start(&pki, server.addr).await;
    let port = front.port;
    let proxy = client(
        &pki,
        &front.url(),
        &["--socks5", "0", "--tls-ca", &pki.p("ca.pem")],
    );
    let (code, sock) = socks(proxy.addr, 1, &name("web.test"), x.addr.port()).await;
    assert_eq!(code, Some(0), "{}", server.log_text());
    let data = random_bytes(8 << 20, 11);
    let (mut r, mut w) = sock.into_split();
    let sent = data.clone();
    let upload = tokio::spawn(async move {
        for chunk in sent.chunks(256 << 10) {
            w.write_all(chunk).await.expect("upload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        w.shutdown().await.expect("half-close");
    });
    let mut got = vec![0u8; data.len() / 4];
    r.read_exact(&mut got).await.expect("first quarter");
    let log = front.log();
    front.kill().await;
    front = Caddy::start_with(&pki, server.addr, port, &Default::default()).await;
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, r.read_to_end(&mut rest))
        .await
        .expect("transfer finished")
        .expect("read");
    got.extend_from_slice(&rest);
    upload.await.unwrap();
    assert_eq!(sha256(&got), sha256(&data), "every byte, once, in order");
    assert_eq!(x.accepts(), 1, "one connection at the destination");
    let lines = server.wait_log_lines("\"tunnel ended\"").await;
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["destination"], format!("web.test:{}", x.addr.port()));
    assert!(
        v["resumes"].as_u64().unwrap_or(0) >= 1,
        "the session resumed: {v}"
    );
    for seen in [log, front.log()] {
        assert!(
            !seen.contains("web.test") && !seen.contains("127.0.0.2"),
            "the front end saw the destination: {seen}"
        );
    }
}

#[tokio::test]
async fn doctor_to_shows_the_decision_and_whether_the_server_reaches_it() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    // The route's own backend, for doctor's steps before this one.
    let echo = TestBackend::start(Backend::Echo).await;
    let server = start_server_to(
        &pki,
        &dir,
        &echo.addr.to_string(),
        Some(&rule(x.addr.port(), "")),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let front = start_front(&pki, server.addr, &shutdown).await;
    let url = format!("https://localhost:{}/", front.port());
    let doctor = |to: String| {
        let flags = client_flags(&pki, &["--tls-ca", &pki.p("ca.pem"), "--to", &to]);
        let url = url.clone();
        async move {
            let out = tokio::time::timeout(
                LIMIT,
                Command::new(env!("CARGO_BIN_EXE_postern"))
                    .args(["doctor", "--url", &url])
                    .args(&flags)
                    .output(),
            )
            .await
            .expect("doctor hung")
            .expect("doctor ran");
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    let (ok, out) = doctor(format!("web.test:{}", x.addr.port())).await;
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!("allowed, the server connected {}", x.addr)),
        "{out}"
    );
    let (ok, out) = doctor(format!("127.0.0.3:{}", x.addr.port())).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("[FAIL] destination") && out.contains("not_allowed"),
        "{out}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_reload_that_removes_the_rule_refuses_new_tunnels_and_keeps_open_ones() {
    let pki = Pki::new();
    let dir = TempDir::new("dest");
    let x = host("127.0.0.2", false).await;
    let server = start_server(&pki, &dir, Some(&rule(x.addr.port(), "")));
    let proxy = client(&pki, &url(&server), &["--socks5", "0"]);
    let (code, mut open) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    assert_eq!(code, Some(0));
    echo(&mut open, 1).await;
    // The same file, its rule gone.
    dir.write(
        "postern.toml",
        "[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:9\"\n\n[destinations]\n",
    );
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &server.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    let reloaded = server
        .wait_log_lines("reloaded certificates and routes")
        .await;
    assert!(!reloaded.is_empty(), "{}", server.log_text());
    let (code, _) = socks(proxy.addr, 1, &ipv4([127, 0, 0, 2]), x.addr.port()).await;
    assert_eq!(code, Some(0x02), "a new tunnel is refused after the reload");
    echo(&mut open, 2).await;
    assert_eq!(x.accepts(), 1, "the open tunnel kept its connection");
}
