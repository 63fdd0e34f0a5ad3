//! The byte path below the TLS layers: an HTTP/2 stream as a byte stream,
//! the bidirectional copy with its counts, and the worker runtimes that
//! carry connections (and how they wait for work).

pub mod accept;
pub mod busy_poll;
pub mod ended;
pub mod rewind;
pub mod settings;
pub mod socket;
pub mod splice;
pub mod stream;
pub mod websocket;
pub mod workers;
