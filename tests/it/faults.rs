//! Faults on every hop: the backend refuses, resets, hangs or dies; the
//! server or the client process is killed mid-transfer; the front end
//! restarts. Nothing may hang, errors must be clean, and after many
//! open/close cycles the server's descriptors and memory return to baseline.

use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::child::{self, Proc};
use crate::harness::rawh2;
use crate::harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reads until the connection ends and says how: `Ok(bytes)` on EOF, the
/// error on reset. Panics if it stays open for `LIMIT`.
async fn until_closed(sock: &mut TcpStream, what: &str) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    tokio::time::timeout(LIMIT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: connection left hanging"))
}

/// Reads until the connection ends; returns every byte read and how it
/// ended (`Ok` on EOF, the error on reset). Panics if it stays open for `LIMIT`.
async fn read_until_closed<R: AsyncReadExt + Unpin>(
    sock: &mut R,
    what: &str,
) -> (Vec<u8>, std::io::Result<()>) {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let end = tokio::time::timeout(LIMIT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: connection left hanging"));
    (all, end)
}

/// Writes `data` and reads the same number of echoed bytes back.
async fn echo_exchange(sock: &mut TcpStream, data: &[u8]) {
    sock.write_all(data).await.expect("write");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .expect("echo");
    assert_eq!(back, data);
}

#[tokio::test]
async fn backend_refusing_then_returning() {
    let pki = Pki::new();
    let dead = dead_addr().await;
    let mut stack = Stack::via_front(&pki, dead).await;
    let mut sock = TcpStream::connect(stack.client).await.unwrap();
    let _ = sock.write_all(b"anyone there?").await;
    let _ = until_closed(&mut sock, "tunnel to a refusing backend").await;
    let reason = stack.report().await.outcome.expect_err("backend was down");
    assert!(
        reason.contains("unreachable"),
        "unexpected reason: {reason}"
    );
    // The backend comes up on the same address: the next tunnel works.
    let listener = TcpListener::bind(dead).await.expect("rebind backend port");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let back = round_trip(stack.client, b"back again").await.unwrap();
    assert_eq!(back, b"back again");
}

/// A backend whose connections are handed to the test instead of served.
async fn capturing_backend() -> (SocketAddr, mpsc::UnboundedReceiver<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn backend_reset_mid_stream_resets_the_client() {
    let pki = Pki::new();
    let (addr, mut conns) = capturing_backend().await;
    let mut stack = Stack::via_front(&pki, addr).await;
    let mut local = TcpStream::connect(stack.client).await.unwrap();
    local.write_all(&random_bytes(100_000, 3)).await.unwrap();
    let mut backend = conns.recv().await.unwrap();
    let mut part = vec![0u8; 1000];
    backend.read_exact(&mut part).await.unwrap();
    backend.write_all(b"partial answer").await.unwrap();
    backend.set_zero_linger().unwrap();
    drop(backend);
    let end = until_closed(&mut local, "client after a backend reset").await;
    eprintln!("backend reset: local connection ended with {end:?}");
    let err = end.expect_err("the backend's reset must reach the client as a reset, not a close");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "client connection ended with {err}, not a reset"
    );
    let report = stack.report().await;
    let reason = report.outcome.expect_err("a reset is no clean close");
    eprintln!("backend reset: server reported {reason:?}");
    assert_eq!(report.close, "reset", "server reported {reason}");
}

#[tokio::test]
async fn hanging_backend_is_released_when_the_client_aborts() {
    let pki = Pki::new();
    let (addr, mut conns) = capturing_backend().await;
    let mut stack = Stack::via_front(&pki, addr).await;
    let mut local = TcpStream::connect(stack.client).await.unwrap();
    // More than fits in the backend's socket buffers once it stops reading.
    let data = random_bytes(1 << 20, 4);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), local.write_all(&sent)).await;
        local
    });
    let mut backend = conns.recv().await.unwrap();
    let local = writer.await.unwrap();
    // The backend sees the data: it waits, unread, in its socket.
    let port = addr.port();
    let deadline = std::time::Instant::now() + LIMIT;
    while !matches!(tcp_queues(port, None), Some((_, rx)) if rx > 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "no data reached the backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local.set_zero_linger().unwrap();
    drop(local);
    let reason = stack.report().await.outcome.expect_err("aborted tunnel");
    eprintln!("hanging backend: server reported {reason:?}");
    // The client's abort reaches the backend as a reset, which (on Linux)
    // also discards what it had not read; whatever it does read is the
    // start of what the app sent.
    let (seen, end) = read_until_closed(&mut backend, "backend after the client aborted").await;
    eprintln!(
        "hanging backend: backend read {} bytes, then its connection ended with {end:?}",
        seen.len()
    );
    assert!(
        data.starts_with(&seen),
        "the backend read {} bytes that are not the start of what the app sent",
        seen.len()
    );
    let err = end.expect_err("the client's abort must reach the backend as a reset");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "backend connection ended with {err}, not a reset"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_killed_mid_transfer_closes_the_client() {
    backend_killed(Front::Ours).await;
}

async fn backend_killed(front: Front) {
    let pki = Pki::new();
    let mut backend = Proc::start(
        "backend",
        &["--listen", "127.0.0.1:0", "--mode", "echo"],
        "addr",
    );
    let mut stack = Stack::build(&pki, backend.addr, front, &[]).await;
    let mut local = TcpStream::connect(stack.client).await.unwrap();
    echo_exchange(&mut local, &random_bytes(64 * 1024, 5)).await;
    // Mid-transfer: the app keeps sending and reads nothing, so the echo
    // backend stalls on its writes with unread data queued. Killed then, its
    // kernel answers with a reset (a backend killed with nothing unread
    // closes with FIN, which is a half-close, not a failure).
    // The writes stop (the future is dropped, the socket kept) once it has
    // stalled: a write failing after the kill would consume the socket's
    // error, and the read below would then see a plain EOF.
    let (mut rd, mut wr) = local.into_split();
    let flood = random_bytes(64 << 20, 6);
    let port = backend.addr.port();
    let stalled = async {
        while !matches!(tcp_queues(port, None), Some((tx, rx)) if tx > 0 && rx > 0) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::select! {
        r = wr.write_all(&flood) => panic!("64 MiB went through a path that never reads: {r:?}"),
        r = tokio::time::timeout(LIMIT, stalled) => r.unwrap_or_else(|_| panic!(
            "the backend never stalled with data queued both ways: {:?}",
            tcp_queues(port, None)
        )),
    }
    backend.kill();
    let (_, end) = read_until_closed(&mut rd, "client after the backend died").await;
    eprintln!("backend killed: local connection ended with {end:?}");
    let report = stack.report().await;
    drop(wr);
    eprintln!(
        "backend killed: server reported {} {:?}",
        report.close, report.outcome
    );
    let err = end.expect_err("a dead backend must reach the client as a reset");
    assert_eq!(
        err.kind(),
        std::io::ErrorKind::ConnectionReset,
        "client connection ended with {err}, not a reset"
    );
    let reason = report
        .outcome
        .expect_err("a killed backend is no clean close");
    assert_eq!(report.close, "reset", "server reported {reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_transfer_then_restarted_on_the_same_port() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let mut server = child::server(&pki, backend.addr, &[]);
    let port = server.addr.port();
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{port}/");
    // Nothing answers while the server is down: the session is retried for
    // the client's resume timeout, then the local connection is closed.
    let mut cflags = child::client_flags(&pki);
    cflags.extend(["--resume-timeout".into(), "2s".into()]);
    let client = start_client(&url, &strs(&cflags), &shutdown).await;
    let mut local = TcpStream::connect(client).await.unwrap();
    echo_exchange(&mut local, &random_bytes(64 * 1024, 8)).await;
    server.kill();
    let end = until_closed(&mut local, "client after the server died").await;
    eprintln!("server killed: local connection ended with {end:?}");
    // While it is down, new tunnels fail at once rather than hang.
    // (The client may reset the local socket before connect() returns.)
    let end = match TcpStream::connect(client).await {
        Ok(mut probe) => {
            let _ = probe.write_all(b"hello?").await;
            until_closed(&mut probe, "tunnel while the server is down").await
        }
        Err(e) => Err(e),
    };
    eprintln!("server down: a new tunnel ended with {end:?}");
    assert!(
        !matches!(end, Ok(n) if n > 0),
        "got bytes from a dead server"
    );
    // A new server on the same port: tunnels work again (after the
    // client's dial backoff, hence the bounded retries).
    let _server = child::server_on(&pki, backend.addr, &format!("127.0.0.1:{port}"), &[]);
    let mut attempts = 0;
    let back = loop {
        attempts += 1;
        match round_trip(client, b"again").await {
            Ok(b) if b == b"again" => break b,
            other if attempts < 50 => {
                eprintln!("server restarted: attempt {attempts} gave {other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            other => panic!("no tunnel after the server came back: {other:?}"),
        }
    };
    assert_eq!(back, b"again");
    eprintln!("server restarted: tunnel works again after {attempts} attempt(s)");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_killed_mid_transfer_ends_the_server_tunnel() {
    let pki = Pki::new();
    let (addr, mut conns) = capturing_backend().await;
    let shutdown = CancellationToken::new();
    // A dead client looks like a cut: its session waits the resume timeout.
    let mut sflags = server_flags(&pki);
    sflags.extend(["--resume-timeout".into(), "2s".into()]);
    let (server, mut reports) = start_server(addr, &strs(&sflags), &shutdown).await;
    let url = format!("http://127.0.0.1:{}/", server.port());
    let mut cflags = vec![
        "--url".to_string(),
        url,
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    cflags.extend(child::client_flags(&pki));
    let mut client = Proc::start("client", &strs(&cflags), "listen");
    let mut local = TcpStream::connect(client.addr).await.unwrap();
    local.write_all(b"from the app").await.unwrap();
    let mut backend = conns.recv().await.unwrap();
    let mut got = [0u8; 12];
    backend.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"from the app");
    backend.write_all(b"to the app").await.unwrap();
    let mut back = [0u8; 10];
    local.read_exact(&mut back).await.unwrap();
    client.kill();
    let end = until_closed(&mut backend, "backend after the client died").await;
    eprintln!("client killed: backend connection ended with {end:?}");
    let report = tokio::time::timeout(LIMIT, reports.recv())
        .await
        .expect("server tunnel did not end")
        .unwrap();
    eprintln!("client killed: server reported {:?}", report.outcome);
    let why = report
        .outcome
        .expect_err("a killed client ends the tunnel as a failure");
    assert!(why.contains("grace period"), "{why}");
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn front_end_restart_on_the_same_port() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let shutdown = CancellationToken::new();
    let (server, _reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let config = front_tls(&pki);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_addr = listener.local_addr().unwrap();
    let first = CancellationToken::new();
    let running = hooks::serve_front(listener, config.clone(), server, None, first.clone());
    let url = format!("https://localhost:{}/", front_addr.port());
    let mut cflags = child::client_flags(&pki);
    cflags.extend(["--tls-ca".to_string(), pki.p("ca.pem")]);
    let client = start_client(&url, &strs(&cflags), &shutdown).await;
    assert_eq!(round_trip(client, b"one").await.unwrap(), b"one");
    first.cancel();
    tokio::time::timeout(LIMIT, running)
        .await
        .expect("front end did not stop")
        .unwrap();
    let listener = TcpListener::bind(front_addr)
        .await
        .expect("rebind front end port");
    let second = CancellationToken::new();
    hooks::serve_front(listener, config, server, None, second.clone());
    for i in 0..20u8 {
        let data = random_bytes(50_000, u64::from(i));
        assert_eq!(round_trip(client, &data).await.unwrap(), data);
    }
    // A client started after the restart dials the new front end.
    let fresh = start_client(&url, &strs(&cflags), &shutdown).await;
    assert_eq!(round_trip(fresh, b"fresh").await.unwrap(), b"fresh");
    second.cancel();
    shutdown.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_close_cycles_return_to_baseline() {
    // 10k in release (CI runs `cargo test --release`); a debug build takes
    // about 6 s per 2k cycles on two cores, so it runs a fifth of them.
    // POSTERN_TEST_CYCLES overrides either.
    let cycles: usize = std::env::var("POSTERN_TEST_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            2_000
        } else {
            10_000
        });
    const CONCURRENCY: usize = 50;
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let server = child::server(&pki, backend.addr, &[]);
    let shutdown = CancellationToken::new();
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let cflags = child::client_flags(&pki);
    let client = start_client(&url, &strs(&cflags), &shutdown).await;
    let server_addr = server.addr;
    let run = |n: usize, offset: usize| async move {
        let mut tasks = tokio::task::JoinSet::new();
        let mut done = 0;
        for i in 0..n {
            if tasks.len() == CONCURRENCY {
                tasks.join_next().await.unwrap().unwrap();
                done += 1;
            }
            let seed = (offset + i) as u64;
            tasks.spawn(async move {
                if seed % 10 == 0 {
                    // A raw connection that opens a tunnel and vanishes.
                    let mut c = rawh2::RawConn::handshake(server_addr).await;
                    let _ = c
                        .send(&rawh2::frame(
                            rawh2::HEADERS,
                            rawh2::END_HEADERS,
                            1,
                            &rawh2::post_block(),
                        ))
                        .await;
                    return;
                }
                let data = random_bytes(1 + (seed as usize * 7919) % 20_000, seed);
                let back = round_trip(client, &data).await.expect("cycle");
                assert_eq!(back, data);
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
            done += 1;
        }
        done
    };
    assert_eq!(run(200, 0).await, 200);
    let (fds0, rss0) = (server.fds(), server.rss_kib());
    let started = std::time::Instant::now();
    assert_eq!(run(cycles, 200).await, cycles);
    let elapsed = started.elapsed();
    // Tunnels end asynchronously on the server: wait (bounded) for the
    // descriptors to come back.
    let deadline = std::time::Instant::now() + LIMIT;
    let fds1 = loop {
        let n = server.fds();
        if n <= fds0 + 2 || std::time::Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (rss1, peak) = (server.rss_kib(), server.peak_kib());
    eprintln!(
        "{cycles} cycles in {elapsed:?}: server fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB (peak {peak} KiB)"
    );
    assert!(
        fds1 <= fds0 + 2,
        "descriptors leaked: {fds0} before, {fds1} after"
    );
    assert!(
        rss1 < rss0 + 64 * 1024,
        "memory did not return: {rss0} KiB before, {rss1} KiB after"
    );
    shutdown.cancel();
}
