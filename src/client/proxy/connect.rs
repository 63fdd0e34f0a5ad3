//! HTTP CONNECT through a forward proxy.
//!
//! Hand-written rather than hyper-util's `Tunnel` connector: that one
//! answers a `407` or any other refusal with an error that has lost the
//! status and the `Proxy-Authenticate` header, which are exactly what a
//! user needs to read ("which proxy wants what"). The exchange is one
//! request and one response head; the head is read a byte at a time so
//! that nothing behind it (the front end's first TLS bytes) is taken from
//! the socket.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Hop;

/// Why a proxy did not open the tunnel.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// The proxy wants credentials (`407`).
    #[error(
        "proxy {proxy} wants authentication ({scheme}): {}",
        if *.sent { "it refused the credentials given" }
        else { "give them in the proxy URL (http://USER:PASSWORD@HOST:PORT) or --proxy-credentials" }
    )]
    AuthRequired {
        /// `host:port` of the proxy.
        proxy: String,
        /// The `Proxy-Authenticate` scheme (`Basic`, `Negotiate`…), or `no scheme given`.
        scheme: String,
        /// Whether credentials were sent.
        sent: bool,
    },
    /// The proxy answered CONNECT with another status.
    #[error("proxy {proxy} refused CONNECT {authority}: HTTP {status}")]
    Refused {
        /// `host:port` of the proxy.
        proxy: String,
        /// What was asked for.
        authority: String,
        /// The status line's code and reason.
        status: String,
    },
    /// The proxy could not be reached or spoke no HTTP.
    #[error("proxy {proxy}: {reason}")]
    Io {
        /// `host:port` of the proxy.
        proxy: String,
        /// What went wrong.
        reason: std::io::Error,
    },
}

/// Opens a tunnel to `authority` through `hop`: the socket, and the
/// status the proxy answered (for `postern doctor`).
pub(super) async fn tunnel(
    hop: &Hop,
    authority: &str,
    limit: Duration,
) -> std::io::Result<(TcpStream, u16)> {
    let io_err = |reason| ProxyError::Io {
        proxy: hop.proxy.clone(),
        reason,
    };
    let exchange = async {
        let mut sock = TcpStream::connect(&hop.proxy).await.map_err(io_err)?;
        let _ = sock.set_nodelay(true);
        let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
        if let Some(auth) = &hop.auth {
            if let Ok(auth) = auth.to_str() {
                request.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
            }
        }
        request.push_str("\r\n");
        sock.write_all(request.as_bytes()).await.map_err(io_err)?;
        let head = read_head(&mut sock).await.map_err(io_err)?;
        let mut raw = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut raw);
        let parsed = resp.parse(&head).ok().filter(|s| s.is_complete());
        let (Some(_), Some(code)) = (parsed, resp.code) else {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "its answer to CONNECT is not HTTP (is this an HTTP proxy?)",
            )));
        };
        match code {
            200..=299 => Ok((sock, code)),
            // Some proxies (tinyproxy) answer wrong credentials with 401.
            407 | 401 if code == 407 || hop.auth.is_some() => {
                let scheme = resp
                    .headers
                    .iter()
                    .filter(|h| {
                        h.name.eq_ignore_ascii_case("proxy-authenticate")
                            || h.name.eq_ignore_ascii_case("www-authenticate")
                    })
                    .filter_map(|h| std::str::from_utf8(h.value).ok())
                    .filter_map(|v| v.split_whitespace().next())
                    .collect::<Vec<_>>()
                    .join(", ");
                Err(ProxyError::AuthRequired {
                    proxy: hop.proxy.clone(),
                    scheme: if scheme.is_empty() {
                        "no scheme given".into()
                    } else {
                        scheme
                    },
                    sent: hop.auth.is_some(),
                })
            }
            code => Err(ProxyError::Refused {
                proxy: hop.proxy.clone(),
                authority: authority.to_owned(),
                status: format!("{code} {}", resp.reason.unwrap_or(""))
                    .trim()
                    .to_owned(),
            }),
        }
    };
    match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(done)) => Ok(done),
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => Err(std::io::Error::other(ProxyError::Io {
            proxy: hop.proxy.clone(),
            reason: std::io::ErrorKind::TimedOut.into(),
        })),
    }
}

/// The response head, byte by byte up to its blank line (at most 16 KiB).
async fn read_head(sock: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > crate::transport::websocket::MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "its answer to CONNECT has an overlong head",
            ));
        }
        let byte = sock.read_u8().await.map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => std::io::Error::new(
                e.kind(),
                "it closed the connection before answering CONNECT",
            ),
            _ => e,
        })?;
        head.push(byte);
    }
    Ok(head)
}
