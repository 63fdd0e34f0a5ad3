//! Command-line interface: the `postern` command and its subcommands. Each
//! subcommand's flags live next to its `run`, in its own module.

pub mod duration;

use clap::{Parser, Subcommand};

use crate::server::backend;
use crate::{bench, client, demo, doctor, pki, server};

/// End-to-end mutual TLS for TCP services behind HTTP/2 front ends such as Google Cloud Run.
#[derive(Debug, Parser)]
#[command(name = "postern", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format: human-readable, or one JSON object per line (Cloud Logging).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "POSTERN_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// JSON lines.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole path (backend, server, front end, client, app) locally.
    Demo(demo::Args),
    /// Serve tunnels next to the backend (the Cloud Run container).
    Server(server::Args),
    /// Accept local connections and tunnel them to a server.
    Client(client::Args),
    /// Issue a private CA, a server and a client certificate.
    Certs(pki::Args),
    /// Check every step from here to the backend, explaining failures.
    Doctor(doctor::Args),
    /// Run a built-in TCP backend (the original demo's banner server, or echo).
    Backend(backend::Args),
    /// Measure throughput, latency, set-up time, tunnel rate, memory and
    /// fairness on this machine, against raw TCP.
    Bench(bench::Args),
}

/// Parses one subcommand's flags from `argv` exactly as the command line
/// would, so the demo, benchmark and tests configure things the user's way.
pub fn parse_args<T: clap::Args>(name: &str, argv: &[&str]) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct One<T: clap::Args> {
        #[command(flatten)]
        args: T,
    }
    let argv = std::iter::once(name).chain(argv.iter().copied());
    One::<T>::try_parse_from(argv)
        .map(|one| one.args)
        .map_err(|e| anyhow::anyhow!("{name}: {}", e.to_string().trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn parse_args_names_the_subcommand_and_the_bad_flag() {
        let err = parse_args::<crate::server::Args>("server", &["--bogus"]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("server: "), "{text}");
        assert!(text.contains("--bogus"), "{text}");
    }
}
