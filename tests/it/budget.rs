//! `--buffer-budget-mib` covers what sessions hold, on both sides: tunnels
//! whose applications send and never read fill every buffer they can (the
//! echo backend sends it all back), and the server's and the client's RSS
//! must stay within the budget plus a fixed overhead, then go back down
//! once the tunnels end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::harness::child::{self, Proc};
use crate::harness::{strs, Backend, Pki, TestBackend};

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
    } in load().await
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
    } in load().await
    {
        assert!(
            after.saturating_sub(base) <= AFTER_MIB << 10,
            "{who}: RSS {after} KiB after every tunnel ended, baseline {base} KiB"
        );
    }
}

/// Runs the load and measures both sides.
async fn load() -> [Figures; 2] {
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let budget = BUDGET_MIB.to_string();
    let server = child::server(&pki, backend.addr, &["--buffer-budget-mib", &budget]);
    let url = format!("http://127.0.0.1:{}/", server.addr.port());
    let mut cflags = vec![
        "--url".to_string(),
        url,
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--buffer-budget-mib".into(),
        budget.clone(),
    ];
    cflags.extend(child::client_flags(&pki));
    let client = Proc::start("client", &strs(&cflags), "listen");

    // Warm up, so the baselines include a used TLS stack and pool.
    let data = crate::harness::random_bytes(1 << 20, 1);
    let back = crate::harness::round_trip(client.addr, &data)
        .await
        .unwrap();
    assert_eq!(back, data);
    let (server_fds, client_fds) = (server.fds(), client.fds());
    let (server_base, client_base) = (server.rss_kib(), client.rss_kib());

    let written = Arc::new(AtomicU64::new(0));
    let mut socks = Vec::new();
    let mut writers = Vec::new();
    for i in 0..TUNNELS {
        let sock = TcpStream::connect(client.addr).await.expect("connect");
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
        "{TUNNELS} never-reading tunnels, {} MiB written: server RSS {server_base} KiB, \
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
