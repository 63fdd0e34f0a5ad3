//! The WebSocket transport beside HTTP/2, through the same server: a
//! client started with `--transport websocket` against the main client.
//! Each row has the WebSocket in the "postern" column and HTTP/2 in the
//! "raw TCP" one. The two alternate in pairs of rounds, so that the load of
//! a shared machine falls on both alike; bulk figures are over all rounds.
//!
//! - Bulk: upload and download rates, client + server CPU per GB.
//! - Ping-pong: 1-byte round trips on an idle tunnel, p50 and p99.
//! - Set-up: first byte, against an open HTTP/2 connection and against a
//!   cold one (`--max-streams-per-connection 1`, a TCP and TLS handshake
//!   per tunnel, as every WebSocket has); new tunnels per second.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;

use super::{churn, first_bytes, mbps, per_gb, transfer, Env, Proc, Report, Row};
use crate::bench::procs::Cpu;
use crate::bench::report::quantile;
use crate::bench::traffic;

/// Rounds of each measurement per transport, alternating.
const ROUNDS: usize = 2;

/// One transport's client and the server's CPU beside it.
struct Side<'a> {
    client: &'a Proc,
    server: &'a Proc,
}

impl Side<'_> {
    fn cpu(&self) -> anyhow::Result<Cpu> {
        Ok(self.client.cpu()? + self.server.cpu()?)
    }
    fn addr(&self) -> SocketAddr {
        self.client.addr
    }
}

pub(super) async fn websocket(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let mut flags = vec!["--transport", "websocket"];
    flags.extend(env.sizes.client_flags.iter().map(String::as_str));
    let port = env.server.addr.port();
    let ws = Proc::client("client-websocket", &env.pki, port, &flags).await?;
    traffic::quick_exchange(ws.addr)
        .await
        .with_context(|| format!("first WebSocket tunnel: {}", ws.log_tail()))?;
    let sides = [
        Side {
            client: &ws,
            server: &env.server,
        },
        Side {
            client: &env.client,
            server: &env.server,
        },
    ];
    bulk(env, &sides, report).await?;
    ping_pong(env, &sides, report).await?;
    setup(env, &sides, report).await?;
    rate(env, &sides, report).await
}

/// A row with the WebSocket figure `ws` against HTTP/2's `h2`.
fn row(metric: String, unit: &'static str, ws: f64, h2: f64, note: String) -> Row {
    Row {
        scenario: "websocket",
        metric,
        unit,
        postern: Some(ws),
        baseline: Some(h2),
        note,
    }
}

fn versus(ws: f64, h2: f64) -> String {
    format!("{:.2}x HTTP/2", ws / h2)
}

async fn bulk(env: &Env<'_>, sides: &[Side<'_>; 2], report: &mut Report) -> anyhow::Result<()> {
    let n = env.sizes.bulk;
    for up in [true, false] {
        let dir = if up { "upload" } else { "download" };
        // Per side: total time and CPU over the rounds.
        let mut spent = [(Duration::ZERO, 0.0); 2];
        for _ in 0..ROUNDS {
            for (side, spent) in sides.iter().zip(&mut spent) {
                let cpu0 = side.cpu()?;
                let t = transfer(side.addr(), n, up)
                    .await
                    .with_context(|| format!("{dir} through {}", side.client.name()))?;
                spent.0 += t;
                spent.1 += (side.cpu()? - cpu0).total();
            }
        }
        let moved = n * ROUNDS as u64;
        let [(wt, wcpu), (ht, hcpu)] = spent;
        let (w, h) = (mbps(moved, wt), mbps(moved, ht));
        let metric = format!("{dir} {} MiB x{ROUNDS}, verified", n >> 20);
        report.add(row(metric, "MB/s", w, h, versus(w, h)));
        let (w, h) = (per_gb(wcpu, moved), per_gb(hcpu, moved));
        let metric = format!("{dir} CPU, client + server");
        report.add(row(metric, "s/GB", w, h, versus(w, h)));
    }
    Ok(())
}

async fn ping_pong(
    env: &Env<'_>,
    sides: &[Side<'_>; 2],
    report: &mut Report,
) -> anyhow::Result<()> {
    let per_round = (env.sizes.pings / ROUNDS).max(1);
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (side, samples) in sides.iter().zip(&mut samples) {
            let got = traffic::ping_pong(side.addr(), per_round)
                .await
                .with_context(|| format!("ping-pong through {}", side.client.name()))?;
            samples.extend(got);
        }
    }
    let [mut w, mut h] = samples;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (wq, hq) = (quantile(&mut w, q), quantile(&mut h, q));
        let metric = format!("1-byte round trip {name}, idle");
        report.add(row(metric, "µs", wq, hq, format!("{:+.0} µs", wq - hq)));
    }
    Ok(())
}

async fn setup(env: &Env<'_>, sides: &[Side<'_>; 2], report: &mut Report) -> anyhow::Result<()> {
    const COLD: &[&str] = &["--max-streams-per-connection", "1"];
    let n = (env.sizes.setups.0 / ROUNDS).max(1);
    let port = env.server.addr.port();
    let cold = Proc::client("client-cold-h2", &env.pki, port, COLD).await?;
    let (mut ws, mut open, mut coldt) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        ws.extend(first_bytes(sides[0].addr(), n, false).await?);
        open.extend(first_bytes(sides[1].addr(), n, false).await?);
        // Held, so that every tunnel dials a connection of its own.
        coldt.extend(first_bytes(cold.addr, n, true).await?);
    }
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (wq, oq, cq) = (
            quantile(&mut ws, q),
            quantile(&mut open, q),
            quantile(&mut coldt, q),
        );
        let metric = format!("first byte {name}, 0 ms (HTTP/2: open connection)");
        report.add(row(metric, "ms", wq, oq, format!("{:+.2} ms", wq - oq)));
        let metric = format!("first byte {name}, 0 ms (HTTP/2: cold connection)");
        report.add(row(metric, "ms", wq, cq, format!("{:+.2} ms", wq - cq)));
    }
    Ok(())
}

async fn rate(env: &Env<'_>, sides: &[Side<'_>; 2], report: &mut Report) -> anyhow::Result<()> {
    const WORKERS: usize = 16;
    let span = env.sizes.rate_for / ROUNDS as u32;
    let mut figures = [(0, 0, Duration::ZERO); 2];
    for _ in 0..ROUNDS {
        for (side, f) in sides.iter().zip(&mut figures) {
            let (ok, failed, t) = churn(side.addr(), WORKERS, span).await;
            *f = (f.0 + ok, f.1 + failed, f.2 + t);
        }
    }
    let [(wok, wfailed, wt), (hok, hfailed, ht)] = figures;
    let (w, h) = (wok as f64 / wt.as_secs_f64(), hok as f64 / ht.as_secs_f64());
    report.add(row(
        format!("new tunnels/s, {WORKERS} at a time"),
        "1/s",
        w,
        h,
        format!("{wok} ok, {wfailed} errors (HTTP/2: {hfailed} errors)"),
    ));
    if wfailed + hfailed > 0 {
        anyhow::bail!("{} tunnels failed", wfailed + hfailed);
    }
    Ok(())
}
