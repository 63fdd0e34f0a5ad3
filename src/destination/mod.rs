//! Destinations chosen per tunnel: the request a client sends inside the
//! inner TLS (`wire`), the server's policy (`policy`: rules by identity,
//! `net`: CIDR ranges, `deny`: the built-in deny list and the spellings it
//! sees through), the limits per identity (`gate`) and the connect
//! (`dial`: Happy Eyeballs under a deadline). The client's SOCKS5 and HTTP
//! CONNECT listeners are in `client::socks5` and `client::http_connect`;
//! the server's use of all this is `server::destination`.

pub mod deny;
pub mod dial;
pub mod gate;
pub mod net;
pub mod policy;
pub mod wire;

#[cfg(test)]
mod tests;

pub use gate::{Gate, Slot};
pub use policy::{Policy, PolicyFile, Refusal, Verdict};
pub use wire::{Answer, Code, Destination, Host};
