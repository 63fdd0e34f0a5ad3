//! One HTTP/1.1 POST to Google's token and IAM endpoints, over TLS (or
//! plain HTTP to a loopback stand-in), for the flows in `google`. Like the
//! metadata client it is one request with `Connection: close`, read to EOF
//! and parsed by `metadata::parse_response`: a request an hour does not
//! justify a pooled HTTP client and its dependencies.

use std::net::IpAddr;

use http::Uri;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::metadata::parse_response;
use super::MAX_RESPONSE;

/// Checks that `url` is `https://…`, or `http://` to a loopback address (a
/// local stand-in: nothing leaves the machine in the clear).
pub(super) fn check_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url.parse().map_err(|_| "not a URL".to_owned())?;
    let host = uri.host().ok_or("the URL has no host")?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err("plain http is only allowed to a loopback address".to_owned()),
        _ => Err("the URL must start with https://".to_owned()),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// POSTs `body` (of `content_type`) to `url` with the extra `headers`;
/// returns the status and the decoded body. Errors are plain strings the
/// caller wraps with the endpoint's name; they never quote the request.
pub(super) async fn post(
    url: &str,
    headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
) -> Result<(u16, Vec<u8>), String> {
    let uri = check_url(url)?;
    let host = uri.host().unwrap_or_default().to_owned();
    let tls = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host.as_str(), |a| a.as_str());
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: postern/{}\r\nAccept: application/json\r\nConnection: close\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tcp = TcpStream::connect((bare, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let raw = if tls {
        let mut config =
            (*crate::tls::outer_client_config(None, false).map_err(|e| format!("{e:#}"))?).clone();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = ServerName::try_from(bare.to_owned()).map_err(|_| "bad host name")?;
        let stream = TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        exchange(stream, head.as_bytes(), body).await?
    } else {
        exchange(tcp, head.as_bytes(), body).await?
    };
    parse_response(&raw)
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &[u8],
    body: &[u8],
) -> Result<Vec<u8>, String> {
    stream
        .write_all(&[head, body].concat())
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut raw = Vec::new();
    // Google's servers close TLS without close_notify at times; what was
    // read is still judged by Content-Length or the chunk framing.
    let read = (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await;
    if let Err(e) = read {
        if raw.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("receive: {e}"));
        }
    }
    if raw.len() > MAX_RESPONSE {
        return Err(format!("response larger than {MAX_RESPONSE} bytes"));
    }
    Ok(raw)
}
