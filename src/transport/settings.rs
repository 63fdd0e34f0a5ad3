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

/// Per-stream receive window while the process's buffer budget is pressed
/// (see [`crate::session::budget`]): a stalled stream then pins at most this
/// much more of its connection's window, so the connection's other streams
/// keep moving. Sixteen frames of the peer's default size.
pub const PRESSED_STREAM_WINDOW: u32 = 256 * 1024;

/// Connection receive window while the budget is pressed: the window's worth
/// that stalled streams may already pin, and as much again for the rest.
pub const PRESSED_CONNECTION_WINDOW: u32 = 2 * CONNECTION_WINDOW;

/// How soon a window change refused by h2 (an earlier SETTINGS still
/// awaits its ACK) is tried again.
const PRESSURE_RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// Which windows an HTTP/2 connection should advertise as its process's
/// buffer budget fills and empties: [`STREAM_WINDOW`] and
/// [`CONNECTION_WINDOW`] normally, [`PRESSED_STREAM_WINDOW`] and
/// [`PRESSED_CONNECTION_WINDOW`] while pressed.
#[derive(Debug, Default)]
pub(crate) struct Pressure {
    /// `None`: an unbounded budget, never pressed.
    pressed: Option<tokio::sync::watch::Receiver<bool>>,
    /// What the connection advertises now.
    applied: bool,
    /// What the last [`Pressure::next`] asked for.
    want: bool,
    /// The last change was refused: wait before the next try.
    refused: bool,
}

impl Pressure {
    /// Following `pressed` (see [`crate::session::budget::Pool::pressure`]).
    pub(crate) fn new(pressed: Option<tokio::sync::watch::Receiver<bool>>) -> Pressure {
        Pressure {
            pressed,
            ..Pressure::default()
        }
    }

    /// Once the windows should change: the (stream, connection) windows to
    /// advertise. Cancel-safe; report the outcome with [`Pressure::done`].
    pub(crate) async fn next(&mut self) -> (u32, u32) {
        let Some(pressed) = self.pressed.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            let want = *pressed.borrow_and_update();
            if want != self.applied {
                if self.refused {
                    tokio::time::sleep(PRESSURE_RETRY).await;
                }
                self.want = want;
                return match want {
                    true => (PRESSED_STREAM_WINDOW, PRESSED_CONNECTION_WINDOW),
                    false => (STREAM_WINDOW, CONNECTION_WINDOW),
                };
            }
            if pressed.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Whether h2 took the stream window asked for by [`Pressure::next`].
    pub(crate) fn done(&mut self, taken: bool) {
        self.refused = !taken;
        if taken {
            self.applied = self.want;
        }
    }
}
