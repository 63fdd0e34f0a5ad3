//! A loopback TCP relay that reads the TLS record headers a client sends and
//! tells, per connection, whether an encrypted record (type 23,
//! application data) left the client before the server's first byte reached
//! it. In TLS 1.3 that can only be 0-RTT data: every other encrypted record
//! of the client's follows the server's flight. On one chosen connection the
//! relay holds the server's bytes back until such a record has arrived, so
//! the answer does not depend on how fast either side is.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// TLS's record type for encrypted records.
const APPLICATION_DATA: u8 = 23;

/// The relay; connections are numbered from 0 in the order they arrive.
pub(crate) struct EarlyWatch {
    /// Where the client dials.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<bool>>>,
}

impl EarlyWatch {
    /// Relays to `upstream`; on connection `hold` (if any) the server's
    /// bytes wait until the client has sent an encrypted record.
    pub(crate) async fn start(upstream: SocketAddr, hold: Option<usize>) -> EarlyWatch {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let index = {
                    let mut v = record.lock().unwrap();
                    v.push(false);
                    v.len() - 1
                };
                let server = TcpStream::connect(upstream).await.expect("relay upstream");
                tokio::spawn(relay(
                    client,
                    server,
                    index,
                    hold == Some(index),
                    record.clone(),
                ));
            }
        });
        EarlyWatch { addr, seen }
    }

    /// Per connection so far: whether the client sent an encrypted record
    /// before the server's first byte.
    pub(crate) fn early(&self) -> Vec<bool> {
        self.seen.lock().unwrap().clone()
    }
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    index: usize,
    hold: bool,
    seen: Arc<Mutex<Vec<bool>>>,
) {
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    // true once the server's first byte went to the client.
    let (answered_tx, answered) = watch::channel(false);
    // true once the client sent an encrypted record.
    let (encrypted_tx, mut encrypted) = watch::channel(false);
    let up = async move {
        let mut records = RecordHeaders::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if records.feed(&buf[..n]).contains(&APPLICATION_DATA) && !*encrypted_tx.borrow() {
                if !*answered.borrow() {
                    seen.lock().unwrap()[index] = true;
                }
                let _ = encrypted_tx.send(true);
            }
            if server_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_wr.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut first = true;
        loop {
            let n = match server_rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if first {
                if hold {
                    // Ends when the client sends one, or leaves.
                    let _ = encrypted.wait_for(|sent| *sent).await;
                }
                let _ = answered_tx.send(true);
                first = false;
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Follows the record framing of one direction across reads.
#[derive(Default)]
struct RecordHeaders {
    /// Bytes of the current record's body still to come.
    body_left: usize,
    /// A header read in part.
    header: Vec<u8>,
}

impl RecordHeaders {
    /// The types of the records whose headers end in `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<u8> {
        let mut types = Vec::new();
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let take = (5 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.header.len() == 5 {
                types.push(self.header[0]);
                self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
                self.header.clear();
            }
        }
        types
    }
}
