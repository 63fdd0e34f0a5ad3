//! `postern doctor`: a preflight that walks the path one step at a time —
//! DNS, TCP, TLS with ALPN h2, the Postern server behind the front end, the
//! ID token, a tunnel request, the inner mTLS handshake, round-trip time and
//! (optionally) throughput — and explains each failure with its likely fix.
//!
//! It dials its own connection rather than using the client's pool so that
//! each step can be timed and blamed separately.

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::authz::identity::PeerIdentity;
use crate::client::{self, Forward};
use crate::tls;
use crate::transport::stream::H2Stream;

/// `postern doctor`: check every step from here to the backend.
#[derive(Debug, clap::Args)]
#[group(skip)]
pub struct Args {
    /// The client flags, exactly as for `postern client` (--url required).
    #[command(flatten)]
    pub client: client::Args,
    /// Also measure throughput by echoing this many MiB through a tunnel.
    /// Only for a route whose backend echoes (e.g. `--backend builtin:echo`).
    #[arg(long, value_name = "MIB")]
    pub throughput: Option<u32>,
}

/// One step's verdict.
struct Report {
    failed: bool,
}

impl Report {
    fn ok(&self, step: &str, detail: impl Display) {
        println!("  [ok]   {step:<10} {detail}");
    }

    fn skip(&self, step: &str, detail: impl Display) {
        println!("  [skip] {step:<10} {detail}");
    }

    /// Prints a failure with its likely fix and marks the run failed.
    fn fail(&mut self, step: &str, detail: impl Display, fix: &str) -> anyhow::Error {
        println!("  [FAIL] {step:<10} {detail}");
        println!("         fix: {fix}");
        self.failed = true;
        anyhow::anyhow!("doctor: the {step} step failed")
    }
}

/// Runs the checks; the error names the first step that failed.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let url = args.client.url.clone().context("--url is required")?;
    let forward = Forward::from_args(&args.client, &url)?;
    println!("postern doctor {url}");
    let mut report = Report { failed: false };
    let result = check(&args, &forward, &mut report).await;
    if result.is_ok() && !report.failed {
        println!("all checks passed");
    }
    result
}

async fn check(args: &Args, forward: &Forward, r: &mut Report) -> anyhow::Result<()> {
    let target = forward.connector.target().clone();
    let host = target.host.clone();

    let addrs: Vec<_> = match tokio::net::lookup_host((host.as_str(), target.port)).await {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(r.fail(
                "DNS",
                format!("{host}: {e}"),
                "check the host name in --url",
            ))
        }
    };
    let Some(addr) = addrs.first().copied() else {
        return Err(r.fail(
            "DNS",
            format!("{host}: no addresses"),
            "check the host name in --url",
        ));
    };
    let listed: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    r.ok("DNS", format!("{host} -> {}", listed.join(", ")));

    let started = Instant::now();
    let tcp = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(r.fail(
                "TCP",
                format!("{addr}: {e}"),
                "is the port right, and is anything listening there?",
            ))
        }
        Err(_) => {
            return Err(r.fail(
                "TCP",
                format!("{addr}: timed out"),
                "a firewall or proxy may be dropping the connection",
            ))
        }
    };
    let _ = tcp.set_nodelay(true);
    r.ok(
        "TCP",
        format!("connected to {addr} in {}", ms(started.elapsed())),
    );

    let send = if target.tls {
        let config = tls::outer_client_config(args.client.tls_ca.as_deref())?;
        let name = ServerName::try_from(host.clone()).context("host name")?;
        let tls = match TlsConnector::from(config).connect(name, tcp).await {
            Ok(t) => t,
            Err(e) => {
                return Err(r.fail(
                    "TLS",
                    e,
                    "the front end's certificate is not trusted for this name: for a private CA pass --tls-ca",
                ))
            }
        };
        let conn = tls.get_ref().1;
        if conn.alpn_protocol() != Some(tls::ALPN_H2) {
            return Err(r.fail(
                "TLS",
                "the front end did not negotiate ALPN h2",
                "the URL must point at an HTTP/2 front end (Cloud Run always offers h2)",
            ));
        }
        let version = conn
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default();
        let cert = tls::peer_identity(conn)
            .map(|id| describe(&id))
            .unwrap_or_default();
        r.ok("TLS", format!("{version}, ALPN h2, certificate {cert}"));
        h2_handshake(tls, r).await?
    } else {
        r.skip("TLS", "http:// URL: h2c without TLS");
        h2_handshake(tcp, r).await?
    };

    let mut headers = forward.headers.clone();
    if let Some(tokens) = &forward.tokens {
        match tokens.bearer().await {
            Ok(bearer) => {
                headers.insert(http::header::AUTHORIZATION, bearer);
                r.ok("token", format!("ID token obtained for audience {}", tokens.audience()));
            }
            Err(e) => return Err(r.fail("token", e, "check the --id-token source (run the command by hand; on Google Cloud use 'metadata')")),
        }
    } else {
        r.skip(
            "token",
            "no --id-token (fine for services deployed with --allow-unauthenticated)",
        );
    }

    let health_uri = with_path(&target.uri, "/healthz")?;
    let health = request(&send, Method::GET, &health_uri, &headers).await;
    match health {
        Ok((status, version)) if status == StatusCode::OK && version.is_some() => {
            r.ok("server", format!("GET /healthz 200 from postern {}", version.unwrap_or_default()));
        }
        Ok((status, _)) => return Err(explain_status(r, "server", status)),
        Err(e) => return Err(r.fail("server", e, "the front end could not reach a Postern server: deploy with --use-http2 so it speaks h2c to the container")),
    }

    let started = Instant::now();
    let (send_stream, response) = match open_tunnel(&send, &target.uri, &headers).await {
        Ok(x) => x,
        Err(e) => {
            return Err(r.fail(
                "tunnel",
                e,
                "the connection refused a new stream; retry, or check the front end's limits",
            ))
        }
    };
    let response = match response.await {
        Ok(resp) => resp,
        Err(e) => {
            return Err(r.fail(
                "tunnel",
                e,
                "the tunnel request was reset; check the server's log",
            ))
        }
    };
    if response.status() != StatusCode::OK {
        return Err(explain_status(r, "tunnel", response.status()));
    }
    r.ok(
        "tunnel",
        format!(
            "POST {} answered 200 in {}",
            target.uri.path(),
            ms(started.elapsed())
        ),
    );
    let stream = H2Stream::server(send_stream, response.into_body());

    let Some((config, name)) = &forward.inner else {
        r.skip("mTLS", "--no-inner-tls: plain tunnel");
        return rtt(&send, &health_uri, r).await;
    };
    let started = Instant::now();
    let mut tls = match TlsConnector::from(config.clone())
        .connect(name.clone(), stream)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            return Err(r.fail(
                "mTLS",
                e,
                "the server's inner certificate does not chain to --ca or lacks --server-name",
            ))
        }
    };
    let elapsed = started.elapsed();
    // With TLS 1.3 the server judges our certificate after our Finished, so
    // a refusal only shows on the first read: wait briefly for one.
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut first)).await {
        Err(_) | Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            return Err(r.fail("mTLS", format!("the server reset the tunnel after the handshake: {e}"), "the server could not reach its backend (--backend)"));
        }
        Ok(Err(e)) => return Err(r.fail("mTLS", e, "the server refused our certificate: is it issued by the CA in the server's --client-ca, unexpired, and allowed by --allow?")),
    }
    let conn = tls.get_ref().1;
    let server = tls::peer_identity(conn)
        .map(|id| describe(&id))
        .unwrap_or_default();
    let ours = config_identity(&args.client).unwrap_or_default();
    r.ok(
        "mTLS",
        format!(
            "{:?} in {}; server {server}; client {ours}",
            conn.protocol_version()
                .unwrap_or(rustls::ProtocolVersion::TLSv1_3),
            ms(elapsed)
        ),
    );

    rtt(&send, &health_uri, r).await?;
    match args.throughput {
        Some(mib) => throughput(&send, &target.uri, &headers, forward, mib, r).await,
        None => {
            r.skip(
                "throughput",
                "give --throughput MIB for a route with an echo backend",
            );
            let _ = tls.shutdown().await;
            Ok(())
        }
    }
}

async fn h2_handshake<T>(io: T, r: &mut Report) -> anyhow::Result<SendRequest<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    match h2::client::handshake(io).await {
        Ok((send, conn)) => {
            tokio::spawn(conn);
            r.ok("HTTP/2", "connection preface accepted");
            Ok(send)
        }
        Err(e) => Err(r.fail(
            "HTTP/2",
            e,
            "the peer does not speak HTTP/2: for an http:// URL the server must serve h2c",
        )),
    }
}

async fn request(
    send: &SendRequest<Bytes>,
    method: Method,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> anyhow::Result<(StatusCode, Option<String>)> {
    let mut send = send.clone().ready().await?;
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    let (response, _) = send.send_request(req, true)?;
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .context("no response within 10 s")??;
    let version = response
        .headers()
        .get("x-postern-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((response.status(), version))
}

async fn open_tunnel(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
) -> Result<(h2::SendStream<Bytes>, h2::client::ResponseFuture), h2::Error> {
    let mut send = send.clone().ready().await?;
    let mut req = Request::new(());
    *req.method_mut() = Method::POST;
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers.clone();
    let (response, stream) = send.send_request(req, false)?;
    Ok((stream, response))
}

/// The service URL with another path (h2 needs absolute URIs for :authority).
fn with_path(uri: &http::Uri, path: &str) -> anyhow::Result<http::Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path.parse()?);
    Ok(http::Uri::from_parts(parts)?)
}

fn explain_status(r: &mut Report, step: &str, status: StatusCode) -> anyhow::Error {
    let fix = match status.as_u16() {
        401 | 403 => "the service is private: pass --id-token, give the caller roles/run.invoker, and check --audience is the service URL",
        404 => "no tunnel at this path: check the path in --url against the server's --path",
        405 => "the server refused the method: tunnels use POST or CONNECT",
        502..=504 => "the front end got no answer from the container: deploy with --use-http2 (h2c) and check the container log",
        _ => "unexpected status: check the front end and server logs",
    };
    r.fail(step, format!("HTTP {status}"), fix)
}

async fn rtt(send: &SendRequest<Bytes>, uri: &http::Uri, r: &mut Report) -> anyhow::Result<()> {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        if request(send, Method::GET, uri, &http::HeaderMap::new())
            .await
            .is_ok()
        {
            samples.push(started.elapsed());
        }
    }
    samples.sort();
    match samples.first() {
        Some(min) => r.ok(
            "RTT",
            format!(
                "/healthz round trip min {}, median {} ({} samples)",
                ms(*min),
                ms(samples[samples.len() / 2]),
                samples.len()
            ),
        ),
        None => r.skip("RTT", "no samples"),
    }
    Ok(())
}

async fn throughput(
    send: &SendRequest<Bytes>,
    uri: &http::Uri,
    headers: &http::HeaderMap,
    forward: &Forward,
    mib: u32,
    r: &mut Report,
) -> anyhow::Result<()> {
    let total = mib as usize * 1024 * 1024;
    let (send_stream, response) = open_tunnel(send, uri, headers).await?;
    let mut stream = H2Stream::client(send_stream, response);
    let started = Instant::now();
    let echoed = match &forward.inner {
        Some((config, name)) => {
            let mut tls = TlsConnector::from(config.clone())
                .connect(name.clone(), &mut stream)
                .await?;
            echo(&mut tls, total).await
        }
        None => echo(&mut stream, total).await,
    };
    match echoed {
        Ok(n) if n == total => {
            let secs = started.elapsed().as_secs_f64();
            r.ok(
                "throughput",
                format!(
                    "{mib} MiB echoed in {:.2} s: {:.1} MB/s each way",
                    secs,
                    total as f64 / secs / 1e6
                ),
            );
            Ok(())
        }
        Ok(n) => Err(r.fail(
            "throughput",
            format!("only {n} of {total} bytes came back"),
            "is the route's backend an echo server?",
        )),
        Err(e) => Err(r.fail("throughput", e, "is the route's backend an echo server?")),
    }
}

async fn echo<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    s: &mut S,
    total: usize,
) -> std::io::Result<usize> {
    let (mut rd, mut wr) = tokio::io::split(s);
    let chunk = vec![0x5a_u8; 64 * 1024];
    let write = async {
        let mut sent = 0;
        while sent < total {
            let n = chunk.len().min(total - sent);
            wr.write_all(&chunk[..n]).await?;
            sent += n;
        }
        wr.shutdown().await
    };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0;
        loop {
            let n = rd.read(&mut buf).await?;
            if n == 0 {
                return Ok(got);
            }
            got += n;
        }
    };
    let limit = Duration::from_secs(60);
    let (w, got) = tokio::time::timeout(limit, async { tokio::join!(write, read) })
        .await
        .map_err(|_| std::io::Error::other("timed out after 60 s"))?;
    w?;
    got
}

fn config_identity(args: &client::Args) -> Option<String> {
    let cert = crate::tls::pem::load_certs(args.cert.as_deref()?).ok()?;
    PeerIdentity::from_der(cert.first()?)
        .ok()
        .map(|id| describe(&id))
}

fn describe(id: &PeerIdentity) -> String {
    let expires = time::OffsetDateTime::from_unix_timestamp(id.not_after)
        .map(|t| t.date().to_string())
        .unwrap_or_default();
    format!("'{}' (expires {expires})", id.primary())
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
