//! Who may connect: the peer's verified identity, identity patterns,
//! allow-lists and routes.

pub mod identity;
pub mod policy;
