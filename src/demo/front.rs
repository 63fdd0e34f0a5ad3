//! A small stand-in for Cloud Run's front end, used by `postern demo` (and
//! available to tests): it terminates TLS with ALPN h2 and forwards every
//! stream to an h2c upstream, streaming both bodies as they come, so the
//! client certificate of the outer hop never reaches the upstream — exactly
//! the situation Postern exists for.
//!
//! One upstream HTTP/2 connection per downstream connection keeps the
//! mapping simple and mirrors how a stream of one client connection lands on
//! one instance.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use h2::client::SendRequest;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::transport::accept::accept;
use crate::transport::settings;

/// Serves TLS on `listener` and forwards each stream to `upstream` over h2c.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    shutdown: CancellationToken,
) {
    serve_with_tokens(listener, tls, upstream, None, shutdown).await
}

/// Like [`serve`]; with `tokens`, like a private Cloud Run service: requests
/// without `authorization: Bearer <token>` get 401, with a token not in
/// `tokens` 403 (tests reach it as [`crate::testing::serve_private`]).
pub(crate) async fn serve_with_tokens(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    upstream: SocketAddr,
    tokens: Option<Arc<[String]>>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    while let Some((sock, _)) = accept(&listener, &shutdown).await {
        let (acceptor, tokens) = (acceptor.clone(), tokens.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(sock, acceptor, upstream, tokens).await {
                debug!(error = format!("{e:#}"), "front end connection ended");
            }
        });
    }
}

async fn connection(
    sock: TcpStream,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    tokens: Option<Arc<[String]>>,
) -> anyhow::Result<()> {
    sock.set_nodelay(true)?;
    let tls = acceptor.accept(sock).await.context("TLS handshake")?;
    let mut down = settings::server_builder()
        .handshake::<_, Bytes>(tls)
        .await
        .context("HTTP/2 handshake with the client")?;
    let up_sock = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to upstream {upstream}"))?;
    up_sock.set_nodelay(true)?;
    let (up, up_conn) = settings::client_builder()
        .handshake::<_, Bytes>(up_sock)
        .await
        .context("h2c handshake with the upstream")?;
    tokio::spawn(async move {
        if let Err(e) = up_conn.await {
            debug!(error = %e, "upstream connection ended");
        }
    });
    while let Some(next) = down.accept().await {
        let (req, mut respond) = next.context("client connection")?;
        if let Some(status) = tokens.as_deref().and_then(|t| unauthorized(&req, t)) {
            let response = Response::builder()
                .status(status)
                .body(())
                .unwrap_or_default();
            let _ = respond.send_response(response, true);
            continue;
        }
        let up = up.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(req, respond, up).await {
                debug!(error = format!("{e:#}"), "stream forwarding ended");
            }
        });
    }
    Ok(())
}

/// The status a private service answers a request with a missing or wrong token.
fn unauthorized(req: &Request<RecvStream>, tokens: &[String]) -> Option<StatusCode> {
    let Some(presented) = req.headers().get(http::header::AUTHORIZATION) else {
        return Some(StatusCode::UNAUTHORIZED);
    };
    let ok = presented
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| tokens.iter().any(|ok| ok == t));
    (!ok).then_some(StatusCode::FORBIDDEN)
}

/// Forwards one request: headers, then both bodies concurrently. The request
/// body starts flowing before the response arrives, as on Cloud Run.
async fn forward(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    up: SendRequest<Bytes>,
) -> anyhow::Result<()> {
    let (parts, body) = req.into_parts();
    let mut up = up.ready().await.context("upstream not ready")?;
    let request = Request::from_parts(parts, ());
    let (response, up_body) = match up.send_request(request, body.is_end_stream()) {
        Ok(x) => x,
        Err(e) => {
            respond.send_reset(Reason::REFUSED_STREAM);
            return Err(e).context("upstream refused the stream");
        }
    };
    let upload = async {
        if !body.is_end_stream() {
            pump(body, up_body).await
        } else {
            Ok(())
        }
    };
    let download = async {
        let response = response.await.context("upstream response")?;
        let (parts, up_resp_body) = response.into_parts();
        let end = up_resp_body.is_end_stream();
        let send = respond
            .send_response(Response::from_parts(parts, ()), end)
            .context("sending the response")?;
        if !end {
            pump(up_resp_body, send).await?;
        }
        anyhow::Ok(())
    };
    let (a, b) = tokio::join!(upload, download);
    a.and(b)
}

/// Moves one body to the other side, releasing the source's window only as
/// the destination grants capacity, so a slow reader slows the writer.
async fn pump(mut from: RecvStream, mut to: SendStream<Bytes>) -> anyhow::Result<()> {
    while let Some(chunk) = from.data().await {
        let mut chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                to.send_reset(e.reason().unwrap_or(Reason::CANCEL));
                return Err(e).context("reading a body");
            }
        };
        let len = chunk.len();
        while !chunk.is_empty() {
            to.reserve_capacity(chunk.len());
            let granted = match std::future::poll_fn(|cx| to.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(e).context("writing a body"),
                // Dropping `from` unfinished resets it (CANCEL).
                None => anyhow::bail!("destination stream closed"),
            };
            let part = chunk.split_to(granted.min(chunk.len()));
            to.send_data(part, false).context("writing a body")?;
        }
        let _ = from.flow_control().release_capacity(len);
    }
    to.send_data(Bytes::new(), true).context("ending a body")?;
    Ok(())
}
