//! The HTTP/2 settings every Postern connection advertises (the server, the
//! client's pool and the demo front end), in one place so the three cannot
//! drift apart.

/// Per-stream receive window we advertise. The 64 KiB protocol default caps
/// one tunnel at 64 KiB per round trip. Measured one-tunnel throughput at
/// 20 ms RTT (`postern bench --scenario rtt-bulk`): 4 MiB ~105 MB/s, 8 MiB
/// ~143 MB/s, 16 MiB ~160 MB/s (CPU-bound by then). 8 MiB clears the
/// 100 MB/s target with room; it is also the most a stalled reader can make
/// one tunnel buffer here, so more is not free.
pub const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// Connection receive window: four streams at full window, which bounds what
/// all the tunnels of one connection can buffer together.
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Largest DATA frame we accept; bigger frames mean fewer headers per byte.
pub const MAX_FRAME: u32 = 256 * 1024;

/// Largest header block we accept (requests carry a few small headers and at
/// most a bearer token).
pub const MAX_HEADER_LIST: u32 = 16 * 1024;

/// An h2 server builder with Postern's windows and frame size; callers add
/// what is theirs (stream limits, header list size, reset limits).
pub fn server_builder() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    builder
}

/// An h2 client builder with Postern's windows and frame size.
pub fn client_builder() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME);
    builder
}
