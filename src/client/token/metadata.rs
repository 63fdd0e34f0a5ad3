//! The metadata server's client: one HTTP/1.1 GET per token.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::command::first_line;
use super::error::malformed;
use super::{TokenError, MAX_RESPONSE};

/// Asks the metadata server for an ID token for `audience`.
pub(super) async fn fetch_metadata(host: &str, audience: &str) -> Result<String, TokenError> {
    let path = format!(
        "/computeMetadata/v1/instance/service-accounts/default/identity?audience={}&format=full",
        percent_encode(audience)
    );
    let err = |reason: String| TokenError::Metadata {
        host: host.to_owned(),
        reason,
    };
    let (status, body) = http_get(host, &path, &[("Metadata-Flavor", "Google")])
        .await
        .map_err(err)?;
    if status != 200 {
        return Err(TokenError::MetadataStatus {
            host: host.to_owned(),
            status,
            detail: first_line(&body),
        });
    }
    String::from_utf8(body).map_err(|_| malformed("metadata server", "the body is not UTF-8"))
}

/// `host` or `host:port` (IPv6 in brackets) as a socket address string,
/// defaulting to port 80.
pub(super) fn with_default_port(host: &str) -> String {
    let has_port = if let Some(rest) = host.strip_prefix('[') {
        rest.contains("]:")
    } else {
        match host.matches(':').count() {
            0 => false,
            1 => true,
            // A bare IPv6 address.
            _ => return format!("[{host}]:80"),
        }
    };
    if has_port {
        host.to_owned()
    } else {
        format!("{host}:80")
    }
}

/// One HTTP/1.1 GET with `Connection: close`; returns the status and the
/// decoded body. Errors are plain strings the caller wraps with the host.
pub(super) async fn http_get(
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Vec<u8>), String> {
    let mut stream = TcpStream::connect(with_default_port(host))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: postern/{}\r\nAccept: */*\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;

    let mut raw = Vec::new();
    (&mut stream)
        .take(MAX_RESPONSE as u64 + 1)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| format!("receive: {e}"))?;
    if raw.len() > MAX_RESPONSE {
        return Err(format!("response larger than {MAX_RESPONSE} bytes"));
    }
    parse_response(&raw)
}

/// Parses a complete HTTP/1.x response read to EOF.
pub(super) fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("response ended inside the headers".into()),
        Err(e) => return Err(format!("not an HTTP/1.x response: {e}")),
    };
    let status = response.code.ok_or("response has no status code")?;
    let body = &raw[head_len..];
    let mut chunked = false;
    let mut length = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).map_err(|_| "a header is not text")?;
        let value = value.trim();
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if header.name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad Content-Length")?);
        }
    }
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match length {
        Some(n) if body.len() < n => Err("response body cut short".to_owned()),
        Some(n) => Ok((status, body[..n].to_vec())),
        None => Ok((status, body.to_vec())),
    }
}

/// Decodes a chunked transfer-encoded body (trailers are ignored).
pub(super) fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, String> {
    let bad = || "malformed chunked body".to_owned();
    let mut out = Vec::new();
    loop {
        let (start, size) = match httparse::parse_chunk_size(body) {
            Ok(httparse::Status::Complete(x)) => x,
            _ => return Err(bad()),
        };
        let size = usize::try_from(size).map_err(|_| bad())?;
        body = &body[start..];
        if size == 0 {
            return Ok(out);
        }
        if body.len() < size.saturating_add(2) || &body[size..size + 2] != b"\r\n" {
            return Err(bad());
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// What a query value may not carry unescaped: all but RFC 3986's
/// unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `s` as a query value.
pub(super) fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, QUERY_VALUE).to_string()
}
