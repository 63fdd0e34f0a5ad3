//! Options for the outer TCP sockets (client to front end, front end to
//! server): where bytes wait before they reach the wire, and how much one
//! read takes off it.

use tokio::io::BufReader;
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
pub(crate) const NOTSENT_LOWAT: u32 = 16 * 1024;

/// Prepares an outer socket: no Nagle delay, and at most
/// [`NOTSENT_LOWAT`] unsent bytes in the kernel. Failures leave the socket
/// usable, only slower to interleave, so they are returned for the caller
/// to ignore or log.
pub(crate) fn tune_outer(sock: &TcpStream) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket2::SockRef::from(sock).set_tcp_notsent_lowat(NOTSENT_LOWAT)?;
    Ok(())
}

/// What one read of an outer socket asks the kernel for. Both readers of
/// an outer socket ask for little at a time: rustls reads at most one
/// record (about 16 KiB, often 4 KiB), and h2 reads into its frame
/// buffer's spare room (16 KiB per read, traced). With this buffer under
/// them a bulk tunnel's bytes leave the kernel in a third of the
/// `recvfrom` calls. Measured with `strace -c` over 256 MiB (calls on the
/// receiving side): outer TLS server 17 744–17 811 → 5 044, h2c server
/// 16 374 → 5 045, outer TLS client 18 192 → 5 182. CPU, client + server
/// (1 GiB each way, `/proc` utime + stime, six alternating pairs, median):
/// download 2.99 → 2.83 s/GB (lower in all six pairs; the client's system
/// time 0.61 → 0.49), upload 2.89 → 2.90 (no change). A 256 KiB buffer cut
/// the calls to a tenth but gained nothing: the copy out of it cost more
/// in user time (the server's 0.73 → 0.83 s/GB) than the calls saved.
pub(crate) const OUTER_READ: usize = 64 * 1024;

/// An outer socket as the outer TLS or HTTP/2 reads it.
pub(crate) type Outer = BufReader<TcpStream>;

/// Puts [`OUTER_READ`]'s buffer under an outer socket's readers; writes
/// pass straight through. It costs 64 KiB per connection, not per tunnel.
pub(crate) fn buffered(sock: TcpStream) -> Outer {
    BufReader::with_capacity(OUTER_READ, sock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A small read, as rustls makes one, takes all the kernel holds.
    #[tokio::test]
    async fn one_small_read_takes_what_the_kernel_holds() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut far = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (near, _) = listener.accept().await.unwrap();
        // Less than any kernel's default receive window holds, more than
        // the reads rustls and h2 ask for.
        let sent = vec![7u8; 40 * 1024];
        far.write_all(&sent).await.unwrap();
        far.shutdown().await.unwrap();
        // Wait until the kernel holds all of it (peeking takes nothing).
        let mut peek = vec![0u8; sent.len()];
        let all_there = async {
            while near.peek(&mut peek).await.unwrap() < sent.len() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all_there)
            .await
            .expect("the kernel holds what was sent");
        let mut outer = buffered(near);
        let mut small = [0u8; 4096];
        outer.read_exact(&mut small).await.unwrap();
        assert!(sent.len() <= OUTER_READ);
        assert_eq!(outer.buffer().len(), sent.len() - small.len());
        let mut rest = Vec::new();
        outer.read_to_end(&mut rest).await.unwrap();
        assert_eq!(small.len() + rest.len(), sent.len());
    }

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
