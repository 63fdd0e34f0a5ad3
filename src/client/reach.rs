//! How the client reaches the front end: over HTTP/2 or WebSocket
//! (`--transport`).

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
}
