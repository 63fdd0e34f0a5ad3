//! `postern bench`'s flags (the benchmark itself is [`super::run`]).

use std::path::PathBuf;
use std::time::Duration;

use super::Scenario;
use crate::duration::parse_interval;

/// `postern bench`: throughput, latency (idle and beside a bulk tunnel), set-up time, tunnel rate, memory and fairness.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Smaller sizes and counts: finishes in under a minute.
    #[arg(long)]
    pub quick: bool,
    /// Also write the figures to this file as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Round-trip time the relay emulates for the RTT scenarios, e.g. `20ms`
    /// (a bare number is seconds; 0 leaves the RTT scenarios at loopback)
    /// [default: 20ms].
    #[arg(long, value_parser = parse_interval, conflicts_with = "rtt_ms")]
    pub rtt: Option<Duration>,
    /// The same in milliseconds, as earlier versions took it.
    #[arg(long, hide = true)]
    pub rtt_ms: Option<u64>,
    /// Run only these scenarios [default: all].
    #[arg(long = "scenario", value_enum, num_args = 1..)]
    pub scenarios: Vec<Scenario>,
    /// `--max-streams-per-connection` for the main client (the cold-connection
    /// clients always use 1).
    #[arg(long, value_name = "N")]
    pub max_streams_per_connection: Option<usize>,
    /// Bulk transfer size per direction in MiB [default: 1024, 256 with --quick].
    #[arg(long, value_name = "MIB")]
    pub bulk_mib: Option<u64>,
}

impl Args {
    /// The emulated round-trip time: `--rtt`, else `--rtt-ms`, else 20 ms.
    pub fn rtt(&self) -> Duration {
        self.rtt
            .or(self.rtt_ms.map(Duration::from_millis))
            .unwrap_or(Duration::from_millis(20))
    }
}
