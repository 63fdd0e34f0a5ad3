//! What a resumed carrier is worth to its connection, through a real
//! `postern server` child process: a carrier resumed onto a new connection
//! counts there as an authenticated tunnel's request, so the connection is
//! not closed as idle under it and earns the raised windows (seen in the
//! frames the server sends, through a relay that reads them).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::harness::child;
use crate::harness::rawh2;
use crate::harness::*;

/// SETTINGS_INITIAL_WINDOW_SIZE.
const INITIAL_WINDOW_SIZE: u16 = 0x4;
/// How late the server's first bytes on each connection reach the client.
const SETTINGS_DELAY: Duration = Duration::from_millis(200);
/// The stream window an authenticated tunnel's connection gets.
const RAISED_STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// What the server sent on one relayed connection.
#[derive(Debug, Default, Clone)]
struct ServerSide {
    /// SETTINGS_INITIAL_WINDOW_SIZE values, in order.
    stream_windows: Vec<u32>,
    /// The sum of the connection-level WINDOW_UPDATE increments.
    connection_credit: u64,
    goaway: bool,
    closed: bool,
}

/// A TCP relay from the client to the server that reads the HTTP/2 frames
/// the server sends (h2c: plain frames after the client's preface), and can
/// cut every connection it carries, as a front end that restarts does.
struct Relay {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<ServerSide>>>,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let conns = Arc::new(Mutex::new(Vec::new()));
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (c, t) = (conns.clone(), tasks.clone());
        tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                let index = {
                    let mut c = c.lock().unwrap();
                    c.push(ServerSide::default());
                    c.len() - 1
                };
                let task = tokio::spawn(relay(down, server, c.clone(), index));
                t.lock().unwrap().push(task);
            }
        });
        Relay { addr, conns, tasks }
    }

    fn conns(&self) -> Vec<ServerSide> {
        self.conns.lock().unwrap().clone()
    }

    /// Drops both sockets of every connection relayed so far.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Waits (bounded) until `cond` holds for what the server sent.
    async fn wait_for(&self, what: &str, cond: impl Fn(&[ServerSide]) -> bool) -> Vec<ServerSide> {
        let deadline = tokio::time::Instant::now() + LIMIT;
        loop {
            let conns = self.conns();
            if cond(&conns) {
                return conns;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for: {what}; saw {conns:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn relay(
    down: TcpStream,
    server: SocketAddr,
    conns: Arc<Mutex<Vec<ServerSide>>>,
    index: usize,
) {
    let Ok(up) = TcpStream::connect(server).await else {
        return;
    };
    let _ = (down.set_nodelay(true), up.set_nodelay(true));
    let (mut down_read, mut down_write) = down.into_split();
    let (mut up_read, mut up_write) = up.into_split();
    let to_server = async {
        let _ = tokio::io::copy(&mut down_read, &mut up_write).await;
        let _ = up_write.shutdown().await;
    };
    let to_client = async {
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        // The server's first SETTINGS reach the client late, as across a
        // real round trip: a resume (sent with the preface) then arrives
        // before the client has acknowledged them, while a change of
        // SETTINGS cannot be sent yet.
        let mut first = true;
        loop {
            let n = match up_read.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            if std::mem::take(&mut first) {
                tokio::time::sleep(SETTINGS_DELAY).await;
            }
            while let Some(rawh2::Frame {
                kind,
                flags,
                stream,
                payload,
            }) = rawh2::Frame::first(&buf)
            {
                let len = payload.len();
                {
                    let mut c = conns.lock().unwrap();
                    let side = &mut c[index];
                    match kind {
                        rawh2::SETTINGS if flags & rawh2::ACK == 0 => {
                            for setting in payload.chunks_exact(6) {
                                let id = u16::from_be_bytes([setting[0], setting[1]]);
                                let value = u32::from_be_bytes([
                                    setting[2], setting[3], setting[4], setting[5],
                                ]);
                                if id == INITIAL_WINDOW_SIZE {
                                    side.stream_windows.push(value);
                                }
                            }
                        }
                        rawh2::WINDOW_UPDATE if stream == 0 && len == 4 => {
                            let increment = u32::from_be_bytes([
                                payload[0], payload[1], payload[2], payload[3],
                            ]) & 0x7fff_ffff;
                            side.connection_credit += u64::from(increment);
                        }
                        rawh2::GOAWAY => side.goaway = true,
                        _ => {}
                    }
                }
                if down_write.write_all(&buf[..9 + len]).await.is_err() {
                    return;
                }
                buf.drain(..9 + len);
            }
        }
        let _ = down_write.shutdown().await;
    };
    tokio::join!(to_server, to_client);
    conns.lock().unwrap()[index].closed = true;
}

/// One echo through the open tunnel `sock`.
async fn echo_once(sock: &mut TcpStream, seed: u64) {
    let data = random_bytes(4096, seed);
    sock.write_all(&data).await.expect("write to the tunnel");
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(LIMIT, sock.read_exact(&mut back))
        .await
        .expect("echo timed out")
        .expect("echo read");
    assert_eq!(back, data, "echo {seed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_carrier_keeps_its_connection_and_earns_the_raised_windows() {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    // Short enough that a connection counted idle under the carrier would
    // get its GOAWAY well within the time the tunnel stays busy below.
    let idle = Duration::from_millis(500);
    let server = child::server(&pki, backend.addr, &["--connection-idle-timeout", "500ms"]);
    let relay = Relay::start(server.addr).await;
    let shutdown = CancellationToken::new();
    let client = start_client(
        &format!("http://{}/", relay.addr),
        &strs(&child::client_flags(&pki)),
        &shutdown,
    )
    .await;
    let mut sock = TcpStream::connect(client).await.expect("connect client");
    echo_once(&mut sock, 1).await;
    // The first connection's tunnel authenticated in its inner handshake:
    // the frames that raise the windows are what the relay must see.
    let raised = |s: &ServerSide| {
        s.stream_windows.contains(&RAISED_STREAM_WINDOW)
            && s.connection_credit >= u64::from(RAISED_STREAM_WINDOW)
    };
    relay
        .wait_for("the first connection's raised windows", |c| raised(&c[0]))
        .await;

    relay.cut();
    echo_once(&mut sock, 2).await;
    let conns = relay.conns();
    assert_eq!(conns.len(), 2, "one connection after the cut: {conns:?}");
    let resumed = server.wait_log_lines("session resumed").await;
    assert_eq!(resumed.len(), 1, "one resume: {resumed:?}");

    // Busy for several idle timeouts: the connection carrying the resumed
    // carrier has an open request all along.
    for seed in 3..(3 + 6 * idle.as_millis() as u64 / 100) {
        echo_once(&mut sock, seed).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let conns = relay
        .wait_for("the resumed carrier's connection's raised windows", |c| {
            c.len() != 2 || raised(&c[1])
        })
        .await;
    assert_eq!(
        conns.len(),
        2,
        "the carrier moved again (its connection was closed): {conns:?}"
    );
    assert!(
        !conns[1].goaway && !conns[1].closed,
        "the connection carrying the resumed carrier was closed as idle: {:?}",
        conns[1]
    );
    assert_eq!(
        server.log_lines("session resumed").len(),
        1,
        "the session had to resume again"
    );

    // Once the tunnel ends, its carrier no longer holds the connection open.
    sock.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(LIMIT, sock.read_to_end(&mut rest))
        .await
        .expect("tunnel end timed out")
        .expect("tunnel end");
    relay
        .wait_for("the idle GOAWAY once the tunnel has ended", |c| c[1].goaway)
        .await;
    shutdown.cancel();
}
