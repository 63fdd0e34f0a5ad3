//! `postern demo`: the original Cloud Run mTLS demo, whole, on loopback.
//!
//! Mints throwaway certificates, then starts — each on an ephemeral port, all
//! in this process — the banner backend, `postern server` (h2c), a
//! TLS-terminating HTTP/2 front end standing in for Cloud Run, and `postern
//! client`; finally a TCP client reads the banner through all of it. Server
//! and client are configured through the same flags a user would type.

pub mod front;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::Args as ClientArgs;
use crate::cmd::parse::parse_args;
use crate::pki::{self, CertDir, KeyAlg, LeafSpec};
use crate::server::backend::{self, Mode, BANNER};
use crate::tls::pem;
use crate::tls::{self, CertSlot};
use crate::{client, server};

/// The client identity the demo issues.
pub const CLIENT_ID: &str = "spiffe://postern.demo/client";

/// Runs the demo with its certificates in `dir`; the error names the hop
/// that failed.
pub async fn run(dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("postern demo: TCP app -> client -> [mTLS in HTTP/2 POST, over TLS] -> front end -> h2c -> server -> backend");
    let bundle = pki::bundle(
        &["localhost".into()],
        &[CLIENT_ID.into()],
        KeyAlg::EcdsaP256,
    )
    .context("hop certs: issuing certificates")?;
    let front_cert = bundle
        .ca
        .issue(&LeafSpec::server(&["localhost"]))
        .context("hop certs: issuing the front end certificate")?;
    let certs =
        write_files(dir, &bundle, &front_cert).context("hop certs: writing certificates")?;
    println!(
        "  certs    CA, server 'localhost', client '{CLIENT_ID}' in {}",
        dir.display()
    );

    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let backend = backend::spawn_local(Mode::Banner, shutdown.clone())
        .await
        .context("hop backend")?;
    println!("  backend  banner TCP server        {backend}");

    let mut argv = vec!["--backend".to_owned(), backend.to_string()];
    argv.extend(certs.server_flags(false));
    let server_args: server::Args = parse_args("server", &strs(&argv))?;
    let (tx, mut reports) = mpsc::unbounded_channel();
    let mut server_config = server::Config::from_args(&server_args, &shutdown)
        .await
        .context("hop server: configuration")?;
    server_config.on_tunnel_end(move |report| {
        let _ = tx.send(report.clone());
    });
    let server_listener = bind().await.context("hop server")?;
    let server_addr = server_listener.local_addr()?;
    tokio::spawn(server::serve(
        server_listener,
        Arc::new(server_config),
        shutdown.clone(),
    ));
    println!("  server   postern server (h2c)     {server_addr} -> {backend}, client certificate required");

    // The stand-in for Cloud Run's front end takes no 0-RTT data.
    let front_tls = tls::outer_server_config(
        CertSlot::new(pem::load_identity(
            &dir.join("front.pem"),
            &dir.join("front-key.pem"),
        )?),
        false,
    )
    .context("hop front end: TLS configuration")?;
    let front_listener = bind().await.context("hop front end")?;
    let front_addr = front_listener.local_addr()?;
    tokio::spawn(front::serve(
        front_listener,
        front_tls,
        server_addr,
        shutdown.clone(),
    ));
    println!("  front    TLS + HTTP/2 front end   {front_addr} -> h2c {server_addr} (stands in for Cloud Run)");

    let url = format!("https://localhost:{}/", front_addr.port());
    let mut argv = vec![
        "--url".to_owned(),
        url.clone(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    argv.extend(certs.client_flags());
    let client_args: ClientArgs = parse_args("client", &strs(&argv))?;
    let forward =
        client::Forward::from_args(&client_args, &url).context("hop client: configuration")?;
    let client_listener = bind().await.context("hop client")?;
    let client_addr = client_listener.local_addr()?;
    tokio::spawn(client::serve(
        client_listener,
        Arc::new(forward),
        shutdown.clone(),
    ));
    println!("  client   postern client           {client_addr} -> {url}");

    let received = read_banner(client_addr)
        .await
        .context("hop app: reading the banner")?;
    println!(
        "  app      TCP client read {} bytes from {client_addr}:",
        received.len()
    );
    print!("{received}");
    if received != BANNER {
        anyhow::bail!(
            "hop app: the banner arrived altered or incomplete ({} of {} bytes)",
            received.len(),
            BANNER.len()
        );
    }
    let report = tokio::time::timeout(Duration::from_secs(5), reports.recv())
        .await
        .ok()
        .flatten()
        .context("hop server: no tunnel report")?;
    let identity = report.identity.map(|i| i.to_string()).unwrap_or_default();
    println!("  identity server verified client '{identity}'; client verified server 'localhost'");
    println!(
        "ok: banner delivered end to end in {} ms",
        started.elapsed().as_millis()
    );
    Ok(())
}

async fn bind() -> anyhow::Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port")
}

async fn read_banner(addr: SocketAddr) -> anyhow::Result<String> {
    let mut sock = TcpStream::connect(addr).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), sock.read_to_end(&mut buf))
        .await
        .context("timed out")??;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// The bundle as `postern certs` writes it, plus the front end's own pair.
fn write_files(dir: &Path, bundle: &pki::Bundle, front: &pki::Issued) -> anyhow::Result<CertDir> {
    let certs = CertDir::write(dir, bundle)?;
    for (name, contents) in [
        ("front.pem", &front.cert_pem),
        ("front-key.pem", &front.key_pem),
    ] {
        let path = dir.join(name);
        pki::write_private(&path, contents.as_bytes())
            .with_context(|| path.display().to_string())?;
    }
    Ok(certs)
}

fn strs(argv: &[String]) -> Vec<&str> {
    argv.iter().map(String::as_str).collect()
}
