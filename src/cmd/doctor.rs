//! `postern doctor`'s flags (the checks themselves are [`crate::doctor`]).

use crate::client::Args as ClientArgs;

/// `postern doctor`: check every step from here to the backend.
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct Args {
    /// The client flags, exactly as for `postern client` (--url required).
    #[command(flatten)]
    pub client: ClientArgs,
    /// Also measure throughput by echoing this many MiB through a tunnel.
    /// Only for a route whose backend echoes (e.g. `--backend builtin:echo`).
    #[arg(long, value_name = "MIB")]
    pub throughput: Option<u32>,
}
