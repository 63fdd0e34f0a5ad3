//! `postern demo`: the whole path on loopback (see [`crate::demo`]).

use std::path::PathBuf;

/// `postern demo`: run the whole path locally and print what each hop does.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the generated certificates in this directory instead of a temporary one.
    #[arg(long)]
    pub keep_certs: Option<PathBuf>,
}

/// Runs the demo in `--keep-certs` or a temporary directory, removed after.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let dir = match &args.keep_certs {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("postern-demo-{}", std::process::id())),
    };
    let result = crate::demo::run(&dir).await;
    if args.keep_certs.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}
