//! `--http-proxy`: each local connection is an HTTP/1.1 `CONNECT host:port`
//! (curl -x, git, browsers, JDBC drivers), answered `200` once the server
//! has connected the destination, or with a status naming the refusal
//! (403 not allowed, 429 a limit, 502 unreachable or unresolved, 504 timed
//! out, 400 a bad request, 405 not CONNECT, 431 a header over 8 KiB).

use anyhow::anyhow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::destination::Ask;
use super::forward::Forward;
use crate::destination::wire::{Answer, Code, Destination};
use crate::session::Stats;
use crate::transport::splice::Totals;

/// Longest request head taken.
const MAX_HEAD: usize = 8 * 1024;

/// One CONNECT client: its request, then the tunnel.
pub(super) async fn serve(
    forward: &Forward,
    sock: &mut TcpStream,
) -> (anyhow::Result<Totals>, Stats) {
    let asked = tokio::time::timeout(forward.handshake_timeout, request(sock)).await;
    let dest = match asked {
        Ok(Ok(dest)) => dest,
        Ok(Err((status, e))) => {
            if let Some(status) = status {
                let _ = sock.write_all(&response(status, &format!("{e}"))).await;
            }
            let _ = sock.shutdown().await;
            return (Err(e.context("HTTP CONNECT")), Stats::default());
        }
        Err(_) => {
            return (
                Err(anyhow!(
                    "HTTP CONNECT: no request within {:?}",
                    forward.handshake_timeout
                )),
                Stats::default(),
            )
        }
    };
    let ask = Ask::new(&dest, Some(answer_response));
    let (result, stats) = forward.carry_to(sock, Some(&ask)).await;
    if let Err(e) = &result {
        if !ask.answered.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = sock.write_all(&response(502, &format!("{e:#}"))).await;
            return (Err(anyhow!("HTTP CONNECT {dest}: {e:#}")), stats);
        }
    }
    (
        result.map_err(|e| e.context(format!("HTTP CONNECT {dest}"))),
        stats,
    )
}

/// Reads the request head (byte by byte: nothing past it is taken from
/// the socket) and the destination it names.
async fn request(sock: &mut TcpStream) -> Result<Destination, (Option<u16>, anyhow::Error)> {
    let mut head = Vec::with_capacity(256);
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err((Some(431), anyhow!("request head over {MAX_HEAD} bytes")));
        }
        match sock.read_u8().await {
            Ok(b) => head.push(b),
            Err(e) => return Err((None, anyhow!("the client left: {e}"))),
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err((Some(400), anyhow!("malformed request head"))),
    }
    let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
    if method != "CONNECT" {
        return Err((
            Some(405),
            anyhow!("{method} {target}: this proxy takes only CONNECT host:port"),
        ));
    }
    let has_port = target.rsplit_once(':').is_some_and(|(h, p)| {
        !p.is_empty() && !h.is_empty() && (!h.contains(':') || h.ends_with(']'))
    });
    if !has_port {
        return Err((Some(400), anyhow!("CONNECT {target}: needs host:port")));
    }
    target
        .parse::<Destination>()
        .map_err(|e| (Some(400), anyhow!("CONNECT {e}")))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "Connection established",
        400 => "Bad Request",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        504 => "Gateway Timeout",
        _ => "Bad Gateway",
    }
}

/// A response: `200` alone, or a status with the reason as its body.
fn response(status: u16, text: &str) -> Vec<u8> {
    if status == 200 {
        return b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec();
    }
    let body = format!("{text}\n");
    format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    )
    .into_bytes()
}

fn answer_response(answer: &Answer) -> Vec<u8> {
    let text = match answer.code {
        Code::Connected => String::new(),
        _ => format!("postern: destination refused: {answer}"),
    };
    response(answer.code.http(), &text)
}
