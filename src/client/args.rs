//! `postern client`'s flags and the forward they describe (the command
//! itself is [`super::run`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};
use rustls_pki_types::ServerName;

use super::connector::Connector;
use super::forward::{Forward, ResumePolicy};
use super::target::Target;
use super::token::{IdTokens, TokenSource};
use crate::destination::Destination;
use crate::duration::{parse_duration, parse_interval};
use crate::tls::{self, pem, CertSlot};
use crate::transport::busy_poll;

/// `postern client`: the side next to the application.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Local address to accept application connections on (with --url).
    #[arg(long, env = "POSTERN_CLIENT_LISTEN", requires = "url")]
    pub listen: Option<SocketAddr>,
    /// Service URL: `https://HOST[:PORT][/PATH]`, or `http://…` for h2c.
    #[arg(long, env = "POSTERN_URL")]
    pub url: Option<String>,
    /// More forwards, each LOCAL_ADDR=URL, or LOCAL_ADDR=URL,to=HOST:PORT
    /// for a fixed destination; repeatable.
    #[arg(long = "forward", value_name = "LOCAL_ADDR=URL[,to=HOST:PORT]")]
    pub forwards: Vec<String>,
    /// Tunnel stdin/stdout instead of listening (for ssh ProxyCommand).
    #[arg(long, requires = "url", conflicts_with_all = ["listen", "forwards", "socks5", "http_proxy"])]
    pub stdio: bool,
    /// The destination the server connects for --listen or --stdio
    /// tunnels, instead of the route's backend: `HOST:PORT`, `[IPV6]:PORT`
    /// (the server resolves names and checks its destination policy), e.g.
    /// `--stdio --to %h:%p` in ssh's ProxyCommand.
    #[arg(long, value_name = "HOST:PORT", requires = "url", value_parser = parse_destination)]
    pub to: Option<Destination>,
    /// A SOCKS5 listener (CONNECT, no authentication; names resolved by
    /// the server) for --url: `PORT` (on 127.0.0.1) or `ADDR:PORT`. Anyone
    /// who can reach it tunnels as this client's identity.
    #[arg(long, value_name = "[ADDR:]PORT", requires = "url", value_parser = parse_listen)]
    pub socks5: Option<SocketAddr>,
    /// An HTTP CONNECT proxy listener for --url (curl -x, git, browsers):
    /// `PORT` (on 127.0.0.1) or `ADDR:PORT`. Anyone who can reach it
    /// tunnels as this client's identity.
    #[arg(long, value_name = "[ADDR:]PORT", requires = "url", value_parser = parse_listen)]
    pub http_proxy: Option<SocketAddr>,
    /// Inner TLS client certificate chain (PEM).
    #[arg(long, env = "POSTERN_CERT", required_unless_present = "no_inner_tls")]
    pub cert: Option<PathBuf>,
    /// Inner TLS client private key (PEM).
    #[arg(long, env = "POSTERN_KEY", required_unless_present = "no_inner_tls")]
    pub key: Option<PathBuf>,
    /// CA certificate(s) the server's inner certificate must chain to (PEM).
    #[arg(long, env = "POSTERN_CA", required_unless_present = "no_inner_tls")]
    pub ca: Option<PathBuf>,
    /// Name the server's inner certificate must carry [default: the URL's host].
    #[arg(long, env = "POSTERN_SERVER_NAME")]
    pub server_name: Option<String>,
    /// Identity the server's inner certificate must also carry, beyond
    /// --server-name: `uri:…`, `dns:…`, `cn:…` or `spiffe://…` (trailing
    /// `/*` for a prefix); repeatable, any one suffices.
    #[arg(long, env = "POSTERN_SERVER_IDENTITY", value_delimiter = ',')]
    pub server_identity: Vec<String>,
    /// Extra CA certificate(s) to trust for the outer TLS (besides the system roots).
    #[arg(long, env = "POSTERN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Never send TLS 1.3 early data (0-RTT) to the front end. By default a
    /// new connection that resumes an outer TLS session sends its first
    /// frames with the ClientHello where the front end allows it, one round
    /// trip sooner; this is for a front end that mishandles them.
    #[arg(long)]
    pub no_early_data: bool,
    /// Leave out the inner TLS (plain tunnel).
    #[arg(long, conflicts_with_all = ["cert", "key", "ca", "to", "socks5", "http_proxy"])]
    pub no_inner_tls: bool,
    /// Send a Google ID token (private Cloud Run services): `metadata`
    /// (on Google Cloud), `metadata=HOST:PORT`, `adc` (Application Default
    /// Credentials), `service-account=KEY_FILE`, `impersonate=SA_EMAIL`,
    /// `command=CMD` (e.g. `command=gcloud auth print-identity-token`),
    /// `file=PATH` or `env=VAR`. Fetched once, cached and refreshed before
    /// it expires; never logged.
    #[arg(long, env = "POSTERN_ID_TOKEN", value_name = "SOURCE")]
    pub id_token: Option<TokenSource>,
    /// Audience of the ID token [default: the service URL without its path].
    #[arg(long, env = "POSTERN_AUDIENCE", requires = "id_token")]
    pub audience: Option<String>,
    /// Extra request header, 'Name: value'; repeatable.
    #[arg(long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Most tunnels per HTTP/2 connection; 1 = one connection per tunnel.
    #[arg(
        long,
        env = "POSTERN_MAX_STREAMS_PER_CONNECTION",
        default_value_t = 100
    )]
    pub max_streams_per_connection: usize,
    /// Interval between HTTP/2 PINGs on idle connections, e.g. `30s` (a bare
    /// number is seconds; 0 = off). Front ends punish frequent PINGs; 30 s
    /// or more is safe.
    #[arg(long, default_value = "0", value_parser = parse_interval)]
    pub keepalive: Duration,
    /// Time allowed to connect to the front end and for the inner handshake,
    /// e.g. `10s` or `500ms` (a bare number is seconds).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Do not ask for resume: every tunnel is the plain byte stream, and a
    /// cut ends the local connection.
    #[arg(long, env = "POSTERN_NO_RESUME")]
    pub no_resume: bool,
    /// How long a cut tunnel keeps trying to resume before it closes the
    /// local connection: at most the server's --resume-timeout (the server
    /// lets go of the session then); `30s`, `2m`, a bare number is seconds.
    #[arg(long, env = "POSTERN_RESUME_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub resume_timeout: Duration,
    /// Bytes (MiB) all sessions together may hold in replay buffers and
    /// inboxes (beyond 256 KiB each); a full budget slows writers and
    /// readers instead of growing. As the server's flag.
    #[arg(long, env = "POSTERN_BUFFER_BUDGET_MIB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub buffer_budget_mib: u64,
    /// Move each tunnel's session to a fresh request this long after its
    /// request opened, before the front end's request timeout cuts it: set
    /// it a little under the service's `--timeout` (Cloud Run's default is
    /// 5m, its maximum 60m); `0` = never.
    #[arg(long, env = "POSTERN_MAX_REQUEST_AGE", default_value = "55m", value_parser = parse_interval)]
    pub max_request_age: Duration,
    /// Worker threads; each HTTP/2 connection and its tunnels run on one.
    /// New tunnels fill the first worker up to --max-streams-per-connection
    /// before the next gets any [default: one per CPU].
    #[arg(long, env = "POSTERN_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// After a worker thread wakes, keep polling its sockets this long
    /// before it may sleep again (`50us`, `200us`; 0 = off): an answer that
    /// comes back meanwhile is taken without a wake-up, which on a VM saves
    /// tens of microseconds per round trip, for up to this much CPU per wake.
    #[arg(long, env = "POSTERN_BUSY_POLL", default_value = "0", value_parser = busy_poll::parse_flag)]
    pub busy_poll: Duration,
    /// Time open tunnels get to finish after SIGTERM or SIGINT (and, with
    /// --stdio, SIGHUP, which ssh sends its ProxyCommand as it exits), as the
    /// server's --drain-timeout; new local connections are refused meanwhile.
    /// `500ms`, `8s`, `1m`, a bare number is seconds; 0 = close at once.
    #[arg(long, env = "POSTERN_DRAIN_TIMEOUT", default_value = "8s", value_parser = parse_interval)]
    pub drain_timeout: Duration,
    /// How the front end is reached (`--transport`).
    #[command(flatten)]
    pub reach: super::reach::ReachArgs,
}

impl Forward {
    /// Builds a forward to `url` from the shared client flags.
    pub fn from_args(args: &Args, url: &str) -> anyhow::Result<Forward> {
        let target = Target::parse(url).map_err(|e| anyhow::anyhow!("--url {e}"))?;
        let outer = if target.tls {
            Some(tls::outer_client_config(
                args.tls_ca.as_deref(),
                !args.no_early_data,
            )?)
        } else {
            None
        };
        let inner = match (&args.cert, &args.key, &args.ca) {
            (Some(cert), Some(key), Some(ca)) => {
                let slot = CertSlot::new(
                    pem::load_identity(cert, key)
                        .map_err(pem::blame(&[("--cert", cert), ("--key", key)]))?,
                );
                let pin = args
                    .server_identity
                    .iter()
                    .map(|p| {
                        p.parse()
                            .map_err(|e| anyhow::anyhow!("--server-identity: {e}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let config = tls::inner_client_config_pinned(
                    slot,
                    pem::load_roots(ca).map_err(pem::blame(&[("--ca", ca)]))?,
                    crate::authz::Allow::new(pin),
                )?;
                let name = args
                    .server_name
                    .clone()
                    .unwrap_or_else(|| target.host.clone());
                let name = ServerName::try_from(name.clone()).map_err(|_| {
                    anyhow::anyhow!("--server-name {name:?}: not a DNS name or IP address")
                })?;
                Some((config, name))
            }
            _ if args.no_inner_tls => None,
            _ => anyhow::bail!("--cert, --key and --ca are required (or --no-inner-tls)"),
        };
        let timeout = args.connect_timeout;
        let keepalive = (!args.keepalive.is_zero()).then_some(args.keepalive);
        let tokens = args.id_token.clone().map(|source| {
            let audience = args.audience.clone().unwrap_or_else(|| target.origin());
            IdTokens::new(source, audience)
        });
        let resume = (!args.no_resume).then(|| ResumePolicy {
            max_request_age: (!args.max_request_age.is_zero()).then_some(args.max_request_age),
            session: crate::session::Config::bounded(
                args.resume_timeout,
                mib(args.buffer_budget_mib),
            ),
            ..ResumePolicy::default()
        });
        let mut connector = Connector::new(
            target,
            outer,
            args.max_streams_per_connection,
            keepalive,
            timeout,
        )
        .with_transport(args.reach.transport)
        .with_egress(args.reach.egress()?);
        if let Some(resume) = &resume {
            connector = connector.with_pressure(resume.session.budget.pressure());
        }
        Ok(Forward {
            connector: Arc::new(connector),
            inner,
            inner_dest: None,
            destinations: Default::default(),
            headers: parse_headers(&args.headers)?,
            tokens,
            handshake_timeout: timeout,
            workers: args
                .workers
                .map_or_else(crate::transport::workers::default_count, usize::from),
            busy_poll: args.busy_poll,
            resume,
        })
    }
}

/// `HOST:PORT` for `--to`.
fn parse_destination(s: &str) -> Result<Destination, String> {
    s.parse()
}

/// `PORT` (loopback) or `ADDR:PORT`.
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse()
        .map_err(|_| format!("{s:?}: expected PORT or ADDR:PORT"))
}

/// A `--forward` value: `LOCAL_ADDR=URL[,to=HOST:PORT]`.
pub(super) fn parse_forward(f: &str) -> anyhow::Result<(SocketAddr, String, Option<Destination>)> {
    let (local, rest) = f
        .split_once('=')
        .ok_or_else(|| anyhow::anyhow!("--forward {f:?}: expected LOCAL_ADDR=URL"))?;
    let local: SocketAddr = local
        .parse()
        .map_err(|_| anyhow::anyhow!("--forward {f:?}: {local:?} is not an address"))?;
    let (url, to) = match rest.split_once(",to=") {
        Some((url, to)) => {
            let to = to
                .parse::<Destination>()
                .map_err(|e| anyhow::anyhow!("--forward {f:?}: to={e}"))?;
            (url, Some(to))
        }
        None => (rest, None),
    };
    Ok((local, url.to_owned(), to))
}

fn mib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1 << 20)).unwrap_or(usize::MAX)
}

/// Parses repeatable `Name: value` flags.
pub(super) fn parse_headers(raw: &[String]) -> anyhow::Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for h in raw {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| anyhow::anyhow!("--header {h:?}: expected 'Name: value'"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| anyhow::anyhow!("--header {h:?}: invalid header name"))?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| anyhow::anyhow!("--header {name}: invalid header value"))?;
        if name == http::header::AUTHORIZATION {
            value.set_sensitive(true);
        }
        headers.append(name, value);
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::parse_args;

    fn parse(extra: &[&str]) -> anyhow::Result<Args> {
        let mut argv = vec!["--url", "https://svc.example/", "--no-inner-tls"];
        argv.extend_from_slice(extra);
        parse_args("client", &argv)
    }

    #[test]
    fn duration_flags_take_units_and_bare_seconds() {
        let args = parse(&["--connect-timeout", "500ms", "--keepalive", "5m"]).unwrap();
        assert_eq!(args.connect_timeout, Duration::from_millis(500));
        assert_eq!(args.keepalive, Duration::from_secs(300));
        let args = parse(&["--connect-timeout", "3", "--keepalive", "30"]).unwrap();
        assert_eq!(args.connect_timeout, Duration::from_secs(3));
        assert_eq!(args.keepalive, Duration::from_secs(30));
        let args = parse(&[]).unwrap();
        assert_eq!(args.connect_timeout, Duration::from_secs(10));
        assert!(args.keepalive.is_zero(), "keepalive is off by default");
        assert!(parse(&["--keepalive", "0"]).unwrap().keepalive.is_zero());
        assert_eq!(
            args.drain_timeout,
            Duration::from_secs(8),
            "like the server"
        );
        let args = parse(&["--drain-timeout", "0"]).unwrap();
        assert!(args.drain_timeout.is_zero());
        let args = parse(&["--drain-timeout", "0s"]).unwrap();
        assert!(args.drain_timeout.is_zero(), "as the server takes it");
    }

    #[test]
    fn bad_durations_name_the_flag() {
        for (flag, value) in [
            ("--connect-timeout", "0"),
            ("--connect-timeout", "5h"),
            ("--keepalive", "x"),
        ] {
            let err = parse(&[flag, value]).unwrap_err().to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
