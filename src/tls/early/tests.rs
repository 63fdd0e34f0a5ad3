//! Real rustls handshakes over in-memory pipes: 0-RTT data is served before
//! the client's Finished, refused early data arrives all the same, and bad
//! bytes end the handshake with an error.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{
    duplex, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf,
};
use tokio_rustls::TlsConnector;

use super::*;
use crate::tls::tests::Fixture;
use crate::tls::{outer_client_config, outer_server_config};

/// A pipe end whose writes are held back until [`Gate::release`]: while
/// the server's flight is held, the client cannot have sent its Finished.
struct Gate {
    io: DuplexStream,
    held: Option<Vec<u8>>,
}

impl Gate {
    fn new(io: DuplexStream) -> Gate {
        Gate {
            io,
            held: Some(Vec::new()),
        }
    }

    async fn release(&mut self) {
        let held = self.held.take().expect("released once");
        self.io.write_all(&held).await.unwrap();
    }
}

impl AsyncRead for Gate {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Gate {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match &mut this.held {
            Some(held) => {
                held.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut this.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.held {
            Some(_) => Poll::Ready(Ok(())),
            None => Pin::new(&mut this.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// The handshake limit where a test does not reach it.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// `f`, or a panic after 10 s (what a wait for the held flight would be).
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(std::time::Duration::from_secs(10), f)
        .await
        .expect("waited for the client's Finished")
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap()
}

/// Fresh certificates and the outer configs both sides use (early data on).
fn configs(name: &str) -> (Fixture, Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
    let certs = Fixture::new(name);
    let server = outer_server_config(certs.server.clone(), true).unwrap();
    let client = outer_client_config(Some(&certs.ca), true).unwrap();
    (certs, server, client)
}

/// A full handshake over a pipe of `pipe` bytes: the client's stream and
/// the server's.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    pipe: usize,
) -> (
    tokio_rustls::client::TlsStream<DuplexStream>,
    ServerTls<DuplexStream>,
) {
    let (a, b) = duplex(pipe);
    let connector = TlsConnector::from(client);
    let (c, s) = tokio::join!(connector.connect(localhost(), a), accept(server, b, LIMIT));
    (c.unwrap(), s.unwrap())
}

/// [`configs`] after a [`first_connection`]: the client holds a session to
/// resume with early data.
async fn resumable(name: &str) -> (Fixture, Arc<ServerConfig>, Arc<rustls::ClientConfig>) {
    let (certs, server, client) = configs(name);
    first_connection(&server, &client).await;
    (certs, server, client)
}

/// A first connection, full handshake, and one exchange each way (the
/// session tickets come after the client's Finished and ride with the
/// server's answer).
async fn first_connection(server: &Arc<ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    let (a, b) = duplex(64 * 1024);
    let connector = TlsConnector::from(client.clone()).early_data(true);
    let (c, s) = tokio::join!(
        connector.connect(localhost(), a),
        accept(server.clone(), b, LIMIT)
    );
    let (mut c, mut s) = (c.unwrap(), s.unwrap());
    assert_eq!(s.kind(), "full");
    c.write_all(b"ping").await.unwrap();
    c.flush().await.unwrap();
    let mut got = [0u8; 4];
    s.read_exact(&mut got).await.unwrap();
    s.write_all(b"pong").await.unwrap();
    s.flush().await.unwrap();
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"pong");
}

#[tokio::test]
async fn early_data_is_read_and_answered_before_the_client_finishes() {
    let (_certs, server, client) = resumable("early").await;

    let (a, b) = duplex(64 * 1024);
    let connector = TlsConnector::from(client).early_data(true);
    let client = tokio::spawn(async move {
        let mut c = connector.connect(localhost(), a).await.unwrap();
        assert!(c.get_ref().1.is_handshaking(), "0-RTT: connected at once");
        c.write_all(b"early request").await.unwrap();
        // Completes the handshake, which waits for the server's flight.
        c.flush().await.unwrap();
        let mut answer = [0u8; 6];
        c.read_exact(&mut answer).await.unwrap();
        assert!(c.get_ref().1.is_early_data_accepted());
        c.write_all(b"after").await.unwrap();
        c.flush().await.unwrap();
        answer
    });
    // Neither may wait for the client's Finished: the flight is held back.
    let mut s = within(accept(server, Gate::new(b), LIMIT)).await.unwrap();
    assert_eq!(s.kind(), "early_data");
    let mut request = [0u8; 13];
    within(s.read_exact(&mut request)).await.unwrap();
    assert_eq!(&request, b"early request");
    assert!(
        s.connection().is_handshaking(),
        "read while the server's flight is held, so before the client's Finished"
    );
    s.write_all(b"answer").await.unwrap();
    s.flush().await.unwrap();
    s.io_mut().release().await;
    assert_eq!(&client.await.unwrap(), b"answer");
    let mut after = [0u8; 5];
    s.read_exact(&mut after).await.unwrap();
    assert_eq!(&after, b"after");
    assert!(!s.connection().is_handshaking());
}

#[tokio::test]
async fn refused_early_data_arrives_after_the_handshake() {
    let (certs, _server, client) = resumable("refused").await;

    // Another server (a restart, another instance) knows no such session.
    let other = outer_server_config(certs.server.clone(), true).unwrap();
    let (a, b) = duplex(64 * 1024);
    let connector = TlsConnector::from(client).early_data(true);
    let client = tokio::spawn(async move {
        let mut c = connector.connect(localhost(), a).await.unwrap();
        assert!(c.get_ref().1.is_handshaking(), "early data was offered");
        c.write_all(b"early request").await.unwrap();
        c.flush().await.unwrap();
        let mut answer = [0u8; 6];
        c.read_exact(&mut answer).await.unwrap();
        assert!(!c.get_ref().1.is_early_data_accepted());
        answer
    });
    let mut s = accept(other, b, LIMIT).await.unwrap();
    assert_eq!(s.kind(), "full");
    let mut request = [0u8; 13];
    s.read_exact(&mut request).await.unwrap();
    assert_eq!(&request, b"early request");
    s.write_all(b"answer").await.unwrap();
    s.flush().await.unwrap();
    assert_eq!(&client.await.unwrap(), b"answer");
}

#[tokio::test]
async fn a_peer_that_speaks_no_tls_is_refused() {
    let (_certs, server, _) = configs("garbage");
    let (mut a, b) = duplex(64 * 1024);
    a.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let err = accept(server, b, LIMIT).await.err().expect("not TLS");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

#[tokio::test]
async fn a_peer_that_leaves_mid_handshake_is_an_unexpected_eof() {
    let (_certs, server, _) = configs("eof");
    let (a, b) = duplex(64 * 1024);
    drop(a);
    let err = accept(server, b, LIMIT).await.err().expect("no handshake");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn a_client_that_never_finishes_after_early_data_is_cut_at_the_limit() {
    let (_certs, server, client) = resumable("unfinished").await;

    let (a, b) = duplex(64 * 1024);
    let connector = TlsConnector::from(client).early_data(true);
    // The client's flush waits for the server's flight, which never comes.
    let _client = tokio::spawn(async move {
        let mut c = connector.connect(localhost(), a).await.unwrap();
        c.write_all(b"early request").await.unwrap();
        let _ = c.flush().await;
        c
    });
    let limit = std::time::Duration::from_millis(300);
    let mut s = within(accept(server, Gate::new(b), limit)).await.unwrap();
    assert_eq!(s.kind(), "early_data");
    let mut request = [0u8; 13];
    s.read_exact(&mut request).await.unwrap();
    let err = within(s.read(&mut [0u8; 16])).await.expect_err("cut");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}

#[tokio::test]
async fn a_client_whose_0rtt_handshake_goes_unanswered_gives_up_at_its_limit() {
    let (_certs, _server, client) = resumable("unanswered").await;

    // A peer that takes the ClientHello and never answers.
    let (a, _silent) = duplex(64 * 1024);
    let connector = TlsConnector::from(client).early_data(true);
    let tls = connector.connect(localhost(), a).await.unwrap();
    assert!(tls.get_ref().1.is_handshaking(), "0-RTT: connected at once");
    let mut c = Finishing::new(tls, std::time::Duration::from_millis(300));
    c.write_all(b"early request").await.unwrap();
    let err = within(c.flush()).await.expect_err("cut");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
}

#[tokio::test]
async fn bulk_both_ways_and_close_notify_end_the_stream_cleanly() {
    let (_certs, server, client) = configs("bulk");
    // A pipe smaller than one direction's data: both sides wait on it.
    let (c, s) = handshake(server, client, 16 * 1024).await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let expect = data.clone();
    let (mut cr, mut cw) = tokio::io::split(c);
    let (mut sr, mut sw) = tokio::io::split(s);
    let send = async move {
        // Vectored writes of uneven pieces, then close_notify.
        let mut at = 0;
        while at < data.len() {
            let cut = (at + 1000).min(data.len());
            let end = (at + 70_000).min(data.len());
            let pieces = [
                io::IoSlice::new(&data[at..cut]),
                io::IoSlice::new(&data[cut..end]),
            ];
            at += sw.write_vectored(&pieces).await.unwrap();
        }
        sw.shutdown().await.unwrap();
    };
    let receive = async move {
        let mut got = Vec::new();
        cr.read_to_end(&mut got)
            .await
            .expect("close_notify is a clean end");
        got
    };
    let upload = async move {
        cw.write_all(&[5u8; 200_000]).await.unwrap();
        cw.shutdown().await.unwrap();
    };
    let sink = async move {
        let mut got = Vec::new();
        sr.read_to_end(&mut got)
            .await
            .expect("close_notify is a clean end");
        got
    };
    let ((), got, (), up) = within(async { tokio::join!(send, receive, upload, sink) }).await;
    assert!(
        got == expect,
        "download altered ({} bytes of {})",
        got.len(),
        expect.len()
    );
    assert_eq!(up, vec![5u8; 200_000]);
}

#[tokio::test]
async fn a_read_fills_the_callers_buffer_without_zeroing_the_rest_of_it() {
    let (_certs, server, client) = configs("no-zeroing");
    let (mut c, mut s) = handshake(server, client, 64 * 1024).await;
    c.write_all(&[7u8; 100]).await.unwrap();
    c.flush().await.unwrap();

    // HTTP/2 reads into the spare capacity of its buffer, uninitialised.
    let mut spare = [std::mem::MaybeUninit::<u8>::uninit(); 16 * 1024];
    let mut buf = ReadBuf::uninit(&mut spare);
    within(std::future::poll_fn(|cx| {
        Pin::new(&mut s).poll_read(cx, &mut buf)
    }))
    .await
    .unwrap();
    assert_eq!(buf.filled(), &[7u8; 100][..]);
    // Only what was read was written: the other 16 284 bytes were not set
    // to zero on the way (a memset of the whole buffer on every read).
    assert_eq!(buf.initialized().len(), 100);
}
