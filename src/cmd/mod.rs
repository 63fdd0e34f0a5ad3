//! Command-line interface: the `postern` command and its subcommands. Each
//! subcommand's flags live in a module of their own, next to its `run` where
//! that is a thin adapter; [`parse_args`] parses them from an argument list;
//! `crate::duration` is the parser behind every duration flag.

pub mod backend;
pub mod certs;
pub mod demo;
pub mod doctor;
pub(crate) mod parse;

pub use parse::parse_args;

use clap::{Parser, Subcommand};

use crate::server;

/// End-to-end mutual TLS for TCP services behind HTTP/2 front ends such as Google Cloud Run.
#[derive(Debug, Parser)]
#[command(name = "postern", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format: human-readable, or one JSON object per line (Cloud
    /// Logging) [default: json on Cloud Run (K_SERVICE set), else human].
    #[arg(long, global = true, value_enum, env = "POSTERN_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::logging::LogFormat;

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole path (backend, server, front end, client, app) locally.
    Demo(demo::Args),
    /// Serve tunnels next to the backend (the Cloud Run container).
    Server(server::Args),
    /// Accept local connections and tunnel them to a server.
    #[command(after_help = "Logs go to stderr. POSTERN_LOG sets their filter \
        (`info`, `debug`, `postern=debug,h2=info`, …): info by default, \
        errors only with --stdio, whose stderr is the ssh user's terminal.")]
    Client(crate::client::Args),
    /// Issue a private CA, a server and a client certificate.
    Certs(certs::Args),
    /// Check every step from here to the backend, explaining failures.
    Doctor(doctor::Args),
    /// Run a built-in TCP backend (the original demo's banner server, or echo).
    Backend(backend::Args),
    /// Measure throughput, latency, set-up time, tunnel rate, memory and
    /// fairness on this machine, against raw TCP.
    Bench(crate::bench::Args),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
