//! HTTP/1.1 on the server's port: the WebSocket transport's upgrade, a
//! health check, and a clear refusal for anything else (nothing reaches a
//! backend from here).
//!
//! An upgrade becomes one stream of an in-process HTTP/2 connection that
//! the server serves like any other (`serve::h2_connection`, handed in as
//! `h2`): the upgrade's path and headers make its POST, the POST's answer
//! makes the `101` (or the refusal, with its status), and
//! [`crate::transport::websocket::pump`] carries the stream over the
//! WebSocket. So routes, sessions and resume, identity, windows (the
//! pre-authentication ones included) and metrics are the HTTP/2 path's.

use std::future::Future;

use anyhow::Context as _;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::debug;

use crate::server::reply::VERSION;
use crate::transport::websocket::{self, passed, HOP_WINDOW};

/// The HTTP/2 client preface, which h2c with prior knowledge opens with.
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Reads until the bytes either are the HTTP/2 preface or cannot be: the
/// bytes read (to be read again) and whether it was the preface.
pub(super) async fn detect<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<(Vec<u8>, bool)> {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::with_capacity(PREFACE.len());
    let mut chunk = [0u8; 64];
    while seen.len() < PREFACE.len() {
        let want = PREFACE.len() - seen.len();
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        seen.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&seen) {
            return Ok((seen, false));
        }
    }
    Ok((seen, true))
}

/// What an HTTP/1.1 request on the tunnel port is.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    /// `GET /healthz`.
    Health,
    /// A WebSocket upgrade: its path, headers and key.
    Upgrade {
        path: String,
        headers: HeaderMap,
        key: String,
    },
    /// Anything else: the status and why.
    Refused(StatusCode, &'static str),
}

fn asked(head: &[u8]) -> Asked {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut raw);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Asked::Refused(StatusCode::BAD_REQUEST, "malformed HTTP/1.1 request\n"),
    }
    let (Some(method), Some(path)) = (req.method, req.path) else {
        return Asked::Refused(StatusCode::BAD_REQUEST, "malformed HTTP/1.1 request\n");
    };
    let mut headers = HeaderMap::new();
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(h.name.as_bytes()),
            http::HeaderValue::from_bytes(h.value),
        ) else {
            return Asked::Refused(StatusCode::BAD_REQUEST, "malformed header\n");
        };
        headers.append(name, value);
    }
    let has = |name: &str, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let upgrade = has("upgrade", "websocket") && has("connection", "upgrade");
    if !upgrade {
        if method == "GET" && path == "/healthz" {
            return Asked::Health;
        }
        return Asked::Refused(
            StatusCode::UPGRADE_REQUIRED,
            "tunnels on HTTP/1.1 are WebSockets (Upgrade: websocket); or use HTTP/2\n",
        );
    }
    if method != "GET" {
        return Asked::Refused(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET\n",
        );
    }
    if headers
        .get("sec-websocket-version")
        .map_or(true, |v| v.as_bytes() != b"13")
    {
        return Asked::Refused(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 only (Sec-WebSocket-Version: 13)\n",
        );
    }
    let Some(key) = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
    else {
        return Asked::Refused(StatusCode::BAD_REQUEST, "no Sec-WebSocket-Key\n");
    };
    Asked::Upgrade {
        path: path.to_owned(),
        headers,
        key,
    }
}

/// Serves one HTTP/1.1 connection: reads its request head (bounded, within
/// `limit`), answers a health check or a refusal, or runs the upgrade over
/// an in-process connection served by `h2`, pinging every `ping`.
pub(crate) async fn serve<S, F, Fut>(
    mut io: S,
    limit: std::time::Duration,
    ping: Option<std::time::Duration>,
    h2: F,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: FnOnce(tokio::io::DuplexStream) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let (head, rest) = tokio::time::timeout(limit, websocket::read_head(&mut io))
        .await
        .context("HTTP/1.1 request head timed out")?
        .context("HTTP/1.1 request head")?;
    let (path, headers, key) = match asked(&head) {
        Asked::Health => return plain(&mut io, StatusCode::OK, &HeaderMap::new(), "ok\n").await,
        Asked::Refused(status, why) => {
            debug!(%status, "HTTP/1.1 request refused");
            let mut extra = HeaderMap::new();
            if status == StatusCode::UPGRADE_REQUIRED {
                extra.insert("upgrade", http::HeaderValue::from_static("websocket"));
                extra.insert(
                    "sec-websocket-version",
                    http::HeaderValue::from_static("13"),
                );
            }
            return plain(&mut io, status, &extra, why).await;
        }
        Asked::Upgrade { path, headers, key } => (path, headers, key),
    };
    let (near, far) = tokio::io::duplex(HOP_WINDOW as usize);
    let (served, bridged) =
        tokio::join!(h2(far), bridge(near, io, rest, (path, headers, key), ping));
    bridged.and(served)
}

async fn bridge<S>(
    near: tokio::io::DuplexStream,
    mut io: S,
    rest: Vec<u8>,
    (path, headers, key): (String, HeaderMap, String),
    ping: Option<std::time::Duration>,
) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(HOP_WINDOW)
        .initial_connection_window_size(HOP_WINDOW)
        .max_frame_size(crate::transport::settings::MAX_FRAME)
        .handshake::<_, Bytes>(near)
        .await
        .context("in-process HTTP/2")?;
    let request = async move {
        let mut send = send.ready().await?;
        let host = headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .filter(|h| h.parse::<http::uri::Authority>().is_ok())
            .unwrap_or("localhost")
            .to_owned();
        let uri = http::Uri::builder()
            .scheme("http")
            .authority(host)
            .path_and_query(path.as_str())
            .build()
            .context("the upgrade's path")?;
        let mut req = Request::new(());
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri;
        *req.headers_mut() = passed(&headers);
        let (response, stream) = send.send_request(req, false)?;
        let response = response.await?;
        let (parts, mut body) = response.into_parts();
        if parts.status != StatusCode::OK {
            // A refusal: its short body goes along (bounded).
            let mut text = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let room = 4096 - text.len();
                text.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if text.len() == 4096 {
                    break;
                }
            }
            let text = String::from_utf8_lossy(&text).into_owned();
            return plain(&mut io, parts.status, &parts.headers, &text).await;
        }
        let mut head = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n",
            derive_accept_key(key.as_bytes())
        );
        push_headers(&mut head, &passed(&parts.headers));
        head.push_str("\r\n");
        io.write_all(head.as_bytes()).await?;
        io.flush().await?;
        let ws = websocket::after_handshake(io, rest, Role::Server).await;
        websocket::pump(ws, stream, body, ping).await;
        anyhow::Ok(())
    };
    tokio::select! {
        r = request => r,
        r = conn => r.context("in-process HTTP/2"),
    }
}

fn push_headers(head: &mut String, headers: &HeaderMap) {
    for (name, value) in headers {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
}

/// A short answer that ends the connection.
async fn plain<S: AsyncWrite + Unpin>(
    io: &mut S,
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
) -> anyhow::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    let mut headers = passed(headers);
    headers.remove("content-type");
    if !headers.contains_key(VERSION) {
        headers.insert(
            VERSION,
            http::HeaderValue::from_static(env!("CARGO_PKG_VERSION")),
        );
    }
    push_headers(&mut head, &headers);
    head.push_str("\r\n");
    head.push_str(body);
    io.write_all(head.as_bytes()).await?;
    io.shutdown().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade(extra: &str) -> String {
        format!(
            "GET /t HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
    }

    #[test]
    fn an_upgrade_is_told_from_what_is_refused() {
        match asked(upgrade("Sec-WebSocket-Version: 13\r\n").as_bytes()) {
            Asked::Upgrade { path, key, .. } => {
                assert_eq!(path, "/t");
                assert_eq!(key, "dGhlIHNhbXBsZSBub25jZQ==");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            asked(upgrade("Sec-WebSocket-Version: 8\r\n").as_bytes()),
            Asked::Refused(StatusCode::UPGRADE_REQUIRED, _)
        ));
        assert!(matches!(
            asked(b"POST /t HTTP/1.1\r\nHost: h\r\n\r\n"),
            Asked::Refused(StatusCode::UPGRADE_REQUIRED, _)
        ));
        assert_eq!(asked(b"GET /healthz HTTP/1.1\r\n\r\n"), Asked::Health);
        assert!(matches!(
            asked(b"\x16\x03\x01garbage\r\n\r\n"),
            Asked::Refused(StatusCode::BAD_REQUEST, _)
        ));
    }

    #[tokio::test]
    async fn the_preface_is_told_from_http1() {
        let (mut far, mut near) = tokio::io::duplex(64);
        far.write_all(PREFACE).await.unwrap();
        assert_eq!(detect(&mut near).await.unwrap(), (PREFACE.to_vec(), true));
        far.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (seen, h2) = detect(&mut near).await.unwrap();
        assert!(!h2);
        assert!(b"GET / HTTP/1.1\r\n".starts_with(&seen));
    }
}
