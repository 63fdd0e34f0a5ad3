//! Resume: what sessions cost and what they buy.
//!
//! - Bulk at loopback through the main client (resume on, the default)
//!   against a client started with `--no-resume`: the session layer's cost.
//! - Cut to data: an echo tunnel through a relay at the emulated RTT; the
//!   relay drops every connection it carries (as a front end that dies or a
//!   network change does), and the time from the cut to the next echoed byte
//!   is measured, in RTTs. It takes a new connection (TCP and TLS) plus the
//!   resume's round trip plus the echo's own.
//! - Moves: the same echo on a client with `--max-request-age 1s`, so the
//!   session moves to a fresh request every second (make-before-break);
//!   the slowest round trip over the run, in RTTs, against the same client
//!   without moves.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{mbps, per_gb, throughput_row, transfer, Env, Proc, Report, Row};
use crate::bench::report::quantile;
use crate::bench::{relay, traffic};

pub(super) async fn resume(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    bulk(env, report).await?;
    if env.rtt.is_zero() {
        eprintln!("    (cut and move figures need an RTT: --rtt-ms above 0)");
        return Ok(());
    }
    cuts(env, report).await?;
    moves(env, report).await
}

async fn bulk(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let n = env.sizes.bulk;
    let off = Proc::client(
        "client-no-resume",
        &env.pki,
        env.server.addr.port(),
        &["--no-resume"],
    )
    .await?;
    traffic::quick_exchange(off.addr).await?;
    let off_cpu = || -> anyhow::Result<f64> { Ok(off.cpu_seconds()? + env.server.cpu_seconds()?) };
    for up in [true, false] {
        let dir = if up { "upload" } else { "download" };
        let cpu0 = env.cpu()?;
        let on = transfer(env.client.addr, n, up)
            .await
            .with_context(|| format!("{dir} with resume"))?;
        let on_cpu = env.cpu()? - cpu0;
        let cpu0 = off_cpu()?;
        let plain = transfer(off.addr, n, up)
            .await
            .with_context(|| format!("{dir} without resume"))?;
        let plain_cpu = off_cpu()? - cpu0;
        let mut row = throughput_row(
            "resume",
            &format!("{dir} {} MiB, resume on (baseline: off)", n >> 20),
            mbps(n, on),
            mbps(n, plain),
        );
        row.note = format!(
            "{:+.1}% vs off; {:.2} vs {:.2} CPU-s/GB",
            100.0 * (plain.as_secs_f64() / on.as_secs_f64() - 1.0),
            per_gb(on_cpu, n),
            per_gb(plain_cpu, n),
        );
        report.add(row);
    }
    Ok(())
}

/// An echo tunnel opened and warmed up (greeting read, echo mode set).
async fn echo_tunnel(addr: std::net::SocketAddr) -> anyhow::Result<TcpStream> {
    let (mut sock, _) = traffic::connect(addr).await?;
    sock.write_all(&[traffic::ECHO]).await?;
    for _ in 0..3 {
        round_trip(&mut sock).await?;
    }
    Ok(sock)
}

/// One 1-byte echo; its time.
async fn round_trip(sock: &mut TcpStream) -> anyhow::Result<Duration> {
    let started = Instant::now();
    sock.write_all(b".").await?;
    let back = tokio::time::timeout(Duration::from_secs(30), sock.read_u8())
        .await
        .context("no echo within 30 s")??;
    anyhow::ensure!(back == b'.', "echo returned a different byte");
    Ok(started.elapsed())
}

fn rtts(t: Duration, rtt: Duration) -> f64 {
    t.as_secs_f64() / rtt.as_secs_f64()
}

async fn cuts(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let (to_server, cutter) =
        relay::spawn_cuttable(env.server.addr, env.rtt, env.stop.clone()).await?;
    let client = Proc::client("client-cut", &env.pki, to_server.port(), &[]).await?;
    let mut sock = echo_tunnel(client.addr).await?;
    let mut gaps = Vec::new();
    for _ in 0..env.sizes.cuts {
        let before = round_trip(&mut sock).await?;
        cutter.cut();
        let after = round_trip(&mut sock)
            .await
            .with_context(|| format!("after a cut: {}", client.log_tail()))?;
        gaps.push((after.as_secs_f64() * 1e3, before.as_secs_f64() * 1e3));
    }
    let (mut cut, mut steady): (Vec<f64>, Vec<f64>) = gaps.into_iter().unzip();
    let (p, b) = (quantile(&mut cut, 0.5), quantile(&mut steady, 0.5));
    report.add(Row {
        scenario: "resume",
        metric: format!(
            "cut to next echo, p50 of {} cuts, new connection (baseline: echo uncut)",
            cut.len()
        ),
        unit: "ms",
        postern: Some(p),
        baseline: Some(b),
        note: format!(
            "{:.1} RTT (max {:.1})",
            rtts(Duration::from_secs_f64(p / 1e3), env.rtt),
            rtts(
                Duration::from_secs_f64(quantile(&mut cut, 1.0) / 1e3),
                env.rtt
            )
        ),
    });
    Ok(())
}

async fn moves(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let to_server = env.relay(env.server.addr).await?;
    let span = env.sizes.fair_for * 2;
    let mut slowest = Vec::new();
    for flags in [&["--max-request-age", "1s"][..], &[]] {
        let client = Proc::client("client-moves", &env.pki, to_server.port(), flags).await?;
        let mut sock = echo_tunnel(client.addr).await?;
        let started = Instant::now();
        let mut worst = Duration::ZERO;
        while started.elapsed() < span {
            let took = round_trip(&mut sock)
                .await
                .with_context(|| format!("while moving: {}", client.log_tail()))?;
            worst = worst.max(took);
        }
        slowest.push(worst);
    }
    report.add(Row {
        scenario: "resume",
        metric: format!(
            "slowest echo over {} s, moving every 1 s (baseline: no moves)",
            span.as_secs()
        ),
        unit: "ms",
        postern: Some(slowest[0].as_secs_f64() * 1e3),
        baseline: Some(slowest[1].as_secs_f64() * 1e3),
        note: format!(
            "{:.1} RTT vs {:.1}",
            rtts(slowest[0], env.rtt),
            rtts(slowest[1], env.rtt)
        ),
    });
    Ok(())
}
