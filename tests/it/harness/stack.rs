//! The one way to start each piece in-process: a server from its real flags,
//! a client, the demo front end (Caddy lives in `caddy.rs`), and the whole
//! client -> (front end) -> server stack.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::api::{client, parse_args, pem, server, tls, CertSlot, Config};
use super::caddy::Caddy;
use super::hooks::{self, Reports, TunnelReport};
use super::{Pki, LIMIT};

/// A loopback listener on an ephemeral port.
pub(crate) async fn bind_local() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback")
}

/// The usual inner mTLS server flags for `pki`.
pub(crate) fn server_flags(pki: &Pki) -> Vec<String> {
    vec![
        "--cert".into(),
        pki.p("server.pem"),
        "--key".into(),
        pki.p("server-key.pem"),
        "--client-ca".into(),
        pki.p("ca.pem"),
    ]
}

/// The usual client flags for `pki` (h2c straight to a server), then
/// `extra`; a flag in `extra` replaces the default one.
pub(crate) fn client_flags(pki: &Pki, extra: &[&str]) -> Vec<String> {
    let defaults = [
        ("--cert", pki.p("client.pem")),
        ("--key", pki.p("client-key.pem")),
        ("--ca", pki.p("ca.pem")),
        ("--server-name", "localhost".to_owned()),
    ];
    let mut v: Vec<String> = defaults
        .into_iter()
        .filter(|(flag, _)| !extra.contains(flag))
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

/// `&[String]` as `Vec<&str>`, for the flag lists above.
pub(crate) fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A running in-process server plus what tests look at.
pub(crate) struct Server {
    pub addr: SocketAddr,
    pub config: Arc<Config>,
    pub reports: Reports,
    /// The serve task: it ends when the shutdown token is cancelled.
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    /// Starts `postern server` with exactly `flags` on an ephemeral loopback port.
    pub(crate) async fn start(flags: &[&str], shutdown: &CancellationToken) -> Server {
        Self::start_on(bind_local().await, flags, shutdown).await
    }

    /// The usual inner-mTLS server for `pki` in front of `backend`, with a
    /// metrics listener, for the tests that read the server's counters; the
    /// second value is the metrics address.
    pub(crate) async fn with_metrics(
        pki: &Pki,
        backend: SocketAddr,
        shutdown: &CancellationToken,
    ) -> (Server, SocketAddr) {
        let mut flags = server_flags(pki);
        flags.extend(["--backend".into(), backend.to_string()]);
        flags.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        let server = Server::start(&strs(&flags), shutdown).await;
        let metrics = server.config.metrics_addr.expect("metrics listener");
        (server, metrics)
    }

    /// Starts `postern server` with exactly `flags` on `listener`.
    pub(crate) async fn start_on(
        listener: TcpListener,
        flags: &[&str],
        shutdown: &CancellationToken,
    ) -> Server {
        let args: server::Args = parse_args("server", flags).expect("server flags");
        let mut config = Config::from_args(&args, shutdown)
            .await
            .expect("server config");
        let reports = hooks::attach_reports(&mut config);
        let config = Arc::new(config);
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(server::serve(listener, config.clone(), shutdown.clone()));
        Server {
            addr,
            config,
            reports,
            task,
        }
    }

    /// The next finished-tunnel report.
    pub(crate) async fn report(&mut self) -> TunnelReport {
        next_report(&mut self.reports).await
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }
}

/// The next report from `reports`, failing the test after [`LIMIT`].
pub(crate) async fn next_report(reports: &mut Reports) -> TunnelReport {
    tokio::time::timeout(LIMIT, reports.recv())
        .await
        .expect("timed out waiting for a tunnel report")
        .expect("server stopped")
}

/// Starts `postern server` with `--backend backend` and `server_flags`.
pub(crate) async fn start_server(
    backend: SocketAddr,
    server_flags: &[&str],
    shutdown: &CancellationToken,
) -> (SocketAddr, Reports) {
    let backend = backend.to_string();
    let mut argv = vec!["--backend", backend.as_str()];
    argv.extend_from_slice(server_flags);
    let server = Server::start(&argv, shutdown).await;
    (server.addr, server.reports)
}

/// The front end's TLS config, from the PKI's `front` pair.
pub(crate) fn front_tls(pki: &Pki) -> Arc<rustls::ServerConfig> {
    let key = pem::load_identity(&pki.dir.path("front.pem"), &pki.dir.path("front-key.pem"))
        .expect("front key");
    tls::outer_server_config(CertSlot::new(key), false).expect("front tls")
}

/// Starts the TLS-terminating demo front end in front of `upstream`; with
/// `tokens`, private (401/403 without one of them).
pub(crate) async fn start_front_with(
    pki: &Pki,
    upstream: SocketAddr,
    tokens: Option<Vec<String>>,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let listener = bind_local().await;
    let addr = listener.local_addr().expect("addr");
    hooks::serve_front(listener, front_tls(pki), upstream, tokens, shutdown.clone());
    addr
}

/// Starts the TLS-terminating demo front end in front of `upstream`.
pub(crate) async fn start_front(
    pki: &Pki,
    upstream: SocketAddr,
    shutdown: &CancellationToken,
) -> SocketAddr {
    start_front_with(pki, upstream, None, shutdown).await
}

/// Starts `postern client` for `url` with `client_flags`.
pub(crate) async fn start_client(
    url: &str,
    client_flags: &[&str],
    shutdown: &CancellationToken,
) -> SocketAddr {
    start_client_with_pool(url, client_flags, shutdown).await.0
}

/// Starts `postern client` for an `https://` `url` whose front end has the
/// PKI's `front` certificate, one stream per connection (so a tunnel opened
/// while another is open dials a connection of its own), plus `extra`.
pub(crate) async fn start_client_one_stream_each(
    pki: &Pki,
    url: &str,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> SocketAddr {
    let mut flags = vec!["--max-streams-per-connection", "1"];
    flags.extend_from_slice(extra);
    start_client_trusting_front(pki, url, &flags, shutdown).await
}

/// Starts `postern client` for an `https://` `url` whose front end has the
/// PKI's `front` certificate (`--tls-ca`), plus `extra`.
pub(crate) async fn start_client_trusting_front(
    pki: &Pki,
    url: &str,
    extra: &[&str],
    shutdown: &CancellationToken,
) -> SocketAddr {
    let ca = pki.p("ca.pem");
    let mut flags = vec!["--tls-ca", ca.as_str()];
    flags.extend_from_slice(extra);
    start_client(url, &strs(&client_flags(pki, &flags)), shutdown).await
}

/// Like [`start_client`], keeping a handle on the forward (and so its pool).
pub(crate) async fn start_client_with_pool(
    url: &str,
    client_flags: &[&str],
    shutdown: &CancellationToken,
) -> (SocketAddr, Arc<client::Forward>) {
    let mut argv = vec!["--url", url, "--listen", "127.0.0.1:0"];
    argv.extend_from_slice(client_flags);
    let args: postern::client::Args = parse_args("client", &argv).expect("client flags");
    let forward = Arc::new(client::Forward::from_args(&args, url).expect("client config"));
    (start_forward(forward.clone(), shutdown).await, forward)
}

/// Serves an already-built forward on a loopback port.
pub(crate) async fn start_forward(
    forward: Arc<client::Forward>,
    shutdown: &CancellationToken,
) -> SocketAddr {
    let listener = bind_local().await;
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(client::serve(listener, forward, shutdown.clone()));
    addr
}

/// Which front end a [`Stack`] puts between client and server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// Client straight to the server over h2c.
    None,
    /// The demo front end (TLS, ALPN h2).
    Ours,
    /// Caddy as a stand-in for Cloud Run's front end.
    Caddy,
}

/// A running server (and optionally front end) plus a client pointed at it.
pub(crate) struct Stack {
    pub client: SocketAddr,
    /// The `postern server` (h2c) behind any front end.
    pub server: SocketAddr,
    pub caddy: Option<Caddy>,
    pub reports: Reports,
    pub shutdown: CancellationToken,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Stack {
    /// The full path with inner mTLS: client -> front end (TLS) -> h2c server -> backend.
    pub(crate) async fn via_front(pki: &Pki, backend: SocketAddr) -> Stack {
        Self::build(pki, backend, Front::Ours, &[]).await
    }

    /// Client straight to the server over h2c (no front end).
    pub(crate) async fn direct(pki: &Pki, backend: SocketAddr) -> Stack {
        Self::build(pki, backend, Front::None, &[]).await
    }

    /// The full path through Caddy (callers check [`super::caddy::installed`] first).
    pub(crate) async fn via_caddy(pki: &Pki, backend: SocketAddr, extra_client: &[&str]) -> Stack {
        Self::build(pki, backend, Front::Caddy, extra_client).await
    }

    /// Server with inner mTLS, `front`, and a client with the usual flags
    /// plus `extra_client` (which may override the defaults).
    pub(crate) async fn build(
        pki: &Pki,
        backend: SocketAddr,
        front: Front,
        extra_client: &[&str],
    ) -> Stack {
        let shutdown = CancellationToken::new();
        let (server, reports) = start_server(backend, &strs(&server_flags(pki)), &shutdown).await;
        let (caddy, url) = match front {
            Front::None => (None, format!("http://127.0.0.1:{}/", server.port())),
            Front::Ours => {
                let f = start_front(pki, server, &shutdown).await;
                (None, format!("https://localhost:{}/", f.port()))
            }
            Front::Caddy => {
                let c = Caddy::start(pki, server).await;
                let url = c.url();
                (Some(c), url)
            }
        };
        let mut extra = vec!["--tls-ca".to_owned(), pki.p("ca.pem")];
        if extra_client.contains(&"--tls-ca") {
            extra.clear();
        }
        extra.extend(extra_client.iter().map(|s| s.to_string()));
        let flags = client_flags(pki, &strs(&extra));
        let client = start_client(&url, &strs(&flags), &shutdown).await;
        Stack {
            client,
            server,
            caddy,
            reports,
            shutdown,
        }
    }

    /// The next finished-tunnel report from the server.
    pub(crate) async fn report(&mut self) -> TunnelReport {
        next_report(&mut self.reports).await
    }
}
