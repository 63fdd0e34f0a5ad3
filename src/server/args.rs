//! The flags of `postern server`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::duration::{parse_duration, parse_interval};
use crate::transport::busy_poll;
use crate::transport::settings::MAX_HEADER_LIST;

/// `postern server`: the side next to the backend (the Cloud Run container).
///
/// Trust notes: every tunnel runs a full inner handshake (session
/// resumption is off, since resumed sessions skip certificate checks), so
/// `--crl`, expiry and `--allow` apply to every tunnel; certificates, keys,
/// CAs, CRLs and `--config` reload on SIGHUP and when the files change,
/// without touching open tunnels.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to listen on [default: 0.0.0.0:PORT, see --port].
    #[arg(long, env = "POSTERN_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Port of the default listen address (Cloud Run sets PORT); --listen wins.
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Backend to connect authenticated tunnels to: HOST:PORT, or
    /// `builtin:banner` / `builtin:echo` to run a built-in backend in-process.
    #[arg(long, env = "POSTERN_BACKEND", required_unless_present = "config")]
    pub backend: Option<String>,
    /// Request path that carries tunnels (POST); CONNECT is accepted too.
    #[arg(long, env = "POSTERN_PATH", default_value = "/")]
    pub path: String,
    /// Routes file (TOML `[[route]]` tables with path, sni, backend, allow,
    /// proxy_protocol) for several backends; replaces --backend/--path/--allow.
    /// Reloaded like the certificates.
    #[arg(
        long,
        env = "POSTERN_CONFIG",
        conflicts_with_all = ["backend", "path", "allow", "proxy_protocol"]
    )]
    pub config: Option<PathBuf>,
    /// Inner TLS certificate chain (PEM).
    #[arg(long, env = "POSTERN_CERT", required_unless_present = "no_inner_tls")]
    pub cert: Option<PathBuf>,
    /// Inner TLS private key (PEM: PKCS#8, SEC1 or PKCS#1).
    #[arg(long, env = "POSTERN_KEY", required_unless_present = "no_inner_tls")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) that client certificates must chain to (PEM).
    #[arg(
        long,
        env = "POSTERN_CLIENT_CA",
        required_unless_present = "no_inner_tls"
    )]
    pub client_ca: Option<PathBuf>,
    /// CRL file (PEM `X509 CRL`); repeatable. Checked at every handshake
    /// against the client's own certificate; a client whose CA has no CRL
    /// here is not refused for that. TLS session resumption is off on the
    /// inner layer (resumed sessions would skip this check), so every tunnel
    /// is checked; a changed CRL file applies to new tunnels within
    /// --watch-interval.
    #[arg(long, env = "POSTERN_CRL", value_delimiter = ',')]
    pub crl: Vec<PathBuf>,
    /// Allowed client identities: `uri:…`, `dns:…`, `cn:…` or a bare
    /// `spiffe://…` (a trailing `/*` matches a prefix). Default: any
    /// certificate that chains to --client-ca.
    #[arg(long, env = "POSTERN_ALLOW", value_delimiter = ',')]
    pub allow: Vec<String>,
    /// Send a PROXY protocol v2 header to the backend: source = the client
    /// address (the last X-Forwarded-For entry behind a front end, port 0;
    /// else the TCP peer), destination = the backend, and the verified
    /// client identity in TLVs 0x20/0xE0.
    #[arg(long)]
    pub proxy_protocol: bool,
    /// Leave out the inner TLS: a plain tunnel (for apps that do their own
    /// TLS, and for Envoy POST-tunnel compatibility).
    #[arg(long, conflicts_with_all = ["cert", "key", "client_ca", "crl"])]
    pub no_inner_tls: bool,
    /// Serve TLS with ALPN h2 using this certificate (self-hosted, no front end).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Take no TLS 1.3 early data (0-RTT) on --tls-cert's TLS. By default a
    /// client resuming a session may send its first requests with its
    /// ClientHello, and they are answered a round trip sooner.
    #[arg(long, requires = "tls_cert")]
    pub no_early_data: bool,
    /// How often to check the certificate, key, CA, CRL and config files for
    /// changes (`500ms`, `2s`, `1m`; a bare number is seconds; 0 = only
    /// reload on SIGHUP).
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub watch_interval: Duration,
    /// Time open tunnels get to finish after SIGTERM (Cloud Run kills 10 s
    /// after it); `500ms`, `8s`, `1m`, a bare number is seconds.
    #[arg(long, env = "POSTERN_DRAIN_TIMEOUT", default_value = "8s", value_parser = parse_interval)]
    pub drain_timeout: Duration,
    /// Time allowed for each handshake (outer TLS, HTTP/2 preface, inner mTLS)
    /// and for the backend connect; `500ms`, `10s`, `1m`, a bare number is seconds.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Close a tunnel that carried no byte either way for this long
    /// (e.g. `300`, `90s`, `500ms`, `5m`; default: never).
    #[arg(long, value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Close any tunnel this long after it opened (default: never; Cloud Run
    /// ends requests at its own request timeout anyway).
    #[arg(long, value_parser = parse_duration)]
    pub max_lifetime: Option<Duration>,
    /// Ping each WebSocket tunnel this often (`30s`, `1m`; 0 = never), so
    /// front ends and proxies that drop idle connections keep it; a client
    /// that answers no ping for two intervals is dropped (its session can
    /// resume).
    #[arg(long, env = "POSTERN_WEBSOCKET_PING", default_value = "30s", value_parser = parse_interval)]
    pub websocket_ping: Duration,
    /// Do not offer resume: every tunnel is the plain byte stream, and a cut
    /// ends it.
    #[arg(long, env = "POSTERN_NO_RESUME")]
    pub no_resume: bool,
    /// How long a cut tunnel's session (its backend connection and buffers)
    /// waits for its client to resume; `30s`, `2m`, a bare number is seconds.
    #[arg(long, env = "POSTERN_RESUME_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub resume_timeout: Duration,
    /// Worker threads; each HTTP/2 connection and its tunnels run on one
    /// [default: one per CPU].
    #[arg(long, env = "POSTERN_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// After a worker thread wakes, keep polling its sockets this long
    /// before it may sleep again (`50us`, `200us`; 0 = off): an answer that
    /// comes back meanwhile is taken without a wake-up, which on a VM saves
    /// tens of microseconds per round trip, for up to this much CPU per wake.
    #[arg(long, env = "POSTERN_BUSY_POLL", default_value = "0", value_parser = busy_poll::parse_flag)]
    pub busy_poll: Duration,
    /// Most tunnels open at once in this process; more are answered 503.
    #[arg(long, default_value_t = 16384)]
    pub max_tunnels: usize,
    /// Most HTTP/2 connections open at once in this process; more are
    /// closed as soon as they are accepted (counted in
    /// `postern_connections_refused_total`).
    #[arg(long, env = "POSTERN_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Close an HTTP/2 connection that has had no open request for this
    /// long (GOAWAY; `90s`, `5m`; 0 = never).
    #[arg(long, env = "POSTERN_CONNECTION_IDLE_TIMEOUT", default_value = "5m", value_parser = parse_interval)]
    pub connection_idle_timeout: Duration,
    /// Bytes (MiB) peers can make the server buffer: HTTP/2 receive windows
    /// and, with resume, sessions' replay buffers and inboxes (half each).
    /// Each connection needs 256 KiB of windows to start (beyond that it is
    /// closed at once), and each authenticated tunnel earns its connection
    /// 8 MiB more (up to 32 MiB) while the budget lasts; a session holds
    /// 256 KiB without drawing, and a full budget slows its writer and
    /// stops its carrier reads. 256: a default Cloud Run instance has
    /// 512 MiB (docs/cloud-run.md, "Sizing an instance").
    #[arg(long, env = "POSTERN_BUFFER_BUDGET_MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_budget_mib: u64,
    /// Most concurrent tunnels per HTTP/2 connection (SETTINGS_MAX_CONCURRENT_STREAMS);
    /// more are refused with REFUSED_STREAM.
    #[arg(long, default_value_t = 1000)]
    pub max_streams_per_connection: u32,
    /// Largest request header block accepted (SETTINGS_MAX_HEADER_LIST_SIZE), bytes.
    #[arg(long, default_value_t = MAX_HEADER_LIST)]
    pub max_header_list_size: u32,
    /// Serve Prometheus metrics at http://ADDR/metrics (off by default; never
    /// put it on the tunnel port).
    #[arg(long, env = "POSTERN_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::parse_args;

    #[test]
    fn durations_take_units_and_refuse_zero() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn every_duration_flag_takes_units_and_off_is_zero() {
        let base = ["--backend", "h:1", "--no-inner-tls"];
        let parse = |extra: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            parse_args::<Args>("server", &argv)
        };
        let args = parse(&[
            "--watch-interval",
            "500ms",
            "--drain-timeout",
            "1m",
            "--handshake-timeout",
            "3",
            "--idle-timeout",
            "90s",
            "--max-lifetime",
            "5m",
            "--port",
            "9000",
        ])
        .expect("valid flags");
        assert_eq!(args.watch_interval, Duration::from_millis(500));
        assert_eq!(args.drain_timeout, Duration::from_secs(60));
        assert_eq!(args.handshake_timeout, Duration::from_secs(3));
        assert_eq!(args.idle_timeout, Some(Duration::from_secs(90)));
        assert_eq!(args.max_lifetime, Some(Duration::from_secs(300)));
        assert_eq!(args.port, 9000);
        let args = parse(&["--watch-interval", "0", "--drain-timeout", "0"]).expect("zero");
        assert!(args.watch_interval.is_zero() && args.drain_timeout.is_zero());
        // One rule with the client's: zero in any unit is off.
        let args = parse(&["--watch-interval", "0ms", "--drain-timeout", "0s"]).expect("0s");
        assert!(args.watch_interval.is_zero() && args.drain_timeout.is_zero());
        let defaults = parse(&[]).expect("defaults");
        assert_eq!(defaults.max_connections, 1024);
        assert_eq!(defaults.connection_idle_timeout, Duration::from_secs(300));
        assert_eq!(defaults.buffer_budget_mib, 256);
        let off = parse(&["--connection-idle-timeout", "0"]).expect("off");
        assert!(off.connection_idle_timeout.is_zero());
        assert!(parse(&["--max-connections", "0"]).is_err());
        assert!(parse(&["--buffer-budget-mib", "0"]).is_err());
        assert_eq!(defaults.watch_interval, Duration::from_secs(2));
        assert_eq!(defaults.drain_timeout, Duration::from_secs(8));
        assert_eq!(defaults.handshake_timeout, Duration::from_secs(10));
        for (flag, bad) in [("--handshake-timeout", "0"), ("--watch-interval", "2h")] {
            let err = format!("{:#}", parse(&[flag, bad]).expect_err(bad));
            assert!(err.contains(flag) && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn no_early_data_needs_the_outer_tls_it_is_about() {
        let base = ["--backend", "h:1", "--no-inner-tls", "--no-early-data"];
        let err = format!(
            "{:#}",
            parse_args::<Args>("server", &base).expect_err("alone")
        );
        assert!(err.contains("--tls-cert"), "{err}");
        let argv: Vec<&str> = base
            .iter()
            .chain(&["--tls-cert", "c.pem", "--tls-key", "k.pem"])
            .copied()
            .collect();
        assert!(parse_args::<Args>("server", &argv).unwrap().no_early_data);
        assert!(
            !parse_args::<Args>("server", &base[..3])
                .unwrap()
                .no_early_data
        );
    }
}
