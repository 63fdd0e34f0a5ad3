//! Options for the outer TCP sockets (client to front end, front end to
//! server): where bytes wait before they reach the wire.

use tokio::net::TcpStream;

/// Unsent bytes the kernel may hold per outer socket before writes wait
/// (`TCP_NOTSENT_LOWAT`). Without it a bulk tunnel fills the send buffer
/// with megabytes, and a small frame of another tunnel on the connection
/// queues behind them where nothing can reorder it; with it the bulk bytes
/// wait in HTTP/2's per-stream queues, which take turns frame by frame.
/// Bytes in flight are not limited, so long round trips keep their
/// throughput. Measured with `postern bench --quick` (1-byte ping-pong
/// beside a bulk download on the same connection, p50, load average 2–7):
/// 13–16 ms without; with the tunnel copy's yield (see
/// [`crate::transport::splice`]) 9.8 ms alone, 3.3–3.5 ms together with
/// 16 KiB and 4.3 ms with 64 KiB (one run each, so the two are within
/// noise of each other; the smaller was kept).
pub const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Prepares an outer socket: no Nagle delay, and at most
/// [`NOTSENT_LOWAT`] unsent bytes in the kernel. Failures leave the socket
/// usable, only slower to interleave, so they are returned for the caller
/// to ignore or log.
pub fn tune_outer(sock: &TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(sock).set_tcp_notsent_lowat(NOTSENT_LOWAT)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn an_outer_socket_gets_the_low_water_mark_and_no_delay() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let sock = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        tune_outer(&sock).unwrap();
        assert!(sock.nodelay().unwrap());
        let lowat = socket2::SockRef::from(&sock).tcp_notsent_lowat().unwrap();
        assert_eq!(lowat, NOTSENT_LOWAT);
    }
}
