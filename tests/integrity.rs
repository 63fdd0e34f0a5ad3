//! Integrity under concurrency: many tunnels at once through the full stack
//! (client -> TLS front end -> h2c server -> backend), random sizes and write
//! patterns, some half-closing early and reading on, each checked by SHA-256
//! in both directions.

#![allow(clippy::disallowed_methods)] // test harness code: blocking file I/O is fine here

mod common;

use std::net::SocketAddr;

use common::*;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TUNNELS: u64 = 64;
const MAX_SIZE: usize = 4 << 20;

/// A backend whose first byte picks the behaviour:
/// `E` echo; `H` reply with the hash of everything up to EOF; `S` read an
/// 8-byte length and 8-byte seed, then send that many seeded random bytes
/// (whatever the client does with its own direction) and close.
async fn mixed_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut kind = [0u8; 1];
                if sock.read_exact(&mut kind).await.is_err() {
                    return;
                }
                match kind[0] {
                    b'E' => {
                        let (mut r, mut w) = sock.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    }
                    b'H' => {
                        let mut all = Vec::new();
                        if sock.read_to_end(&mut all).await.is_ok() {
                            let _ = sock.write_all(&Sha256::digest(&all)).await;
                            let _ = sock.shutdown().await;
                        }
                    }
                    b'S' => {
                        let mut head = [0u8; 16];
                        if sock.read_exact(&mut head).await.is_err() {
                            return;
                        }
                        let len = u64::from_be_bytes(head[..8].try_into().unwrap()) as usize;
                        let seed = u64::from_be_bytes(head[8..].try_into().unwrap());
                        let _ = sock.write_all(&random_bytes(len, seed)).await;
                        let _ = sock.shutdown().await;
                        // Drain whatever the client still sends.
                        let _ = tokio::io::copy(&mut sock, &mut tokio::io::sink()).await;
                    }
                    _ => {}
                }
            });
        }
    });
    addr
}

/// Writes `data` in random-sized chunks with random yields, then half-closes.
async fn write_randomly(w: &mut (impl AsyncWriteExt + Unpin), data: &[u8], rng: &mut impl Rng) {
    let mut rest = data;
    while !rest.is_empty() {
        let n = rng.random_range(1..=rest.len().min(256 * 1024));
        w.write_all(&rest[..n]).await.expect("write");
        rest = &rest[n..];
        for _ in 0..rng.random_range(0..3) {
            tokio::task::yield_now().await;
        }
    }
    w.shutdown().await.expect("half-close");
}

/// Reads to EOF in random-sized reads with random yields (a slow reader).
async fn read_randomly(r: &mut (impl AsyncReadExt + Unpin), rng: &mut impl Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 128 * 1024];
    loop {
        let want = rng.random_range(1..=buf.len());
        let n = r.read(&mut buf[..want]).await.expect("read");
        if n == 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n]);
        for _ in 0..rng.random_range(0..3) {
            tokio::task::yield_now().await;
        }
    }
}

/// One tunnel of the given kind; returns what was sent and received hashes.
async fn one(client: SocketAddr, seed: u64) -> (char, usize) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // Sizes skewed small (most flows are), with the full range represented.
    let size = match rng.random_range(0..4) {
        0 => 0,
        1 => rng.random_range(1..4096),
        _ => rng.random_range(0..=MAX_SIZE),
    };
    let kind = ['E', 'H', 'S'][rng.random_range(0..3)];
    let data = random_bytes(size, seed ^ 0x5eed);
    let mut sock = TcpStream::connect(client).await.unwrap();
    let (mut r, mut w) = sock.split();
    let mut wrng = rand::rngs::StdRng::seed_from_u64(seed + 1);
    let mut rrng = rand::rngs::StdRng::seed_from_u64(seed + 2);
    let work = async {
        match kind {
            'E' => {
                let mut sent = b"E".to_vec();
                sent.extend_from_slice(&data);
                let (_, back) = tokio::join!(
                    write_randomly(&mut w, &sent, &mut wrng),
                    read_randomly(&mut r, &mut rrng)
                );
                assert_eq!(back.len(), data.len(), "echo length (seed {seed})");
                assert_eq!(sha256(&back), sha256(&data), "echo (seed {seed})");
            }
            'H' => {
                let mut sent = b"H".to_vec();
                sent.extend_from_slice(&data);
                let (_, back) = tokio::join!(
                    write_randomly(&mut w, &sent, &mut wrng),
                    read_randomly(&mut r, &mut rrng)
                );
                assert_eq!(back, Sha256::digest(&data).to_vec(), "hash (seed {seed})");
            }
            _ => {
                // Ask, half-close at once, and keep reading the whole reply.
                let mut ask = b"S".to_vec();
                ask.extend_from_slice(&(size as u64).to_be_bytes());
                ask.extend_from_slice(&seed.to_be_bytes());
                let (_, back) = tokio::join!(
                    write_randomly(&mut w, &ask, &mut wrng),
                    read_randomly(&mut r, &mut rrng)
                );
                assert_eq!(back.len(), size, "source length (seed {seed})");
                assert_eq!(
                    sha256(&back),
                    sha256(&random_bytes(size, seed)),
                    "source (seed {seed})"
                );
            }
        }
    };
    tokio::time::timeout(LIMIT, work)
        .await
        .unwrap_or_else(|_| panic!("tunnel {kind} of {size} bytes (seed {seed}) hung"));
    (kind, size)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_random_tunnels_keep_their_bytes() {
    let pki = Pki::new();
    let backend = mixed_backend().await;
    let mut stack = Stack::via_front(&pki, backend).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..TUNNELS {
        let client = stack.client;
        tasks.spawn(one(client, 1000 + i));
    }
    let mut kinds = std::collections::HashMap::new();
    let mut bytes = 0;
    while let Some(r) = tasks.join_next().await {
        let (kind, size) = r.expect("tunnel");
        *kinds.entry(kind).or_insert(0) += 1;
        bytes += size;
    }
    eprintln!("{TUNNELS} tunnels verified: {kinds:?}, {bytes} payload bytes");
    assert_eq!(kinds.values().sum::<u64>(), TUNNELS);
    assert_eq!(kinds.len(), 3, "every kind of flow ran");
    // Every tunnel ended cleanly on the server, too.
    for _ in 0..TUNNELS {
        let report = stack.report().await;
        assert_eq!(report.outcome, Ok(()), "server-side outcome");
    }
}
