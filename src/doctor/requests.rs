//! The doctor's HTTP/2 requests: the handshake, a GET, a tunnel POST, and
//! what a refusal's status most likely means.

use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};

use super::Report;

pub(super) async fn h2_handshake<T>(io: T, r: &mut Report) -> anyhow::Result<SendRequest<Bytes>>
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

pub(super) async fn request(
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

pub(super) async fn open_tunnel(
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
pub(super) fn with_path(uri: &http::Uri, path: &str) -> anyhow::Result<http::Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path.parse()?);
    Ok(http::Uri::from_parts(parts)?)
}

pub(super) fn explain_status(r: &mut Report, step: &str, status: StatusCode) -> anyhow::Error {
    let fix = match status.as_u16() {
        401 | 403 => "the service is private: pass --id-token, give the caller roles/run.invoker, and check --audience is the service URL",
        404 => "no tunnel at this path: check the path in --url against the server's --path",
        405 => "the server refused the method: tunnels use POST or CONNECT",
        502..=504 => "the front end got no answer from the container: deploy with --use-http2 (h2c) and check the container log",
        _ => "unexpected status: check the front end and server logs",
    };
    r.fail(step, format!("HTTP {status}"), fix)
}
