//! The scenarios. Each measures Postern through the client process and the
//! same thing over raw TCP (straight to the backend, or through the relay
//! for RTT scenarios), and adds rows to the report.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::floor::{self, Meter};
use super::procs::{Cpu, Pki, Proc};
use super::report::{quantile, Report, Row};
use super::{relay, traffic, Scenario, Sizes};

mod beside;
mod destinations;
mod resume;
mod websocket;

/// The running topology shared by the scenarios.
struct Env<'a> {
    pki: Pki,
    backend: SocketAddr,
    /// Two plain TCP relays in a row in front of the backend: the floor.
    floor: (SocketAddr, Meter),
    server: Proc,
    client: Proc,
    rtt: Duration,
    sizes: &'a Sizes,
    stop: CancellationToken,
    fd_limit: u64,
}

impl Env<'_> {
    fn cpu(&self) -> anyhow::Result<f64> {
        Ok(self.client.cpu_seconds()? + self.server.cpu_seconds()?)
    }

    /// User and system CPU time of client and server together.
    fn cpu_times(&self) -> anyhow::Result<Cpu> {
        Ok(self.client.cpu()? + self.server.cpu()?)
    }

    /// A relay with the emulated RTT in front of `target`.
    async fn relay(&self, target: SocketAddr) -> anyhow::Result<SocketAddr> {
        relay::spawn(target, self.rtt, self.stop.clone())
            .await
            .context("starting the delay relay")
    }
}

/// Starts backend, server and client, then runs `list` in order.
pub(super) async fn run_all(
    list: &[Scenario],
    sizes: &Sizes,
    rtt: Duration,
    stop: CancellationToken,
    report: &mut Report,
) -> anyhow::Result<()> {
    eprintln!("postern bench: starting backend, postern server and postern client");
    let pki = Pki::new().context("issuing certificates")?;
    let backend = traffic::spawn_backend(stop.clone()).await?;
    let floor = floor::spawn_pair(backend, stop.clone()).context("starting the plain relays")?;
    let server = Proc::server(&pki, backend).await?;
    let flags: Vec<&str> = sizes.client_flags.iter().map(String::as_str).collect();
    let client = Proc::client("client", &pki, server.addr.port(), &flags).await?;
    let env = Env {
        pki,
        backend,
        floor,
        server,
        client,
        rtt,
        sizes,
        stop,
        fd_limit: report.fd_limit,
    };
    // Opens the client's HTTP/2 connection, so "open connection" holds.
    traffic::quick_exchange(env.client.addr)
        .await
        .with_context(|| format!("first tunnel: {}", env.client.log_tail()))?;
    for (i, scenario) in list.iter().enumerate() {
        let name = format!("{scenario:?}").to_lowercase();
        eprintln!("[{}/{}] {name}", i + 1, list.len());
        let result = match scenario {
            Scenario::Bulk => bulk(&env, report).await,
            Scenario::Latency => latency(&env, report).await,
            Scenario::Beside => beside::beside(&env, report).await,
            Scenario::Setup => setup(&env, report).await,
            Scenario::Rate => rate(&env, report).await,
            Scenario::RttBulk => rtt_bulk(&env, report).await,
            Scenario::Fairness => fairness(&env, report).await,
            Scenario::Resume => resume::resume(&env, report).await,
            Scenario::Destinations => destinations::destinations(&env, report).await,
            Scenario::Websocket => websocket::websocket(&env, report).await,
            Scenario::Memory => memory(&env, report).await,
        };
        result.with_context(|| {
            format!(
                "scenario {name}\nserver log: {}\nclient log: {}",
                env.server.log_tail(),
                env.client.log_tail()
            )
        })?;
    }
    Ok(())
}

fn mbps(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / 1e6 / t.as_secs_f64()
}

fn ratio(p: f64, b: f64) -> String {
    format!("{:.2}x raw", p / b)
}

fn throughput_row(scenario: &'static str, metric: &str, p: f64, b: f64) -> Row {
    Row {
        scenario,
        metric: metric.into(),
        unit: "MB/s",
        postern: Some(p),
        baseline: Some(b),
        note: ratio(p, b),
    }
}

/// A round-trip row in µs: Postern's `p` against `b`, the difference noted
/// with `over` after it (what `b` was, where not raw TCP).
fn round_trip_row(scenario: &'static str, metric: String, p: f64, b: f64, over: &str) -> Row {
    Row {
        scenario,
        metric,
        unit: "µs",
        postern: Some(p),
        baseline: Some(b),
        note: format!("{:+.0} µs{over}", p - b),
    }
}

async fn bulk(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let n = env.sizes.bulk;
    let (floor, relays) = &env.floor;
    for up in [true, false] {
        let dir = if up { "upload" } else { "download" };
        let cpu0 = env.cpu_times()?;
        let t = transfer(env.client.addr, n, up)
            .await
            .with_context(|| format!("{dir} through postern"))?;
        let cpu = env.cpu_times()? - cpu0;
        let b = transfer(env.backend, n, up)
            .await
            .with_context(|| format!("{dir} over raw TCP"))?;
        let relays0 = relays.cpu()?;
        let f = transfer(*floor, n, up)
            .await
            .with_context(|| format!("{dir} through the plain relays"))?;
        let floor_cpu = relays.cpu()? - relays0;
        let metric = format!("{dir} {} MiB, verified", n >> 20);
        report.add(throughput_row("bulk", &metric, mbps(n, t), mbps(n, b)));
        let mut row = cpu_row("bulk", dir, cpu.total(), n, t);
        let floor_per_gb = per_gb(floor_cpu.total(), n);
        row.baseline = Some(floor_per_gb);
        let ratio = match row.postern {
            // Small transfers can take the relays less than a clock tick.
            Some(p) if floor_per_gb > 0.0 => format!("{:.2}x their CPU", p / floor_per_gb),
            _ => "their CPU under a clock tick".into(),
        };
        // The kernel's part beside the relays', which is nearly all kernel:
        // what is left above it is Postern's own work in user space.
        row.note = format!(
            "{}, system {:.2}; raw: two plain relays, {:.0} MB/s, system {:.2}; {ratio}",
            row.note,
            per_gb(cpu.system, n),
            mbps(n, f),
            per_gb(floor_cpu.system, n),
        );
        report.add(row);
    }
    Ok(())
}

/// CPU seconds per GB for `cpu` seconds spent on `bytes`.
fn per_gb(cpu: f64, bytes: u64) -> f64 {
    cpu / (bytes as f64 / 1e9).max(1e-9)
}

/// CPU seconds per GB of client and server for `bytes` moved in `t`.
fn cpu_row(scenario: &'static str, what: &str, cpu: f64, bytes: u64, t: Duration) -> Row {
    Row {
        scenario,
        metric: format!("{what} CPU, client + server"),
        unit: "s/GB",
        postern: Some(per_gb(cpu, bytes)),
        baseline: None,
        note: format!("{:.0}% of a core", 100.0 * cpu / t.as_secs_f64()),
    }
}

async fn transfer(addr: SocketAddr, n: u64, up: bool) -> std::io::Result<Duration> {
    if up {
        traffic::upload(addr, n).await
    } else {
        traffic::download(addr, n).await
    }
}

async fn latency(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let pings = env.sizes.pings;
    let (floor, relays) = &env.floor;
    let cpu0 = env.cpu()?;
    let p = traffic::ping_pong(env.client.addr, pings).await;
    let cpu = env.cpu()? - cpu0;
    let b = traffic::ping_pong(env.backend, pings).await;
    let relays0 = relays.cpu_seconds()?;
    let f = traffic::ping_pong(*floor, pings).await;
    let floor_cpu = relays.cpu_seconds()? - relays0;
    let (mut p, mut b) = (p.context("ping-pong")?, b.context("ping-pong")?);
    let mut f = f.context("ping-pong through the plain relays")?;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let (pq, bq, fq) = (
            quantile(&mut p, q),
            quantile(&mut b, q),
            quantile(&mut f, q),
        );
        let metric = format!("1-byte round trip {name}, idle");
        report.add(round_trip_row("latency", metric.clone(), pq, bq, ""));
        let metric = format!("{metric}, raw: 2 relays");
        report.add(round_trip_row(
            "latency",
            metric,
            pq,
            fq,
            " over two plain relays",
        ));
    }
    report.add(Row {
        scenario: "latency",
        metric: "CPU per idle round trip, client + server".into(),
        unit: "µs",
        postern: Some(per_trip(cpu, pings)),
        baseline: Some(per_trip(floor_cpu, pings)),
        note: "raw: the two plain relays".into(),
    });
    busy_polling(env, &mut b, report).await
}

/// The idle round trip again through a client and server that busy-poll
/// (`--busy-poll`, off by default), against raw TCP's times `b`.
async fn busy_polling(env: &Env<'_>, b: &mut [f64], report: &mut Report) -> anyhow::Result<()> {
    const FLAGS: &[&str] = &["--busy-poll", BUSY_POLL];
    const BUSY_POLL: &str = "100us";
    let server = Proc::server_with("server-busy-poll", &env.pki, env.backend, FLAGS).await?;
    let client = Proc::client("client-busy-poll", &env.pki, server.addr.port(), FLAGS).await?;
    traffic::quick_exchange(client.addr).await?;
    let cpu0 = client.cpu_seconds()? + server.cpu_seconds()?;
    let mut p = traffic::ping_pong(client.addr, env.sizes.pings)
        .await
        .context("ping-pong, busy polling")?;
    let cpu = client.cpu_seconds()? + server.cpu_seconds()? - cpu0;
    for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
        let metric = format!("1-byte round trip {name}, idle, --busy-poll {BUSY_POLL}");
        let (pq, bq) = (quantile(&mut p, q), quantile(b, q));
        report.add(round_trip_row("latency", metric, pq, bq, ""));
    }
    report.add(Row {
        scenario: "latency",
        metric: format!("CPU per idle round trip, --busy-poll {BUSY_POLL}"),
        unit: "µs",
        postern: Some(per_trip(cpu, env.sizes.pings)),
        baseline: None,
        note: "client + server".into(),
    });
    Ok(())
}

/// CPU seconds over `pings` round trips, in µs per round trip. Ticks of
/// 10 ms over a few hundred milliseconds: a coarse figure in `--quick` runs.
fn per_trip(cpu: f64, pings: usize) -> f64 {
    1e6 * cpu / pings.max(1) as f64
}

type Streams = (Vec<Arc<AtomicU64>>, Vec<tokio::task::JoinHandle<()>>);

/// Starts `n` endless downloads and waits until each has received bytes.
async fn start_streams(
    addr: SocketAddr,
    n: usize,
    stop: &CancellationToken,
) -> anyhow::Result<Streams> {
    let counts: Vec<_> = (0..n).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let tasks = counts
        .iter()
        .map(|c| {
            let (c, stop) = (c.clone(), stop.clone());
            tokio::spawn(async move {
                let _ = traffic::stream_until(addr, c, stop, false).await;
            })
        })
        .collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while counts.iter().any(|c| c.load(Ordering::Relaxed) == 0) {
        if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            stop.cancel();
            anyhow::bail!("bulk streams did not start");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((counts, tasks))
}

/// Times `n` connects to first byte (ms); `hold` keeps the tunnels open
/// (so a one-stream-per-connection client must dial anew every time).
async fn first_bytes(addr: SocketAddr, n: usize, hold: bool) -> anyhow::Result<Vec<f64>> {
    let mut held: Vec<TcpStream> = Vec::new();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let (mut sock, t) = traffic::connect(addr)
            .await
            .with_context(|| format!("first byte of connection {} of {n} to {addr}", i + 1))?;
        times.push(t.as_secs_f64() * 1e3);
        if hold {
            held.push(sock);
        } else {
            let _ = sock.write_all(&[traffic::QUIT]).await;
        }
    }
    Ok(times)
}

async fn setup(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    const COLD: &[&str] = &["--max-streams-per-connection", "1"];
    let (n0, nr) = env.sizes.setups;
    let rtt_ms = env.rtt.as_secs_f64() * 1e3;
    let base0 = first_bytes(env.backend, n0, false).await?;
    let open0 = first_bytes(env.client.addr, n0, false).await?;
    let cold = Proc::client("client-cold", &env.pki, env.server.addr.port(), COLD).await?;
    let cold0 = first_bytes(cold.addr, n0, true).await?;
    drop(cold);
    // The first tunnel of processes just started: a Cloud Run instance's
    // first request, a client just launched (one-time costs such as the
    // crypto library's random number generator seeding show here).
    let mut fresh = Vec::with_capacity(nr);
    for _ in 0..nr {
        let server = Proc::server(&env.pki, env.backend).await?;
        let client = Proc::client("client-fresh", &env.pki, server.addr.port(), COLD).await?;
        fresh.extend(first_bytes(client.addr, 1, true).await?);
    }
    let mut rows = vec![("open connection, 0 ms", open0, base0.clone(), 0.0)];
    rows.push(("cold connection, 0 ms", cold0, base0.clone(), 0.0));
    rows.push(("new processes, 0 ms", fresh, base0, 0.0));
    if rtt_ms > 0.0 {
        let to_server = env.relay(env.server.addr).await?;
        let to_backend = env.relay(env.backend).await?;
        let base = first_bytes(to_backend, nr, false).await?;
        let warm = Proc::client("client-rtt", &env.pki, to_server.port(), &[]).await?;
        traffic::quick_exchange(warm.addr).await?;
        let open = first_bytes(warm.addr, nr, false).await?;
        drop(warm);
        let cold = Proc::client("client-rtt-cold", &env.pki, to_server.port(), COLD).await?;
        let coldr = first_bytes(cold.addr, nr, true).await?;
        drop(cold);
        // The same without 0-RTT on the outer hop: what early data saves.
        let full: Vec<&str> = COLD.iter().copied().chain(["--no-early-data"]).collect();
        let cold = Proc::client("client-rtt-cold-1rtt", &env.pki, to_server.port(), &full).await?;
        let cold_full = first_bytes(cold.addr, nr, true).await?;
        rows.push(("open connection, RTT", open, base.clone(), rtt_ms));
        rows.push(("cold connection, RTT", coldr, base.clone(), rtt_ms));
        rows.push((
            "cold connection, RTT, --no-early-data",
            cold_full,
            base,
            rtt_ms,
        ));
    }
    for (what, mut p, mut b, rtt) in rows {
        for (q, name) in [(0.5, "p50"), (0.99, "p99")] {
            let (pq, bq) = (quantile(&mut p, q), quantile(&mut b, q));
            let note = if rtt > 0.0 {
                format!("{:.2} RTT (raw {:.2})", pq / rtt, bq / rtt)
            } else {
                format!("+{:.2} ms", pq - bq)
            };
            report.add(Row {
                scenario: "setup",
                metric: format!("first byte {name}, {what}"),
                unit: "ms",
                postern: Some(pq),
                baseline: Some(bq),
                note,
            });
        }
    }
    Ok(())
}

/// Runs short connections from `workers` tasks for `span`; (ok, errors, elapsed).
async fn churn(addr: SocketAddr, workers: usize, span: Duration) -> (u64, u64, Duration) {
    churn_with(workers, span, move || async move {
        traffic::quick_exchange(addr).await.is_ok()
    })
    .await
}

/// Runs `one` (true when it worked) over and over from `workers` tasks for
/// `span`; (ok, errors, elapsed).
async fn churn_with<F, Fut>(workers: usize, span: Duration, one: F) -> (u64, u64, Duration)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + span;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (ok, failed, one) = (ok.clone(), failed.clone(), one.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let counter = if one().await { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed();
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        elapsed,
    )
}

async fn rate(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    const WORKERS: usize = 16;
    let (ok, failed, t) = churn(env.client.addr, WORKERS, env.sizes.rate_for).await;
    // Raw TCP needs far less time for a stable figure (and fewer TIME_WAITs).
    let span = env.sizes.rate_for.min(Duration::from_secs(2));
    let (bok, bfailed, bt) = churn(env.backend, WORKERS, span).await;
    let (p, b) = (ok as f64 / t.as_secs_f64(), bok as f64 / bt.as_secs_f64());
    report.add(Row {
        scenario: "rate",
        metric: format!("new tunnels/s, {WORKERS} at a time"),
        unit: "1/s",
        postern: Some(p),
        baseline: Some(b),
        note: format!("{ok} ok, {failed} errors (raw: {bfailed} errors)"),
    });
    if failed > 0 {
        anyhow::bail!("{failed} tunnels failed during the rate scenario");
    }
    Ok(())
}

async fn rtt_bulk(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    let n = env.sizes.rtt_bulk;
    let to_server = env.relay(env.server.addr).await?;
    let to_backend = env.relay(env.backend).await?;
    let client = Proc::client("client-rtt", &env.pki, to_server.port(), &[]).await?;
    traffic::quick_exchange(client.addr).await?;
    for up in [true, false] {
        let dir = if up { "upload" } else { "download" };
        let cpu =
            || -> anyhow::Result<f64> { Ok(client.cpu_seconds()? + env.server.cpu_seconds()?) };
        let cpu0 = cpu()?;
        let t = transfer(client.addr, n, up)
            .await
            .with_context(|| format!("{dir} through postern"))?;
        let cpu = cpu()? - cpu0;
        let b = transfer(to_backend, n, up)
            .await
            .with_context(|| format!("{dir} over raw TCP"))?;
        let metric = format!("{dir} {} MiB at {} ms RTT", n >> 20, env.rtt.as_millis());
        report.add(throughput_row("rtt-bulk", &metric, mbps(n, t), mbps(n, b)));
        report.add(cpu_row("rtt-bulk", dir, cpu, n, t));
    }
    Ok(())
}

async fn fairness(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    const N: usize = 8;
    let mut figures = Vec::new();
    let mut cpu = (0.0, 0, Duration::ZERO);
    for addr in [env.client.addr, env.backend] {
        let stop = env.stop.child_token();
        let (counts, tasks) = start_streams(addr, N, &stop).await?;
        let snap = |c: &[Arc<AtomicU64>]| -> Vec<u64> {
            c.iter().map(|c| c.load(Ordering::Relaxed)).collect()
        };
        let before = snap(&counts);
        let (started, cpu0) = (Instant::now(), env.cpu()?);
        // The measurement window itself, not a synchronisation.
        tokio::time::sleep(env.sizes.fair_for).await;
        let after = snap(&counts);
        let (span, cpu1) = (started.elapsed(), env.cpu()?);
        stop.cancel();
        for t in tasks {
            let _ = t.await;
        }
        let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let total: u64 = deltas.iter().sum();
        let slowest = deltas.iter().copied().min().unwrap_or(0);
        let share = 100.0 * slowest as f64 * N as f64 / total.max(1) as f64;
        if figures.is_empty() {
            cpu = (cpu1 - cpu0, total, span);
        }
        figures.push((mbps(total, span), share));
    }
    let ((p, ps), (b, bs)) = (figures[0], figures[1]);
    report.add(throughput_row(
        "fairness",
        "8 downloads on one connection, total",
        p,
        b,
    ));
    report.add(cpu_row("fairness", "8 downloads", cpu.0, cpu.1, cpu.2));
    report.add(Row {
        scenario: "fairness",
        metric: "slowest of 8, share of fair".into(),
        unit: "%",
        postern: Some(ps),
        baseline: Some(bs),
        note: String::new(),
    });
    Ok(())
}

async fn memory(env: &Env<'_>, report: &mut Report) -> anyhow::Result<()> {
    const BATCH: usize = 64;
    // This process holds two sockets per tunnel (app and backend side).
    let fit = (env.fd_limit.saturating_sub(256) / 2) as usize;
    // A pair of its own: the main pair's heap still holds what the bulk
    // scenarios freed, which idle tunnels reuse, or which the allocator
    // returns meanwhile (RSS fell while 1000 tunnels opened in one run), so
    // its figure depended on the scenarios before it.
    let server = Proc::server(&env.pki, env.backend).await?;
    let client = Proc::client("client-memory", &env.pki, server.addr.port(), &[]).await?;
    traffic::quick_exchange(client.addr).await?;
    let base = (client.rss_kib()?, server.rss_kib()?);
    let mut held: Vec<TcpStream> = Vec::new();
    for &wanted in &env.sizes.idle {
        let target = wanted.min(fit);
        if target < wanted {
            eprintln!(
                "    open-file limit {}: {target} tunnels instead of {wanted}",
                env.fd_limit
            );
        }
        while held.len() < target {
            let k = BATCH.min(target - held.len());
            let mut set = tokio::task::JoinSet::new();
            for _ in 0..k {
                set.spawn(traffic::connect(client.addr));
            }
            while let Some(r) = set.join_next().await {
                let (sock, _) = r?.with_context(|| format!("idle tunnel {}", held.len() + 1))?;
                held.push(sock);
            }
        }
        eprintln!("    {target} idle tunnels open");
        let now = (client.rss_kib()?, server.rss_kib()?);
        for (who, b, n) in [("client", base.0, now.0), ("server", base.1, now.1)] {
            report.add(Row {
                scenario: "memory",
                metric: format!("RSS per idle tunnel, {who}, {target} open"),
                unit: "KiB",
                postern: Some(n.saturating_sub(b) as f64 / target as f64),
                baseline: None,
                note: format!("{} MiB -> {} MiB", b >> 10, n >> 10),
            });
        }
    }
    Ok(())
}
