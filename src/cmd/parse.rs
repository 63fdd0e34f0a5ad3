//! Parsing one subcommand's flags from an argument list: how the demo, the
//! benchmark and the tests configure a server or client the user's way. A
//! leaf, so that what it configures never has to import the command tree.

use clap::Parser;

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
    fn parse_args_names_the_subcommand_and_the_bad_flag() {
        let err = parse_args::<crate::server::Args>("server", &["--bogus"]).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("server: "), "{text}");
        assert!(text.contains("--bogus"), "{text}");
    }
}
