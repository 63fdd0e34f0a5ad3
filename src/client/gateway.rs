//! The client's side of the WebSocket transport: an in-process HTTP/2
//! server that the connector's pool talks to as to any front end, turning
//! each tunnel stream into one WebSocket to the real front end (the
//! request's headers go with the upgrade, the `101`'s come back as the
//! `200`'s; any other status comes back as it is). The mapping of bytes,
//! ends and resets is [`crate::transport::websocket`]'s.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request, Response, StatusCode};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, warn};

use super::resolve::Resolved;
use super::target::Target;
use crate::transport::websocket::{self, passed, HOP_WINDOW};

/// A byte stream a WebSocket can run over: TCP, or TLS over it.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How the gateway reaches the front end for each WebSocket.
pub(crate) struct Dialer {
    pub(crate) target: Target,
    pub(crate) addrs: Resolved,
    pub(crate) egress: Arc<super::proxy::Egress>,
    /// The outer TLS (ALPN http/1.1) for an https target.
    pub(crate) outer: Option<Arc<rustls::ClientConfig>>,
    pub(crate) connect_timeout: Duration,
    pub(crate) keepalive: Option<Duration>,
}

impl Dialer {
    /// A new connection to the front end, outer TLS done.
    pub(crate) async fn dial(&self) -> std::io::Result<Box<dyn Io>> {
        tokio::time::timeout(self.connect_timeout, self.dial_inner())
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
    }

    async fn dial_inner(&self) -> std::io::Result<Box<dyn Io>> {
        let addrs = self.addrs.addrs().await?;
        let tcp = self
            .egress
            .connect(&self.target, &addrs, self.connect_timeout)
            .await
            .inspect_err(|_| self.addrs.forget())?;
        let _ = crate::transport::socket::tune_outer(&tcp);
        let tcp = crate::transport::socket::buffered(tcp);
        match &self.outer {
            Some(outer) if self.target.tls => {
                let name = ServerName::try_from(self.target.host.clone())
                    .map_err(std::io::Error::other)?;
                let tls = TlsConnector::from(outer.clone()).connect(name, tcp).await?;
                Ok(Box::new(tls))
            }
            _ => Ok(Box::new(tcp)),
        }
    }
}

/// Starts a gateway whose first WebSocket goes over `first` (already
/// dialled by the connector, which so reports a dead front end itself);
/// returns the in-process connection its HTTP/2 client speaks over.
pub(crate) fn start(first: Box<dyn Io>, dialer: Arc<Dialer>) -> tokio::io::DuplexStream {
    let (near, far) = tokio::io::duplex(HOP_WINDOW as usize);
    tokio::spawn(serve(far, Some(first), dialer));
    near
}

async fn serve(io: tokio::io::DuplexStream, mut first: Option<Box<dyn Io>>, dialer: Arc<Dialer>) {
    let handshake = h2::server::Builder::new()
        .initial_window_size(HOP_WINDOW)
        .initial_connection_window_size(HOP_WINDOW * 16)
        .max_frame_size(crate::transport::settings::MAX_FRAME)
        .handshake::<_, Bytes>(io);
    let Ok(mut conn) = handshake.await else {
        return;
    };
    while let Some(Ok((req, respond))) = conn.accept().await {
        tokio::spawn(one(req, respond, first.take(), dialer.clone()));
    }
}

async fn one(
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    first: Option<Box<dyn Io>>,
    dialer: Arc<Dialer>,
) {
    let mut io = match first {
        Some(io) => io,
        None => match dialer.dial().await {
            Ok(io) => io,
            Err(e) => {
                let addr = format!("{}:{}", dialer.target.host, dialer.target.port);
                warn!(%addr, error = %e, "cannot reach the front end (WebSocket)");
                return answer(&mut respond, StatusCode::BAD_GATEWAY, &HeaderMap::new());
            }
        },
    };
    let key = generate_key();
    let head = upgrade_request(&dialer.target, req.uri(), req.headers(), &key);
    let upgraded = async {
        io.write_all(head.as_bytes()).await?;
        io.flush().await?;
        websocket::read_head(&mut io).await
    };
    let (head, rest) = match tokio::time::timeout(dialer.connect_timeout, upgraded).await {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            debug!(error = %e, "WebSocket upgrade failed");
            return answer(&mut respond, StatusCode::BAD_GATEWAY, &HeaderMap::new());
        }
        Err(_) => {
            debug!("WebSocket upgrade timed out");
            return answer(&mut respond, StatusCode::GATEWAY_TIMEOUT, &HeaderMap::new());
        }
    };
    let Some((status, headers)) = parse_response(&head) else {
        debug!("unreadable answer to the WebSocket upgrade");
        return answer(&mut respond, StatusCode::BAD_GATEWAY, &HeaderMap::new());
    };
    if status != StatusCode::SWITCHING_PROTOCOLS {
        return answer(&mut respond, status, &headers);
    }
    let accepted = headers
        .get("sec-websocket-accept")
        .is_some_and(|v| v.as_bytes() == derive_accept_key(key.as_bytes()).as_bytes());
    if !accepted {
        debug!("the 101 does not accept our Sec-WebSocket-Key");
        return answer(&mut respond, StatusCode::BAD_GATEWAY, &HeaderMap::new());
    }
    let mut ok = Response::new(());
    *ok.headers_mut() = passed(&headers);
    let Ok(send) = respond.send_response(ok, false) else {
        return;
    };
    let ws = websocket::after_handshake(io, rest, Role::Client).await;
    websocket::pump(ws, send, req.into_body(), dialer.keepalive).await;
}

/// The upgrade request for a tunnel stream: its path, the front end's
/// host, and the stream's own headers (token, session, cookies, trace).
fn upgrade_request(target: &Target, uri: &http::Uri, headers: &HeaderMap, key: &str) -> String {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let default_port = if target.tls { 443 } else { 80 };
    let host = match target.port {
        p if p == default_port => target.host.clone(),
        p => format!("{}:{p}", target.host),
    };
    let mut head = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for (name, value) in passed(headers).iter() {
        if let Ok(value) = value.to_str() {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    head.push_str("\r\n");
    head
}

fn parse_response(head: &[u8]) -> Option<(StatusCode, HeaderMap)> {
    let mut raw = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut raw);
    resp.parse(head).ok()?.is_complete().then_some(())?;
    let status = StatusCode::from_u16(resp.code?).ok()?;
    let mut headers = HeaderMap::new();
    for h in resp.headers.iter() {
        let name = http::HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = http::HeaderValue::from_bytes(h.value).ok()?;
        headers.append(name, value);
    }
    Some((status, headers))
}

/// Answers the stream with `status` (a refusal) and the headers that came
/// with it, so the client reads the front end's or the server's answer.
fn answer(respond: &mut SendResponse<Bytes>, status: StatusCode, headers: &HeaderMap) {
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.headers_mut() = passed(headers);
    if let Ok(mut send) = respond.send_response(response, false) {
        let _ = send.send_data(Bytes::new(), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upgrade_carries_the_streams_headers_but_not_its_hops() {
        let target = Target::parse("https://example.com/tunnel").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("authorization", "Bearer t".parse().unwrap());
        headers.insert("connection", "close".parse().unwrap());
        let head = upgrade_request(&target, &target.uri, &headers, "k");
        assert!(head.starts_with("GET /tunnel HTTP/1.1\r\nHost: example.com\r\n"));
        assert!(head.contains("authorization: Bearer t\r\n"));
        assert!(!head.contains("close"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[test]
    fn a_response_head_is_parsed() {
        let (status, headers) =
            parse_response(b"HTTP/1.1 404 Not Found\r\nx-postern-version: 1\r\n\r\n").unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(headers["x-postern-version"], "1");
        assert!(parse_response(b"garbage\r\n\r\n").is_none());
    }
}
