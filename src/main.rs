//! The `postern` binary: parse the command line, set up logging and the
//! runtime, run the subcommand, map its result to an exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use postern::cmd::{self, Cli, Command, LogFormat};

/// jemalloc, with its background thread, gives the buffers of ended tunnels
/// back to the OS within seconds; glibc's malloc kept hundreds of MiB after
/// a burst of slow readers until the process exited.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Purge freed pages on jemalloc's own thread, whether or not the
    // workers that freed them allocate again (they may sit idle).
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        eprintln!("warning: jemalloc's background thread: {e}");
    }
    if matches!(
        cli.command,
        Command::Server(_) | Command::Client(_) | Command::Bench(_)
    ) {
        // Every tunnel holds sockets; the default soft limit (often 1024)
        // would cap a process at a few hundred tunnels.
        postern::raise_fd_limit();
    }
    let stdio = matches!(&cli.command, Command::Client(args) if args.stdio);
    let default_level = match cli.command {
        // The demo, doctor and bench speak through stdout; logs would clutter it.
        Command::Demo(_) | Command::Doctor(_) | Command::Bench(_) => "warn",
        // A stdio client's stderr is ssh's terminal: every line lands in the
        // user's session, and the error that ends a tunnel is printed anyway.
        Command::Client(_) if stdio => "error",
        _ => "info",
    };
    let log_format = cli.log_format.unwrap_or_else(LogFormat::default_here);
    postern::logging::init(log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if log_format == LogFormat::Json {
        // Trace names need the project; bounded so a slow metadata server
        // delays start-up by seconds at most.
        runtime.block_on(postern::logging::discover_project(Duration::from_secs(2)));
    }
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Demo(args) => cmd::demo::run(args).await,
            Command::Server(args) => postern::server::run(args).await,
            Command::Client(args) => postern::client::run(args).await,
            Command::Certs(args) => cmd::certs::run(args),
            Command::Backend(args) => cmd::backend::run(args).await,
            Command::Doctor(args) => postern::doctor::run(args).await,
            Command::Bench(args) => postern::bench::run(args).await,
        }
    });
    if stdio {
        // Tokio reads stdin on a blocking thread, and a read(2) cannot be
        // cancelled: dropping the runtime would wait for the next byte on a
        // stdin that may stay open and silent for good (ssh's does). Nothing
        // else is left to wait for (the session has settled), and the
        // process exits right after, taking that thread with it.
        runtime.shutdown_background();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
