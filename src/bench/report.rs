//! The benchmark's figures: one row per measured quantity, Postern beside
//! raw TCP, printed as a table and serialised as JSON.

use std::fmt::Write as _;

use serde::Serialize;

/// Everything one `postern bench` run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Postern's version.
    pub version: &'static str,
    /// Whether `--quick` sizes were used.
    pub quick: bool,
    /// The emulated RTT of the RTT scenarios, in ms.
    pub rtt_ms: u64,
    /// CPUs available to this process.
    pub cpus: usize,
    /// Whose AES-GCM seals the records on this CPU.
    pub record_ciphers: &'static str,
    /// The open-file limit the run had.
    pub fd_limit: u64,
    /// The figures.
    pub rows: Vec<Row>,
}

/// One measured quantity.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario name (as given to `--scenario`).
    pub scenario: &'static str,
    /// What was measured.
    pub metric: String,
    /// Unit of `postern` and `baseline`.
    pub unit: &'static str,
    /// Through Postern (client and server processes, both TLS layers).
    pub postern: Option<f64>,
    /// Raw TCP over the same path (None where it has no meaning).
    pub baseline: Option<f64>,
    /// A derived figure: ratio, added latency, RTTs.
    pub note: String,
}

impl Report {
    /// An empty report.
    pub fn new(quick: bool, rtt_ms: u64, fd_limit: u64) -> Report {
        Report {
            version: env!("CARGO_PKG_VERSION"),
            quick,
            rtt_ms,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            record_ciphers: crate::tls::RecordCiphers::here().name(),
            fd_limit,
            rows: Vec::new(),
        }
    }

    /// Adds a row and echoes it to stderr as progress.
    pub fn add(&mut self, row: Row) {
        eprintln!("    {}", line(&row));
        self.rows.push(row);
    }

    /// The readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "postern {} bench{} on {} CPUs, record ciphers from {}, emulated RTT {} ms",
            self.version,
            if self.quick { " --quick" } else { "" },
            self.cpus,
            self.record_ciphers,
            self.rtt_ms
        );
        let _ = writeln!(
            out,
            "{:<9} {:<40} {:>10} {:>10} {:<6} note",
            "scenario", "metric", "postern", "raw TCP", "unit"
        );
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

fn line(row: &Row) -> String {
    format!(
        "{:<9} {:<40} {:>10} {:>10} {:<6} {}",
        row.scenario,
        row.metric,
        num(row.postern),
        num(row.baseline),
        row.unit,
        row.note
    )
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The `q` quantile (0..=1) of `samples`, sorting them.
pub(super) fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() - 1) as f64 * q).round() as usize;
    samples[i]
}
