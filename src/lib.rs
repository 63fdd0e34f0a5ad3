//! Postern: end-to-end mutual TLS for TCP services behind HTTP/2 front ends.
//!
//! (The module map is filled in as the modules land.)

#![forbid(unsafe_code)]

pub mod certs;
pub mod identity;
pub mod policy;
pub mod proxy_protocol;
pub mod token;
