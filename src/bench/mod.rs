//! `postern bench`: measures Postern on this machine over loopback, as
//! deployed: `postern server` and `postern client` run as separate child
//! processes with outer TLS (ALPN h2) and inner mTLS between them, traffic
//! comes from a backend and an app inside this process, and a userspace
//! relay emulates a round-trip time. Every scenario also measures raw TCP
//! through the same backend (and relay), so ratios hold on a noisy machine.

// The benchmark's driver writes its report once, after the measurements.
#![allow(clippy::disallowed_methods)]

mod args;
mod floor;
mod procs;
mod relay;
mod report;
mod scenarios;
mod traffic;

use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use args::Args;
pub use report::{Report, Row};

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Scenario {
    /// One tunnel: upload, then download, content verified; CPU per GB.
    Bulk,
    /// 1-byte ping-pong on an idle connection; again through a client and
    /// server started with `--busy-poll 100us`.
    Latency,
    /// 1-byte ping-pong on a tunnel sharing its HTTP/2 connection with a
    /// bulk one (downloading, then uploading), at 0 ms and at the RTT, and
    /// what the bulk keeps of its throughput alone.
    Beside,
    /// Local connect to first byte: open and cold connection and new
    /// processes at 0 ms, open and cold connection at the RTT (cold also
    /// without 0-RTT on the outer hop).
    Setup,
    /// New tunnels per second (connect, 1 byte each way, close).
    Rate,
    /// One tunnel's throughput at the emulated RTT.
    RttBulk,
    /// Eight tunnels sharing one HTTP/2 connection.
    Fairness,
    /// Resume: bulk with sessions against `--no-resume`, the time from a
    /// cut to data flowing again, and the slowest echo while the session
    /// moves to fresh requests.
    Resume,
    /// Destinations: first byte through `--socks5` against a fixed `--to`
    /// forward at the RTT, and new SOCKS5 tunnels per second.
    Destinations,
    /// The WebSocket transport beside HTTP/2 (`--transport websocket`
    /// against the main client): bulk and CPU per GB, idle ping-pong,
    /// first byte and new tunnels per second.
    Websocket,
    /// RSS per idle tunnel in each process, in a client and server started
    /// for it (last: it leaves thousands of tunnels closing).
    Memory,
}

/// Sizes and counts for one run.
#[derive(Debug, Clone)]
pub struct Sizes {
    /// Bytes per bulk direction.
    pub bulk: u64,
    /// Ping-pong samples.
    pub pings: usize,
    /// Set-up samples at 0 ms and at the RTT.
    pub setups: (usize, usize),
    /// How long the rate scenario runs.
    pub rate_for: Duration,
    /// Idle tunnel counts for the memory scenario.
    pub idle: Vec<usize>,
    /// Bytes per RTT-bulk direction.
    pub rtt_bulk: u64,
    /// How long the fairness scenario runs.
    pub fair_for: Duration,
    /// Cuts in the resume scenario.
    pub cuts: usize,
    /// Extra flags for the main client.
    pub client_flags: Vec<String>,
}

impl Sizes {
    fn new(args: &Args) -> Sizes {
        const MIB: u64 = 1024 * 1024;
        let mut s = if args.quick {
            Sizes {
                bulk: 256 * MIB,
                pings: 500,
                setups: (30, 6),
                rate_for: Duration::from_secs(3),
                idle: vec![1000],
                rtt_bulk: 64 * MIB,
                fair_for: Duration::from_secs(2),
                cuts: 5,
                client_flags: Vec::new(),
            }
        } else {
            Sizes {
                bulk: 1024 * MIB,
                pings: 3000,
                setups: (100, 20),
                rate_for: Duration::from_secs(10),
                idle: vec![1000, 10_000],
                rtt_bulk: 256 * MIB,
                fair_for: Duration::from_secs(5),
                cuts: 15,
                client_flags: Vec::new(),
            }
        };
        if let Some(n) = args.max_streams_per_connection {
            s.client_flags = vec!["--max-streams-per-connection".into(), n.to_string()];
        }
        if let Some(mib) = args.bulk_mib {
            s.bulk = mib.max(1) * MIB;
            s.rtt_bulk = s.rtt_bulk.min(s.bulk);
        }
        s
    }
}

/// Runs the benchmark: progress on stderr, the table on stdout.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let fd_limit = crate::transport::accept::raise_fd_limit();
    let mut scenarios = args.scenarios.clone();
    if scenarios.is_empty() {
        use clap::ValueEnum as _;
        scenarios = Scenario::value_variants().to_vec();
    }
    scenarios.sort();
    scenarios.dedup();
    let sizes = Sizes::new(&args);
    let rtt = args.rtt();
    let interrupt = crate::signal::shutdown_token();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let mut report = Report::new(args.quick, rtt.as_millis() as u64, fd_limit);
    let work = scenarios::run_all(&scenarios, &sizes, rtt, stop.clone(), &mut report);
    tokio::select! {
        r = work => r?,
        _ = interrupt.cancelled() => anyhow::bail!("interrupted"),
    }
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("--json {}", path.display()))?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}
