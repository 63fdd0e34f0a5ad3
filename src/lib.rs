//! Postern: end-to-end mutual TLS for TCP services behind HTTP/2 front ends.
//!
//! (The module map is filled in as the modules land.)

#![forbid(unsafe_code)]

pub mod backend;
pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod connector;
pub mod demo;
pub mod front;
pub mod identity;
pub mod pem;
pub mod policy;
pub mod proxy_protocol;
pub mod server;
pub mod server_tunnel;
pub mod signal;
pub mod stream;
pub mod tls;
pub mod token;
pub mod tunnel;
