//! `--buffer-budget-mib` covers what sessions hold, on both sides: tunnels
//! whose applications send and never read fill every buffer they can (the
//! echo backend sends it all back), and the server's and the client's RSS
//! must stay within the budget plus a fixed overhead, then go back down
//! once the tunnels end. The same load runs through the client's SOCKS5
//! listener, 500 tunnels at the default budget, each naming its destination.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::child::{self, Proc};
use crate::harness::{server_flags, strs, Backend, Pki, TempDir, TestBackend, CLIENT_ID};

const TUNNELS: usize = 100;
const BUDGET_MIB: u64 = 64;
/// What each tunnel tries to write: more than both sides' buffers of one
/// session (two 8 MiB windows) and the kernel's socket buffers can take.
const PER_TUNNEL: u64 = 24 << 20;
/// Beyond the budget: per-tunnel TLS, copy and socket state, the h2
/// connections, allocator slack.
const OVERHEAD_MIB: u64 = 160;
/// What may stay above the baseline once every tunnel has ended.
const AFTER_MIB: u64 = 48;

/// The SOCKS5 load: as many tunnels as the sizing figures in
/// docs/cloud-run.md, at the default budget.
const SOCKS_TUNNELS: usize = 500;
const DEFAULT_BUDGET_MIB: u64 = 256;
/// docs/cloud-run.md's sizing formula: each stalled tunnel costs up to about
/// 0.7 MiB beyond the budget, the process about 15 MiB.
const PER_TUNNEL_KIB: u64 = 717;
const PROCESS_MIB: u64 = 15;
/// The client's HTTP/2 receive windows are outside its budget (documented):
/// up to 64 MiB per connection while the budget is pressed, one connection
/// per 100 tunnels.
const CLIENT_WINDOWS_MIB: u64 = 64;
const STREAMS_PER_CONNECTION: usize = 100;

/// How the load's tunnels enter the client.
#[derive(Clone, Copy)]
enum Via {
    /// A fixed forward (`--listen`) to the route's backend.
    Forward,
    /// The SOCKS5 listener, each tunnel naming the backend as its destination.
    Socks5,
}

/// RSS in KiB: before the load, at its peak, after every tunnel ended.
struct Figures {
    who: &'static str,
    base: u64,
    peak: u64,
    after: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_reading_tunnels_stay_within_the_budget_on_both_sides() {
    let bound = (BUDGET_MIB + OVERHEAD_MIB) << 10;
    for Figures {
        who, base, peak, ..
    } in load(Via::Forward, TUNNELS, Some(BUDGET_MIB)).await
    {
        assert!(
            peak.saturating_sub(base) <= bound,
            "{who}: RSS grew from {base} KiB to a peak of {peak} KiB, past the \
             {BUDGET_MIB} MiB budget plus {OVERHEAD_MIB} MiB"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_goes_back_once_never_reading_tunnels_end() {
    for Figures {
        who, base, after, ..
    } in load(Via::Forward, TUNNELS, Some(BUDGET_MIB)).await
    {
        assert!(
            after.saturating_sub(base) <= AFTER_MIB << 10,
            "{who}: RSS {after} KiB after every tunnel ended, baseline {base} KiB"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks_tunnels_that_never_read_stay_within_the_budget_and_give_it_back() {
    let formula = (PROCESS_MIB + DEFAULT_BUDGET_MIB) * 1024 + SOCKS_TUNNELS as u64 * PER_TUNNEL_KIB;
    let windows =
        (SOCKS_TUNNELS.div_ceil(STREAMS_PER_CONNECTION) as u64 * CLIENT_WINDOWS_MIB) << 10;
    for Figures {
        who,
        base,
        peak,
        after,
    } in load(Via::Socks5, SOCKS_TUNNELS, None).await
    {
        let bound = formula + if who == "client" { windows } else { 0 };
        assert!(
            peak.saturating_sub(base) <= bound,
            "{who}: RSS grew from {base} KiB to a peak of {peak} KiB through SOCKS5, past \
             {bound} KiB (the sizing formula for {SOCKS_TUNNELS} tunnels)"
        );
        assert!(
            after.saturating_sub(base) <= AFTER_MIB << 10,
            "{who}: RSS {after} KiB after every SOCKS5 tunnel ended, baseline {base} KiB"
        );
    }
}

/// Runs the load (`tunnels` tunnels entering by `via`, both sides at
/// `budget` MiB, else the default) and measures both sides.
async fn load(via: Via, tunnels: usize, budget: Option<u64>) -> [Figures; 2] {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let budget: Vec<String> = match budget {
        Some(mib) => vec!["--buffer-budget-mib".into(), mib.to_string()],
        None => Vec::new(),
    };
    let dir = TempDir::new("budget");
    let server = match via {
        Via::Forward => child::server(&pki, backend.addr, &strs(&budget)),
        Via::Socks5 => {
            // The backend is a destination this identity may name, with
            // room per identity for the whole load.
            let config = dir.write(
                "postern.toml",
                &format!(
                    "[[route]]\npath = \"/\"\nbackend = \"127.0.0.1:9\"\n\n\
                     [destinations]\nmax_tunnels_per_identity = {}\n\
                     [[destinations.rule]]\nname = \"echo\"\nallow = [\"{CLIENT_ID}\"]\n\
                     to = [\"127.0.0.1/32\"]\nports = [{}]\n",
                    tunnels + 1,
                    backend.addr.port()
                ),
            );
            let mut args = vec!["--listen".to_string(), "127.0.0.1:0".into()];
            args.extend(["--config".into(), config]);
            args.extend(server_flags(&pki));
            args.extend(budget.iter().cloned());
            Proc::start("server", &strs(&args), "addr")
        }
    };
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let entry = match via {
        Via::Forward => "--listen",
        Via::Socks5 => "--socks5",
    };
    let mut cflags = vec!["--url".to_string(), url, entry.into(), "127.0.0.1:0".into()];
    cflags.extend(budget.iter().cloned());
    cflags.extend(child::client_flags(&pki));
    let client = Proc::start("client", &strs(&cflags), "listen");
    let (client, server) = (&client, &server);
    let open = |i: u64| async move {
        match open(via, client.addr, backend.addr).await {
            Ok(sock) => sock,
            Err(e) => panic!(
                "tunnel {i}: {e}\nclient:\n{}\nserver:\n{}",
                client.log_text(),
                server.log_text()
            ),
        }
    };

    // Warm up, so the baselines include a used TLS stack and pool.
    let data = crate::harness::random_bytes(1 << 20, 1);
    let mut warm = open(0).await;
    let (mut rd, mut wr) = warm.split();
    let mut back = Vec::new();
    let (sent, read) = tokio::join!(
        async {
            wr.write_all(&data).await?;
            wr.shutdown().await
        },
        rd.read_to_end(&mut back)
    );
    sent.unwrap();
    read.unwrap();
    assert_eq!(back, data);
    drop(warm);
    let (server_fds, client_fds) = (server.fds(), client.fds());
    let (server_base, client_base) = (server.rss_kib(), client.rss_kib());

    let written = Arc::new(AtomicU64::new(0));
    let mut socks = Vec::new();
    let mut writers = Vec::new();
    for i in 0..tunnels {
        let sock = open(i as u64).await;
        let (rd, mut wr) = sock.into_split();
        // Kept unread: the echo comes back to an application that never reads.
        socks.push(rd);
        let written = written.clone();
        let chunk = crate::harness::random_bytes(64 << 10, i as u64);
        writers.push(tokio::spawn(async move {
            let mut sent = 0;
            while sent < PER_TUNNEL {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
                sent += chunk.len() as u64;
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            wr
        }));
    }
    // Until every writer is stuck: no progress for three seconds.
    let (mut last, mut still) = (0, 0);
    for _ in 0..600 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = written.load(Ordering::Relaxed);
        still = if now == last { still + 1 } else { 0 };
        last = now;
        if still >= 6 || writers.iter().all(|w| w.is_finished()) {
            break;
        }
    }
    let (server_peak, client_peak) = (server.peak_kib(), client.peak_kib());
    eprintln!(
        "{tunnels} never-reading tunnels, {} MiB written: server RSS {server_base} KiB, \
         peak {server_peak} KiB; client RSS {client_base} KiB, peak {client_peak} KiB",
        last >> 20
    );

    for w in writers {
        w.abort();
    }
    drop(socks);
    // Once both have closed every tunnel (their descriptors are back).
    for _ in 0..1200 {
        if server.fds() <= server_fds && client.fds() <= client_fds {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The allocator gives freed pages back over its decay time (10 s):
    // wait until both are back near their baseline, or 30 s have passed.
    let near = |rss: u64, base: u64| rss.saturating_sub(base) <= AFTER_MIB << 10;
    let (mut server_after, mut client_after) = (server.rss_kib(), client.rss_kib());
    for _ in 0..300 {
        if near(server_after, server_base) && near(client_after, client_base) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        (server_after, client_after) = (server.rss_kib(), client.rss_kib());
    }
    eprintln!("after: server RSS {server_after} KiB, client RSS {client_after} KiB");

    [
        Figures {
            who: "server",
            base: server_base,
            peak: server_peak,
            after: server_after,
        },
        Figures {
            who: "client",
            base: client_base,
            peak: client_peak,
            after: client_after,
        },
    ]
}

/// One tunnel into the client: a connection to its listener, and for SOCKS5
/// the no-auth greeting and a CONNECT to `backend` answered with success.
async fn open(via: Via, entry: SocketAddr, backend: SocketAddr) -> Result<TcpStream, String> {
    let mut sock = TcpStream::connect(entry).await.expect("connect");
    if let Via::Socks5 = via {
        let IpAddr::V4(ip) = backend.ip() else {
            panic!("an IPv4 backend")
        };
        let mut hello = vec![5, 1, 0, 5, 1, 0, 1];
        hello.extend_from_slice(&ip.octets());
        hello.extend_from_slice(&backend.port().to_be_bytes());
        sock.write_all(&hello).await.expect("SOCKS5 request");
        // The method's reply, then CONNECT's with an IPv4 bound address.
        let mut reply = [0u8; 12];
        sock.read_exact(&mut reply)
            .await
            .map_err(|e| format!("SOCKS5 reply: {e}"))?;
        if reply[..4] != [5, 0, 5, 0] {
            return Err(format!("SOCKS5 method and CONNECT reply {reply:?}"));
        }
    }
    Ok(sock)
}
