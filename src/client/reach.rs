//! How the client reaches the front end: over HTTP/2 or WebSocket
//! (`--transport`), straight or through a forward proxy (`--proxy`, the
//! environment; see `proxy`).

/// What carries the tunnels to the front end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// One HTTP/2 POST stream per tunnel, many tunnels per connection.
    #[default]
    H2,
    /// One WebSocket (HTTP/1.1 upgrade) per tunnel: for front ends and
    /// networks that do not pass HTTP/2 (Cloud Run's default HTTP/1 mode,
    /// proxies that downgrade).
    Websocket,
    /// HTTP/2 where the front end's ALPN offers it, WebSocket where it
    /// offers only HTTP/1.1 (remembered per URL); h2c for `http://` URLs.
    Auto,
}

/// The flags that choose how the front end is reached.
#[derive(Debug, Clone, clap::Args)]
pub struct ReachArgs {
    /// What carries tunnels to the front end: `h2` (HTTP/2 streams),
    /// `websocket` (one WebSocket per tunnel, over HTTP/1.1) or `auto`
    /// (HTTP/2 where the front end offers it, else WebSocket).
    #[arg(long, env = "POSTERN_TRANSPORT", value_enum, default_value_t = Transport::H2)]
    pub transport: Transport,
    /// Forward proxy to reach the front end through: `http://[USER:PASSWORD@]HOST:PORT`
    /// (HTTP CONNECT), or `none` to ignore the environment. Without it,
    /// `HTTPS_PROXY`/`https_proxy`, `ALL_PROXY` (and `HTTP_PROXY` for
    /// `http://` URLs) apply, as curl reads them; `NO_PROXY` (host names,
    /// `.domain` suffixes, CIDR ranges, `*`) applies to both.
    #[arg(
        long,
        env = "POSTERN_PROXY",
        value_name = "URL|none",
        hide_env_values = true
    )]
    pub proxy: Option<String>,
    /// Proxy credentials `USER:PASSWORD` (Basic), beating any in the proxy
    /// URL. Give them by environment or file, not on the command line,
    /// to keep them out of `ps`; never logged.
    #[arg(
        long,
        env = "POSTERN_PROXY_CREDENTIALS",
        hide_env_values = true,
        conflicts_with = "proxy_credentials_file"
    )]
    pub proxy_credentials: Option<String>,
    /// File holding the proxy credentials `USER:PASSWORD` (one line).
    #[arg(long, env = "POSTERN_PROXY_CREDENTIALS_FILE")]
    pub proxy_credentials_file: Option<std::path::PathBuf>,
}

impl ReachArgs {
    /// The egress these flags describe (reads the credentials file).
    pub fn egress(&self) -> anyhow::Result<super::proxy::Egress> {
        #[allow(clippy::disallowed_methods)] // startup, before any tunnel runs
        let from_file = match &self.proxy_credentials_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        anyhow::anyhow!("--proxy-credentials-file {}: {e}", path.display())
                    })?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        super::proxy::Egress::new(
            self.proxy.as_deref(),
            from_file.as_deref().or(self.proxy_credentials.as_deref()),
        )
    }
}
