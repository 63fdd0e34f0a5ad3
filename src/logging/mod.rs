//! Logging: human lines on a terminal, or JSON lines Cloud Logging
//! understands (`severity`, `message`, `time`, and
//! `logging.googleapis.com/trace` on the lines of a tunnel whose request
//! carried a trace header).
//!
//! - `cloud`: the JSON formatter;
//! - `trace`: reading `X-Cloud-Trace-Context` and `traceparent`, and the
//!   project the trace resource name needs.
//!
//! The JSON layer is written here rather than taken from
//! `tracing-stackdriver`: that crate fills the trace field only through
//! OpenTelemetry (`opentelemetry` and `tracing-opentelemetry` for one
//! header), renames every field to camelCase (with `Inflector` and `regex`),
//! and still needs `tracing-subscriber`'s JSON fields underneath, which is
//! all this module uses.

mod cloud;
mod trace;

use std::io::IsTerminal as _;

pub use cloud::CloudLogging;
pub use trace::{discover_project, trace_id, TRACE_FIELD};

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (ANSI colours only when stderr is a terminal).
    Human,
    /// JSON lines for Cloud Logging.
    Json,
}

impl LogFormat {
    /// The format when none is given: JSON on Cloud Run (where `K_SERVICE`
    /// is always set and stderr goes to Cloud Logging), human elsewhere.
    pub fn default_here() -> LogFormat {
        match std::env::var_os("K_SERVICE") {
            Some(v) if !v.is_empty() => LogFormat::Json,
            _ => LogFormat::Human,
        }
    }
}

/// Installs the global subscriber: `POSTERN_LOG` (an `EnvFilter`
/// directive) or `default_level`, written to stderr in `format`.
pub fn init(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Escape codes in a file, a pipe or Cloud Logging are noise.
        LogFormat::Human => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(CloudLogging)
            .init(),
    }
}
