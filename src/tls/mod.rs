//! rustls configurations for both TLS layers, and the peer identity a
//! finished handshake yields.
//!
//! - The *outer* layer is ordinary web TLS between `postern client` and the
//!   front end (or a self-hosted `postern server`): ALPN `h2`, public roots.
//! - The *inner* layer is the end-to-end mTLS that runs inside each tunnel.
//!   It always verifies both sides against private CAs; there is no switch to
//!   make it verify less, only `--no-inner-tls` to leave it out entirely.
//!
//! Certificates are served through [`CertSlot`], a resolver whose contents can
//! be swapped while tunnels are open, so reloads never touch live sessions.

mod config;
pub mod early;
mod failure;
mod intercept;
pub mod pem;
mod provider;
mod slot;
mod verify;

pub use config::{
    inner_client_config, inner_client_config_pinned, inner_server_config, outer_client_config,
    outer_server_config, peer_identity, ALPN_H2, ALPN_HTTP1, EARLY_DATA_LIMIT,
};
pub use failure::HandshakeFailure;
pub(crate) use intercept::{explain as explain_untrusted, untrusted};
pub use provider::{provider, RecordCiphers};
pub use slot::CertSlot;

#[cfg(test)]
mod tests;
