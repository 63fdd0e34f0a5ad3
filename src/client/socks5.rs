//! `--socks5`: each local connection is a SOCKS5 client (RFC 1928, the
//! CONNECT command, no authentication) naming its own destination, which
//! the server resolves and checks. The reply waits for the server's answer
//! and carries its code (RFC 1928 §6: 0x02 not allowed, 0x03 network
//! unreachable, 0x04 host unreachable or name not resolved, 0x05 refused,
//! 0x06 timed out; 0x07 for BIND and UDP ASSOCIATE, 0x08 for an unknown
//! address type, 0x01 for anything else).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::anyhow;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::destination::Ask;
use super::forward::Forward;
use crate::destination::wire::{Answer, Destination, Host};
use crate::session::Stats;
use crate::transport::splice::Totals;

/// General failure (RFC 1928 §6).
const GENERAL_FAILURE: u8 = 0x01;
const COMMAND_NOT_SUPPORTED: u8 = 0x07;
const ADDRESS_TYPE_NOT_SUPPORTED: u8 = 0x08;

/// One SOCKS5 client: its greeting and request, then the tunnel.
pub(super) async fn serve(
    forward: &Forward,
    sock: &mut TcpStream,
) -> (anyhow::Result<Totals>, Stats) {
    let asked = tokio::time::timeout(forward.handshake_timeout, negotiate(sock)).await;
    let dest = match asked {
        Ok(Ok(dest)) => dest,
        Ok(Err((code, e))) => {
            if let Some(code) = code {
                let _ = sock.write_all(&reply(code)).await;
            }
            let _ = sock.shutdown().await;
            return (Err(e.context("SOCKS5")), Stats::default());
        }
        Err(_) => {
            return (
                Err(anyhow!(
                    "SOCKS5: no request within {:?}",
                    forward.handshake_timeout
                )),
                Stats::default(),
            )
        }
    };
    let ask = Ask::new(&dest, Some(answer_reply));
    let (result, stats) = forward.carry_to(sock, Some(&ask)).await;
    if let Err(e) = &result {
        if !ask.answered.load(std::sync::atomic::Ordering::Relaxed) {
            let _ = sock.write_all(&reply(GENERAL_FAILURE)).await;
            return (Err(anyhow!("SOCKS5 CONNECT {dest}: {e:#}")), stats);
        }
    }
    (
        result.map_err(|e| e.context(format!("SOCKS5 CONNECT {dest}"))),
        stats,
    )
}

/// The greeting and the request; `Err` with the reply code to send (None:
/// the greeting failed, and RFC 1928 has no reply for that but 0xFF).
async fn negotiate(sock: &mut TcpStream) -> Result<Destination, (Option<u8>, anyhow::Error)> {
    let io = |e: std::io::Error| (None, anyhow!("the client left: {e}"));
    let mut head = [0u8; 2];
    sock.read_exact(&mut head).await.map_err(io)?;
    if head[0] != 5 {
        return Err((
            None,
            anyhow!("version byte {:#04x}: not a SOCKS5 greeting", head[0]),
        ));
    }
    let mut methods = vec![0u8; head[1] as usize];
    sock.read_exact(&mut methods).await.map_err(io)?;
    if !methods.contains(&0) {
        let _ = sock.write_all(&[5, 0xff]).await;
        return Err((
            None,
            anyhow!("the client offers no method without authentication (offered {methods:?})"),
        ));
    }
    sock.write_all(&[5, 0]).await.map_err(io)?;
    let mut req = [0u8; 4];
    sock.read_exact(&mut req).await.map_err(io)?;
    if req[0] != 5 {
        return Err((
            Some(GENERAL_FAILURE),
            anyhow!("request version byte {:#04x}", req[0]),
        ));
    }
    match req[1] {
        1 => {}
        2 => {
            return Err((
                Some(COMMAND_NOT_SUPPORTED),
                anyhow!("BIND is not supported (only CONNECT)"),
            ))
        }
        3 => {
            return Err((
                Some(COMMAND_NOT_SUPPORTED),
                anyhow!("UDP ASSOCIATE is not supported (only CONNECT)"),
            ))
        }
        c => {
            return Err((
                Some(COMMAND_NOT_SUPPORTED),
                anyhow!("unknown command {c:#04x} (only CONNECT)"),
            ))
        }
    }
    let host = match req[3] {
        1 => {
            let mut b = [0u8; 4];
            sock.read_exact(&mut b).await.map_err(io)?;
            Host::Ip(IpAddr::V4(Ipv4Addr::from(b)))
        }
        4 => {
            let mut b = [0u8; 16];
            sock.read_exact(&mut b).await.map_err(io)?;
            Host::Ip(IpAddr::V6(Ipv6Addr::from(b)))
        }
        3 => {
            let len = sock.read_u8().await.map_err(io)? as usize;
            let mut b = vec![0u8; len];
            sock.read_exact(&mut b).await.map_err(io)?;
            let name = String::from_utf8(b)
                .map_err(|_| (Some(GENERAL_FAILURE), anyhow!("host name is not UTF-8")))?;
            Host::Name(name)
        }
        t => {
            return Err((
                Some(ADDRESS_TYPE_NOT_SUPPORTED),
                anyhow!("address type {t:#04x}"),
            ))
        }
    };
    let port = sock.read_u16().await.map_err(io)?;
    Destination::new(host, port).map_err(|e| (Some(GENERAL_FAILURE), anyhow!("{e}")))
}

/// A reply with `code` and an unspecified bound address.
fn reply(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

fn answer_reply(answer: &Answer) -> Vec<u8> {
    reply(answer.code.socks5())
}
