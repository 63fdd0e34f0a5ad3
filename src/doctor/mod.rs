//! `postern doctor`: a preflight that walks the path one step at a time —
//! DNS, TCP, TLS with ALPN h2, the Postern server behind the front end, the
//! ID token, a tunnel request, the inner mTLS handshake, round-trip time, a
//! resume through the front end (`resume`) and (optionally) throughput — and explains each failure with its likely fix.
//!
//! It dials its own connection rather than using the client's pool so that
//! each step can be timed and blamed separately. The walk is here; the
//! HTTP/2 requests it makes are in `requests`, the round-trip and throughput
//! measurements in `measure`.

mod destination;
mod measure;
mod requests;
mod resume;

use std::fmt::Display;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use http::{Method, StatusCode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::authz::PeerIdentity;
use crate::client::Args as ClientArgs;
use crate::client::Forward;
use crate::cmd::doctor::Args;
use crate::tls;
use crate::transport::stream::H2Stream;
use measure::{rtt, throughput};
use requests::{explain_status, h2_handshake, open_tunnel, request, with_path};

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
    let mut result = check(&args, &forward, &mut report).await;
    if let (Ok(()), Some(to)) = (&result, &args.client.to) {
        result = destination::check(&args.client, &url, to, &mut report).await;
    }
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
        // Full handshakes, measured as they are: no 0-RTT here.
        let config = tls::outer_client_config(args.client.tls_ca.as_deref(), false)?;
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
        rtt(&send, &health_uri, r).await?;
        return resume::resume(&send, &target.uri, &headers, forward, r).await;
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
    resume::resume(&send, &target.uri, &headers, forward, r).await?;
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

fn config_identity(args: &ClientArgs) -> Option<String> {
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
