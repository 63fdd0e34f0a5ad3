//! HAProxy as a front end that, unlike Caddy (Go's TLS), takes TLS 1.3
//! early data: OpenSSL's server side of 0-RTT, a real third-party peer for
//! the client's. It terminates TLS (ALPN h2, `allow-0rtt`) and forwards every
//! request over prior-knowledge h2c to the upstream.
//!
//! Each request leaves one log line (on stderr, kept in a scratch file) with
//! the length of the connection's client early traffic secret, which exists
//! only when the client offered 0-RTT data on a resumed session, so tests
//! can see what the front end took; the secret itself is never logged.

use std::net::SocketAddr;

use tokio::process::{Child, Command};

use super::caddy::free_port;
use super::{peer, Pki, TempDir};

/// True when `haproxy` runs; otherwise prints a loud skip notice for `test`.
pub(crate) fn installed(test: &str) -> bool {
    peer::installed("haproxy", "-v", "haproxy", test)
}

/// A running HAProxy; killed on drop.
pub(crate) struct HAProxy {
    _child: Child,
    /// The loopback port HAProxy serves HTTPS on.
    pub port: u16,
    dir: TempDir,
}

/// What HAProxy logged for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Logged {
    /// HTTP status HAProxy answered.
    pub status: u16,
    /// Whether the connection resumed a TLS session.
    pub resumed: bool,
    /// Whether the client offered early data on the request's connection.
    pub early: bool,
}

/// The generated configuration. `tune.ssl.keylog on` makes the early
/// traffic secret available to the log format (only its length is logged);
/// `timeout client`/`server` stay far above any test's length.
fn config(port: u16, pem: &str, upstream: SocketAddr) -> String {
    format!(
        r#"global
	tune.ssl.keylog on
	log stderr format raw local0 info

defaults
	mode http
	log global
	log-format "request status=%ST resumed=%[ssl_fc_is_resumed] early_secret=%[ssl_fc_client_early_traffic_secret,length]"
	timeout connect 5s
	timeout client 120s
	timeout server 120s

frontend front
	bind 127.0.0.1:{port} ssl crt {pem} alpn h2 allow-0rtt
	default_backend postern

backend postern
	server upstream {upstream} proto h2
"#
    )
}

/// HTTP/1.1 on both sides: TLS offering only ALPN http/1.1 to clients and
/// HTTP/1.1 to the upstream, where WebSocket upgrades pass (`timeout
/// tunnel` bounds an upgraded connection's idleness instead of
/// `client`/`server`).
fn config_http1(port: u16, pem: &str, upstream: SocketAddr) -> String {
    format!(
        r#"global
	log stderr format raw local0 info

defaults
	mode http
	log global
	log-format "request status=%ST resumed=%[ssl_fc_is_resumed] early_secret=-"
	timeout connect 5s
	timeout client 120s
	timeout server 120s
	timeout tunnel 120s

frontend front
	bind 127.0.0.1:{port} ssl crt {pem} alpn http/1.1
	default_backend postern

backend postern
	server upstream {upstream}
"#
    )
}

impl HAProxy {
    /// Starts HAProxy on a fresh port in front of `upstream` (an h2c server),
    /// with the PKI's `front` certificate.
    pub(crate) async fn start(pki: &Pki, upstream: SocketAddr) -> HAProxy {
        Self::start_with(pki, upstream, config).await
    }

    /// Starts HAProxy speaking only HTTP/1.1, to clients (ALPN http/1.1)
    /// and to `upstream`.
    pub(crate) async fn start_http1(pki: &Pki, upstream: SocketAddr) -> HAProxy {
        Self::start_with(pki, upstream, config_http1).await
    }

    async fn start_with(
        pki: &Pki,
        upstream: SocketAddr,
        config: fn(u16, &str, SocketAddr) -> String,
    ) -> HAProxy {
        let dir = TempDir::new("haproxy");
        let chain = std::fs::read_to_string(pki.p("front.pem")).expect("front cert");
        let key = std::fs::read_to_string(pki.p("front-key.pem")).expect("front key");
        let pem = dir.write("front.pem", &format!("{chain}{key}"));
        let port = free_port().await;
        let cfg = dir.write("haproxy.cfg", &config(port, &pem, upstream));
        // -db: stay in the foreground, logging to stderr.
        let mut cmd = Command::new("haproxy");
        cmd.args(["-db", "-f", &cfg]);
        let child = peer::start("haproxy", &mut cmd, &dir.path("haproxy.log"), port).await;
        HAProxy {
            _child: child,
            port,
            dir,
        }
    }

    /// HAProxy's own log, for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("haproxy.log")).unwrap_or_default()
    }

    /// `https://localhost:PORT/`, the URL a client is given.
    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    /// The requests logged so far, in the order they ended.
    pub(crate) fn requests(&self) -> Vec<Logged> {
        self.log().lines().filter_map(parse).collect()
    }
}

/// One `request …` line of [`config`]'s log format. A connection without
/// early data has no secret to measure: HAProxy logs `-` for it.
fn parse(line: &str) -> Option<Logged> {
    let rest = line.strip_prefix("request ")?;
    let field = |name: &str| {
        rest.split(' ')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    Some(Logged {
        status: field("status")?.parse().ok()?,
        resumed: field("resumed")? == "1",
        early: field("early_secret")?.parse::<usize>().is_ok_and(|n| n > 0),
    })
}
