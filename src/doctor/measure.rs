//! Round-trip time and throughput, measured through the doctor's connection.

use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::requests::{open_tunnel, request};
use super::{ms, Report};
use crate::client::Forward;
use crate::transport::stream::H2Stream;

pub(super) async fn rtt(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    r: &mut Report,
) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        if request(send, Method::GET, uri, &http::HeaderMap::new())
            .await
            .is_ok()
        {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    match samples.first() {
        Some(min) => r.ok(
            "RTT",
            format!(
                "/healthz round trip min {}, median {} ({} samples)",
                ms(*min),
                ms(samples[samples.len() / 2]),
                samples.len()
            ),
        ),
        None => r.skip("RTT", "no samples"),
    }
    Ok(())
}

pub(super) async fn throughput(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    forward: &Forward,
    mib: u32,
    r: &mut Report,
) -> anyhow::Result<()> {
    let total = mib as usize * 1024 * 1024;
    let (send_stream, response) = open_tunnel(send, uri, headers).await?;
    let mut stream = H2Stream::client(send_stream, response);
    let started = Instant::now();
    let echoed = match &forward.inner {
        Some((config, name)) => {
            let mut tls = TlsConnector::from(config.clone())
                .connect(name.clone(), &mut stream)
                .await?;
            echo(&mut tls, total).await
        }
        None => echo(&mut stream, total).await,
    };
    match echoed {
        Ok(n) if n == total => {
            let secs = started.elapsed().as_secs_f64();
            r.ok(
                "throughput",
                format!(
                    "{mib} MiB echoed in {:.2} s: {:.1} MB/s each way",
                    secs,
                    total as f64 / secs / 1e6
                ),
            );
            Ok(())
        }
        Ok(n) => Err(r.fail(
            "throughput",
            format!("only {n} of {total} bytes came back"),
            "is the route's backend an echo server?",
        )),
        Err(e) => Err(r.fail("throughput", e, "is the route's backend an echo server?")),
    }
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    total: usize,
) -> std::io::Result<usize> {
    let (mut rd, mut wr) = tokio::io::split(s);
    let chunk = vec![0x5a_u8; 64 * 1024];
    let write = async {
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            wr.write_all(&chunk[..n]).await?;
            sent += n;
        }
        wr.shutdown().await
    };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    };
    let limit = Duration::from_secs(60);
    let (w, got) = tokio::time::timeout(limit, async { tokio::join!(write, read) })
        .await
        .map_err(|_| std::io::Error::other("timed out after 60 s"))?;
    w?;
    got
}
