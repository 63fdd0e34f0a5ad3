//! The byte path below the TLS layers: an HTTP/2 stream as a byte stream,
//! the bidirectional copy with its counts, and the worker runtimes that
//! carry connections (and how they wait for work).

pub(crate) mod accept;
pub(crate) mod busy_poll;
pub(crate) mod ended;
pub(crate) mod rewind;
pub mod settings;
pub(crate) mod socket;
pub(crate) mod splice;
pub(crate) mod stream;
pub(crate) mod websocket;
pub mod workers;
