//! Caddy as a stand-in for Cloud Run's front end: a real, third-party HTTP/2
//! server that terminates TLS (ALPN h2) and reverse-proxies every request to
//! an h2c upstream, streaming both bodies.
//!
//! Caddy runs as a child process on an ephemeral loopback port with a
//! generated Caddyfile; all of its state lives in a scratch directory, and
//! it is killed when the handle is dropped. Tests call [`installed`] first
//! and skip (loudly) when the `caddy` binary is missing.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio::process::{Child, Command};

use super::{peer, Pki, TempDir, LIMIT};

/// True when `caddy` runs; otherwise prints a loud skip notice for `test`.
pub(crate) fn installed(test: &str) -> bool {
    peer::installed("caddy", "version", "caddy", test)
}

/// Extra settings for one Caddy instance.
#[derive(Default, Clone)]
pub(crate) struct Options {
    /// Lines added to the global `servers { }` block (e.g. `timeouts { write 2s }`).
    pub servers: String,
    /// Lines added to the `reverse_proxy { }` block (e.g. `header_down`).
    pub proxy: String,
    /// Extra environment for the Caddy process (e.g. `GODEBUG=http2debug=2`,
    /// which makes Go log every HTTP/2 frame it reads and writes).
    pub env: Vec<(String, String)>,
    /// Proxy to the upstream over HTTP/1.1 (Caddy's default transport, which
    /// passes WebSocket upgrades) instead of h2c.
    pub http1_upstream: bool,
    /// Offer only HTTP/1.1 to clients (ALPN http/1.1), as a front end or
    /// proxy that does not pass HTTP/2.
    pub only_http1: bool,
}

/// A running Caddy; killed on drop.
pub(crate) struct Caddy {
    child: Child,
    /// The loopback port Caddy serves HTTPS on.
    pub port: u16,
    dir: TempDir,
}

/// A port that was free a moment ago (bound to :0 and released).
pub(crate) async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr").port()
}

/// The generated Caddyfile. Settings that matter, and why:
/// - `protocols h1 h2`: Caddy refuses h2 without h1 ("cannot enable HTTP/2
///   without enabling HTTP/1.1"); ALPN offers both and our client insists on h2.
/// - `auto_https off`: no ACME, no HTTP->HTTPS redirect listener on :80;
///   the certificate comes from the test PKI via `tls CERT KEY`.
/// - `h2c://` upstream with `versions h2c`: prior-knowledge HTTP/2 in
///   cleartext, which is what Cloud Run speaks to a --use-http2 container.
/// - `flush_interval -1`: flush every response chunk at once, so the server's
///   inner ServerHello is not held back in a buffer. Caddy 2.6 already flushes
///   at once for responses without a length and for h2 bidirectional streams
///   (checked by hand: an interactive echo works without it), but that is a
///   heuristic; the setting makes the intent explicit.
/// - Request bodies are streamed by default (no `request_buffers`), so the
///   client's ClientHello, sent before the `200`, reaches the server, and the
///   end of the request body (END_STREAM, our TCP half-close) is passed on
///   while the response keeps flowing: HTTP/2 is full duplex end to end.
fn caddyfile(pki: &Pki, port: u16, upstream: SocketAddr, opts: &Options, dir: &TempDir) -> String {
    let (scheme, transport) = if opts.http1_upstream {
        ("http", "")
    } else {
        ("h2c", "transport http {\n\t\t\tversions h2c\n\t\t}")
    };
    let protocols = if opts.only_http1 { "h1" } else { "h1 h2" };
    format!(
        r#"{{
	admin off
	auto_https off
	storage file_system {{
		root {storage}
	}}
	servers {{
		protocols {protocols}
		{servers}
	}}
}}

https://localhost:{port} {{
	bind 127.0.0.1
	tls {cert} {key}
	reverse_proxy {scheme}://{upstream} {{
		flush_interval -1
		{proxy}
		{transport}
	}}
}}
"#,
        storage = dir.path("storage").display(),
        servers = opts.servers,
        proxy = opts.proxy,
        cert = pki.p("front.pem"),
        key = pki.p("front-key.pem"),
    )
}

impl Caddy {
    /// Starts Caddy on a fresh port in front of `upstream` (an h2c server).
    pub(crate) async fn start(pki: &Pki, upstream: SocketAddr) -> Caddy {
        Self::start_with(pki, upstream, free_port().await, &Options::default()).await
    }

    /// Starts Caddy on `port` (e.g. the port of an instance that was stopped).
    pub(crate) async fn start_with(
        pki: &Pki,
        upstream: SocketAddr,
        port: u16,
        opts: &Options,
    ) -> Caddy {
        let dir = TempDir::new("caddy");
        let config = dir.write("Caddyfile", &caddyfile(pki, port, upstream, opts, &dir));
        let mut cmd = Command::new("caddy");
        cmd.args(["run", "--config", &config, "--adapter", "caddyfile"])
            // Keep Caddy away from the real home directory.
            .env("HOME", dir.root())
            .env("XDG_DATA_HOME", dir.path("data"))
            .env("XDG_CONFIG_HOME", dir.path("config"))
            .envs(opts.env.iter().cloned());
        let child = peer::start("caddy", &mut cmd, &dir.path("caddy.log"), port).await;
        Caddy { child, port, dir }
    }

    /// The client's `--url` for this front end.
    pub(crate) fn url(&self) -> String {
        format!("https://localhost:{}/", self.port)
    }

    /// Caddy's own log, for failure messages.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("caddy.log")).unwrap_or_default()
    }

    /// Kills Caddy at once (SIGKILL): every connection dies without GOAWAY.
    pub(crate) async fn kill(mut self) {
        self.child.kill().await.expect("kill caddy");
    }

    /// Stops Caddy with SIGTERM (graceful: GOAWAY to clients) and waits for it to exit.
    pub(crate) async fn terminate(mut self) {
        let pid = self.child.id().expect("caddy pid").to_string();
        let ok = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        tokio::time::timeout(LIMIT, self.child.wait())
            .await
            .expect("caddy did not stop after SIGTERM")
            .expect("wait caddy");
    }
}
