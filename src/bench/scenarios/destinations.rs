//! Destinations: what naming the destination per tunnel costs.
//!
//! - First byte at the emulated RTT through `--socks5` (greeting, request,
//!   the server's answer, then the backend's first byte) against a client
//!   whose forward names the same destination with `--to`, and against the
//!   route's backend with no destination named: all warm (an open HTTP/2
//!   connection), in RTTs.
//! - New SOCKS5 tunnels per second at 0 ms, against the fixed forward.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{churn, churn_with, first_bytes, Env, Proc, Report, Row};
use crate::bench::report::quantile;
use crate::bench::traffic;

pub(super) async fn destinations(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let policy = format!(
        "[[route]]\npath = \"/\"\nbackend = \"{b}\"\n\n[destinations]\n\
         [[destinations.rule]]\nname = \"bench\"\nallow = [\"spiffe://postern.bench/client\"]\n\
         to = [\"127.0.0.0/8\"]\nports = [{p}]\n",
        b = env.backend,
        p = env.backend.port()
    );
    let server = Proc::server_config("server-destinations", &env.pki, &policy).await?;
    let rtt_ms = env.rtt.as_secs_f64() * 1e3;
    let to = env.backend.to_string();
    let n = env.sizes.setups.1;
    if rtt_ms > 0.0 {
        let relay = env.relay(server.addr).await?;
        let url = format!("https://localhost:{}/", relay.port());
        let socks = client(env, "client-socks-rtt", &url, &["--socks5", "0"]).await?;
        let fixed = client(
            env,
            "client-to-rtt",
            &url,
            &["--listen", "127.0.0.1:0", "--to", &to],
        )
        .await?;
        let plain = client(env, "client-route-rtt", &url, &["--listen", "127.0.0.1:0"]).await?;
        socks_first_byte(socks.addr, env.backend).await?;
        traffic::quick_exchange(fixed.addr).await?;
        traffic::quick_exchange(plain.addr).await?;
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            times.push(
                socks_first_byte(socks.addr, env.backend)
                    .await?
                    .as_secs_f64()
                    * 1e3,
            );
        }
        let mut fixed_t = first_bytes(fixed.addr, n, false).await?;
        let mut plain_t = first_bytes(plain.addr, n, false).await?;
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (s, f, p) = (
                quantile(&mut times, q),
                quantile(&mut fixed_t, q),
                quantile(&mut plain_t, q),
            );
            report.add(Row {
                scenario: "destinations",
                metric: format!("first byte {name}, --socks5 (baseline: --to), RTT"),
                unit: "ms",
                postern: Some(s),
                baseline: Some(f),
                note: format!(
                    "{:.2} RTT vs {:.2} RTT; no destination named {:.2} RTT",
                    s / rtt_ms,
                    f / rtt_ms,
                    p / rtt_ms
                ),
            });
        }
    }
    let url = format!("https://localhost:{}/", server.addr.port());
    let socks = client(env, "client-socks", &url, &["--socks5", "0"]).await?;
    let fixed = client(
        env,
        "client-to",
        &url,
        &["--listen", "127.0.0.1:0", "--to", &to],
    )
    .await?;
    const WORKERS: usize = 16;
    let span = env.sizes.rate_for;
    let (ok, failed, t) = {
        let (proxy, dest) = (socks.addr, env.backend);
        churn_with(WORKERS, span, move || async move {
            socks_first_byte(proxy, dest).await.is_ok()
        })
        .await
    };
    let (fok, ffailed, ft) = churn(fixed.addr, WORKERS, span).await;
    report.add(Row {
        scenario: "destinations",
        metric: format!("new SOCKS5 tunnels/s, {WORKERS} at a time (baseline: --to)"),
        unit: "1/s",
        postern: Some(ok as f64 / t.as_secs_f64()),
        baseline: Some(fok as f64 / ft.as_secs_f64()),
        note: format!("{ok} ok, {failed} errors (--to: {ffailed} errors)"),
    });
    if failed > 0 {
        anyhow::bail!("{failed} SOCKS5 tunnels failed");
    }
    Ok(())
}

async fn client(env: &Env<'_>, name: &str, url: &str, extra: &[&str]) -> anyhow::Result<Proc> {
    let mut args: Vec<String> = vec!["--url".into(), url.into()];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args.extend(env.sizes.client_flags.iter().cloned());
    Proc::client_args(name, &env.pki, &args).await
}

/// A SOCKS5 CONNECT to `dest` through `proxy`: the time to the backend's
/// greeting; the tunnel is then closed.
async fn socks_first_byte(proxy: SocketAddr, dest: SocketAddr) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut sock = socks_connect(proxy, dest).await?;
    let first = sock.read_u8().await.context("greeting through SOCKS5")?;
    let took = started.elapsed();
    anyhow::ensure!(first == traffic::GREETING, "bad greeting byte {first:#x}");
    let _ = sock.write_all(&[traffic::QUIT]).await;
    let mut rest = [0u8; 1];
    let _ = sock.read(&mut rest).await;
    Ok(took)
}

async fn socks_connect(proxy: SocketAddr, dest: SocketAddr) -> anyhow::Result<TcpStream> {
    let SocketAddr::V4(v4) = dest else {
        anyhow::bail!("the bench backend is IPv4");
    };
    let mut sock = TcpStream::connect(proxy).await?;
    sock.set_nodelay(true)?;
    sock.write_all(&[5, 1, 0]).await?;
    let mut m = [0u8; 2];
    sock.read_exact(&mut m).await?;
    anyhow::ensure!(m == [5, 0], "SOCKS5 method reply {m:?}");
    let mut req = vec![5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    sock.write_all(&req).await?;
    let mut reply = [0u8; 10];
    sock.read_exact(&mut reply).await?;
    anyhow::ensure!(reply[1] == 0, "SOCKS5 reply {:#04x}", reply[1]);
    Ok(sock)
}
