//! Who may connect: the peer's verified identity, identity patterns and
//! allow-lists. The server's routes, which carry an allow-list each, live in
//! `server::routes`.

mod allow;
mod identity;
mod pattern;

pub use allow::{Allow, Denied};
pub use identity::PeerIdentity;
pub use pattern::{Pattern, PatternError};

#[cfg(test)]
mod tests;
