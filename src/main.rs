//! The `postern` binary: parse the command line, set up logging and the
//! runtime, run the subcommand, map its result to an exit code.

use std::process::ExitCode;

use clap::Parser;
use postern::cmd::{self, Cli, Command, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Server(_) | Command::Client(_) | Command::Bench(_)
    ) {
        // Every tunnel holds sockets; the default soft limit (often 1024)
        // would cap a process at a few hundred tunnels.
        postern::transport::accept::raise_fd_limit();
    }
    // The demo, doctor and bench speak through stdout; logs would clutter it.
    let quiet = matches!(
        cli.command,
        Command::Demo(_) | Command::Doctor(_) | Command::Bench(_)
    );
    init_tracing(cli.log_format, if quiet { "warn" } else { "info" });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Server(args) => postern::server::run(args).await,
            Command::Client(args) => cmd::client::run(args).await,
            Command::Certs(args) => cmd::certs::run(args),
            Command::Backend(args) => cmd::backend::run(args).await,
            Command::Doctor(args) => postern::doctor::run(args).await,
            Command::Bench(args) => postern::bench::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
