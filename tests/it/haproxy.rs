//! Tunnels through HAProxy, an OpenSSL front end that takes TLS 1.3 early
//! data (Caddy never offers it): the client's 0-RTT path against a server
//! side that is not Postern's own. Skipped, loudly, when `haproxy` is not
//! installed.

use std::time::Duration;

use crate::harness::early_watch::EarlyWatch;
use crate::harness::haproxy::{self, HAProxy, Logged};
use crate::harness::*;
use tokio_util::sync::CancellationToken;

/// A first tunnel held open, then a second on a connection of its own (one
/// stream per connection) echoing 4 MiB intact, through a relay that watches
/// for 0-RTT records (holding HAProxy's answer on connection `hold` until one
/// comes). Returns what HAProxy logged for both, the first connection's first
/// (the only one not resumed: HAProxy logs a tunnel in no fixed order against
/// the other), and per connection whether the client sent 0-RTT records.
async fn two_connections(client_extra: &[&str], hold: Option<usize>) -> (Vec<Logged>, Vec<bool>) {
    let shutdown = CancellationToken::new();
    let pki = Pki::new();
    let backend = TestBackend::start(Backend::Echo).await;
    let (server, mut reports) =
        start_server(backend.addr, &strs(&server_flags(&pki)), &shutdown).await;
    let front = HAProxy::start(&pki, server).await;
    let watch = EarlyWatch::start(([127, 0, 0, 1], front.port).into(), hold).await;
    let url = format!("https://localhost:{}/", watch.addr.port());
    let client = start_client_one_stream_each(&pki, &url, client_extra, &shutdown).await;

    let held = open_echo(client, 1).await;
    let bulk = random_bytes(4 << 20, 3);
    let back = round_trip(client, &bulk)
        .await
        .expect("second tunnel (a held connection waits for the client's 0-RTT records)");
    assert_eq!(sha256(&back), sha256(&bulk), "{}", front.log());
    let report = next_report(&mut reports).await;
    assert_eq!(report.outcome, Ok(()));
    assert_eq!(report.totals.outbound, bulk.len() as u64);

    drop(held);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while front.requests().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy did not log both tunnels:\n{}",
            front.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    let mut logged = front.requests();
    logged.sort_by_key(|l| l.resumed);
    (logged, watch.early())
}

/// The second connection resumes the first's TLS session and sends its
/// HTTP/2 preface and tunnel request as 0-RTT data, which HAProxy logs as
/// offered; the tunnel is intact (for HTTP/2 HAProxy answers once the
/// handshake is done).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_takes_a_resumed_connections_early_data_and_the_tunnel_is_intact() {
    if !haproxy::installed(
        "haproxy_takes_a_resumed_connections_early_data_and_the_tunnel_is_intact",
    ) {
        return;
    }
    let (logged, early) = two_connections(&[], Some(1)).await;
    assert_eq!(early, vec![false, true], "0-RTT records per connection");
    let second = Logged {
        status: 200,
        resumed: true,
        early: true,
    };
    let first = Logged {
        status: 200,
        resumed: false,
        early: false,
    };
    assert_eq!(logged, vec![first, second]);
}

/// `--no-early-data`: the second connection still resumes at HAProxy, and
/// neither offers nor sends anything before the handshake ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_early_data_the_client_resumes_at_haproxy_without_it() {
    if !haproxy::installed("with_no_early_data_the_client_resumes_at_haproxy_without_it") {
        return;
    }
    let (logged, early) = two_connections(&["--no-early-data"], None).await;
    assert_eq!(early, vec![false, false], "0-RTT records per connection");
    let resumed = |resumed| Logged {
        status: 200,
        resumed,
        early: false,
    };
    assert_eq!(logged, vec![resumed(false), resumed(true)]);
}
