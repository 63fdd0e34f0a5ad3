//! Beside bulk: 1-byte ping-pong on a tunnel that shares its HTTP/2
//! connection with a bulk tunnel, the bulk downloading and then uploading,
//! at loopback and at the emulated RTT; and how much of its throughput alone
//! the bulk keeps while the pings run. Raw TCP runs the same next to a raw
//! bulk connection (through the relay at the RTT).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::{per_gb, round_trip_row, Env, Proc, Report, Row};
use crate::bench::report::quantile;
use crate::bench::traffic;

/// One measurement: the ping samples (µs), the bulk's throughput beside
/// them as a share of its throughput alone (%), its rate (B/s) and the CPU
/// seconds per GB it cost while the pings ran.
struct Beside {
    pings: Vec<f64>,
    share: f64,
    rate: f64,
    cpu_per_gb: f64,
}

type Cpu<'a> = &'a dyn Fn() -> anyhow::Result<f64>;

pub(super) async fn beside(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let alone = env.sizes.fair_for / 2;
    place(
        env,
        report,
        "0 ms",
        env.client.addr,
        env.backend,
        None,
        env.sizes.pings,
        alone,
    )
    .await?;
    if env.rtt.is_zero() {
        return Ok(());
    }
    let to_server = env.relay(env.server.addr).await?;
    let to_backend = env.relay(env.backend).await?;
    let client = Proc::client("client-rtt", &env.pki, to_server.port(), &[]).await?;
    traffic::quick_exchange(client.addr).await?;
    // A round trip takes an RTT here: fewer samples, and a longer window
    // for the bulk, which needs a while to fill the path.
    let pings = (env.sizes.pings / 10).max(20);
    let label = format!("{} ms RTT", env.rtt.as_millis());
    let cpu = Some((&client, &env.server));
    place(
        env,
        report,
        &label,
        client.addr,
        to_backend,
        cpu,
        pings,
        alone * 2,
    )
    .await
}

/// Both directions through `postern` (a client's listener) and over raw TCP
/// (`raw`); CPU is read from `procs` (default: the main client and server).
#[allow(clippy::too_many_arguments)]
async fn place(
    env: &Env<'_>,
    report: &mut Report,
    label: &str,
    postern: SocketAddr,
    raw: SocketAddr,
    procs: Option<(&Proc, &Proc)>,
    pings: usize,
    alone: Duration,
) -> anyhow::Result<()> {
    let (client, server) = procs.unwrap_or((&env.client, &env.server));
    let cpu = || -> anyhow::Result<f64> { Ok(client.cpu_seconds()? + server.cpu_seconds()?) };
    let none = || Ok(0.0);
    for up in [false, true] {
        let dir = if up { "upload" } else { "download" };
        let mut p = measure(env, postern, up, pings, alone, &cpu)
            .await
            .with_context(|| format!("beside a bulk {dir} through postern"))?;
        let mut b = measure(env, raw, up, pings, alone, &none)
            .await
            .with_context(|| format!("beside a bulk {dir} over raw TCP"))?;
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (pq, bq) = (quantile(&mut p.pings, q), quantile(&mut b.pings, q));
            let metric = format!("1-byte round trip {name}, bulk {dir}, {label}");
            report.add(round_trip_row("beside", metric, pq, bq, ""));
        }
        report.add(Row {
            scenario: "beside",
            metric: format!("bulk {dir} beside the pings, {label}, share of alone"),
            unit: "%",
            postern: Some(p.share),
            baseline: Some(b.share),
            note: format!("{:.0} MB/s, {:.2} CPU-s/GB", p.rate / 1e6, p.cpu_per_gb),
        });
    }
    Ok(())
}

/// Starts one endless bulk transfer to `addr`, measures its rate for
/// `alone`, then runs `pings` round trips on a second tunnel beside it.
async fn measure(
    env: &Env<'_>,
    addr: SocketAddr,
    up: bool,
    pings: usize,
    alone: Duration,
    cpu: Cpu<'_>,
) -> anyhow::Result<Beside> {
    let stop = env.stop.child_token();
    let _stop = stop.clone().drop_guard();
    let count = Arc::new(AtomicU64::new(0));
    let task = tokio::spawn(traffic::stream_until(addr, count.clone(), stop.clone(), up));
    let moved = || count.load(Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while moved() == 0 {
        if Instant::now() > deadline || task.is_finished() {
            anyhow::bail!("the bulk transfer did not start");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Past the start (windows and slow start), then the measurement window.
    tokio::time::sleep(alone / 2).await;
    let (c0, t0) = (moved(), Instant::now());
    tokio::time::sleep(alone).await;
    let alone_rate = (moved() - c0) as f64 / t0.elapsed().as_secs_f64();
    let (c1, t1, cpu1) = (moved(), Instant::now(), cpu()?);
    let samples = traffic::ping_pong_for(addr, pings, alone)
        .await
        .context("ping-pong")?;
    let (bytes, span, cpu) = (moved() - c1, t1.elapsed(), cpu()? - cpu1);
    let rate = bytes as f64 / span.as_secs_f64();
    if task.is_finished() {
        anyhow::bail!("the bulk transfer ended during the pings");
    }
    stop.cancel();
    let _ = task.await;
    Ok(Beside {
        pings: samples,
        share: 100.0 * rate / alone_rate.max(1.0),
        rate,
        cpu_per_gb: per_gb(cpu, bytes),
    })
}
