//! Destinations chosen per tunnel: the request a client sends inside the
//! inner TLS (`wire`), the server's policy (`policy`: rules by identity,
//! `net`: CIDR ranges, `deny`: the built-in deny list and the spellings it
//! sees through), the limits per identity (`gate`) and the connect
//! (`dial`: Happy Eyeballs under a deadline). The client's SOCKS5 and HTTP
//! CONNECT listeners are in `client::socks5` and `client::http_connect`;
//! the server's use of all this is `server::destination`.

pub(crate) mod deny;
pub(crate) mod dial;
pub(crate) mod gate;
pub(crate) mod net;
pub(crate) mod policy;
pub(crate) mod wire;

#[cfg(test)]
mod tests;

pub(crate) use gate::Gate;
pub(crate) use policy::{Policy, PolicyFile, Refusal, Verdict};
pub(crate) use wire::{Answer, Code, Destination};
