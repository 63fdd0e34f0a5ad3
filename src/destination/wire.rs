//! The destination request and its answer, as they travel inside the inner
//! TLS (docs/protocol.md §8): the client's first bytes after its Finished,
//! and the server's first bytes before any of the destination's.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The inner-TLS ALPN protocol a client offers when it names a destination.
pub(crate) const ALPN: &[u8] = b"postern-dest/1";

/// The one version of the request and answer.
pub(crate) const VERSION: u8 = 1;

/// The longest host name a request may carry (RFC 1035's 253, without the
/// trailing dot).
pub(crate) const MAX_NAME: usize = 253;

/// Where a tunnel asks to go: an address or a name, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Destination {
    /// The host as asked.
    pub host: Host,
    /// The TCP port (never 0).
    pub port: u16,
}

/// A destination's host.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A host name, resolved by the server.
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Why a request could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The bytes break the format.
    #[error("malformed destination request: {0}")]
    Malformed(&'static str),
    /// The stream failed or ended early.
    #[error("destination request: {0}")]
    Io(#[from] std::io::Error),
}

impl Destination {
    /// Checks a host and port from a SOCKS request, an HTTP CONNECT or a flag.
    pub fn new(host: Host, port: u16) -> Result<Destination, String> {
        if port == 0 {
            return Err("port 0 is not a destination".into());
        }
        if let Host::Name(name) = &host {
            check_name(name)?;
        }
        Ok(Destination { host, port })
    }

    /// The request's bytes: version, kind (1 IPv4, 4 IPv6, 3 name with a
    /// length byte), the host, the port (big-endian).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        match &self.host {
            Host::Ip(IpAddr::V4(ip)) => {
                out.push(1);
                out.extend_from_slice(&ip.octets());
            }
            Host::Ip(IpAddr::V6(ip)) => {
                out.push(4);
                out.extend_from_slice(&ip.octets());
            }
            Host::Name(name) => {
                out.push(3);
                out.push(name.len() as u8);
                out.extend_from_slice(name.as_bytes());
            }
        }
        out.extend_from_slice(&self.port.to_be_bytes());
        out
    }

    /// Reads one request; never reads past its last byte.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Destination, WireError> {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await?;
        if head[0] != VERSION {
            return Err(WireError::Malformed("unknown version"));
        }
        let host = match head[1] {
            1 => {
                let mut b = [0u8; 4];
                r.read_exact(&mut b).await?;
                Host::Ip(IpAddr::V4(Ipv4Addr::from(b)))
            }
            4 => {
                let mut b = [0u8; 16];
                r.read_exact(&mut b).await?;
                Host::Ip(IpAddr::V6(Ipv6Addr::from(b)))
            }
            3 => {
                let len = r.read_u8().await? as usize;
                let mut b = vec![0u8; len];
                r.read_exact(&mut b).await?;
                let name = String::from_utf8(b)
                    .map_err(|_| WireError::Malformed("host name is not UTF-8"))?;
                Host::Name(name)
            }
            _ => return Err(WireError::Malformed("unknown host kind")),
        };
        let port = r.read_u16().await?;
        if port == 0 {
            return Err(WireError::Malformed("port 0"));
        }
        Ok(Destination { host, port })
    }
}

/// Checks a host name's shape (not whether it resolves): 1–253 bytes
/// without a trailing dot, labels of 1–63 letters, digits, `-` or `_`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Err("empty host name".into());
    }
    if bare.len() > MAX_NAME {
        return Err(format!(
            "host name of {} bytes (at most {MAX_NAME})",
            bare.len()
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(format!(
                "host name {name:?}: a label is empty or over 63 bytes"
            ));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(format!("host name {name:?}: not a DNS name"));
        }
    }
    Ok(())
}

impl FromStr for Destination {
    type Err = String;

    /// `HOST:PORT`, `[IPV6]:PORT`; a bare IP address is taken as one
    /// (an IPv4 literal here is only dotted-quad; the server reads other
    /// spellings as the address they mean).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("{s:?}: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: {port:?} is not a port"))?;
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(IpAddr::V6(
                v6.parse()
                    .map_err(|_| format!("{s:?}: {v6:?} is not an IPv6 address"))?,
            ))
        } else if let Ok(ip) = host.parse::<Ipv4Addr>() {
            Host::Ip(IpAddr::V4(ip))
        } else if host.contains(':') {
            return Err(format!("{s:?}: an IPv6 address goes in brackets, [::1]:22"));
        } else {
            Host::Name(host.to_owned())
        };
        Destination::new(host, port).map_err(|e| format!("{s:?}: {e}"))
    }
}

/// The server's answer: a code, and a short text (the refusal's reason, or
/// on success the address dialled).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// What happened.
    pub code: Code,
    /// Up to 255 bytes of UTF-8.
    pub text: String,
}

/// The answer codes (docs/protocol.md §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Code {
    /// Connected; the destination's bytes follow.
    Connected,
    /// No rule allows this identity there (or the deny list holds it).
    NotAllowed,
    /// The server has no destination policy.
    NoPolicy,
    /// The request could not be read.
    BadRequest,
    /// The name did not resolve (or resolved to nothing usable).
    NameNotResolved,
    /// No route to the destination's network.
    NetworkUnreachable,
    /// No route to the host.
    HostUnreachable,
    /// The destination refused the connection.
    Refused,
    /// The dial timed out.
    TimedOut,
    /// This identity has reached a limit (tunnels, dial rate).
    LimitReached,
    /// Any other dial failure.
    Failed,
    /// A code this version does not know.
    Other(u8),
}

impl Code {
    /// The code's byte on the wire.
    pub fn byte(self) -> u8 {
        match self {
            Code::Connected => 0,
            Code::NotAllowed => 1,
            Code::NoPolicy => 2,
            Code::BadRequest => 3,
            Code::NameNotResolved => 4,
            Code::NetworkUnreachable => 5,
            Code::HostUnreachable => 6,
            Code::Refused => 7,
            Code::TimedOut => 8,
            Code::LimitReached => 9,
            Code::Failed => 10,
            Code::Other(b) => b,
        }
    }

    /// The code a byte means.
    pub fn from_byte(b: u8) -> Code {
        match b {
            0 => Code::Connected,
            1 => Code::NotAllowed,
            2 => Code::NoPolicy,
            3 => Code::BadRequest,
            4 => Code::NameNotResolved,
            5 => Code::NetworkUnreachable,
            6 => Code::HostUnreachable,
            7 => Code::Refused,
            8 => Code::TimedOut,
            9 => Code::LimitReached,
            10 => Code::Failed,
            b => Code::Other(b),
        }
    }

    /// A stable snake_case label (logs and metrics).
    pub fn label(self) -> &'static str {
        match self {
            Code::Connected => "connected",
            Code::NotAllowed => "not_allowed",
            Code::NoPolicy => "no_policy",
            Code::BadRequest => "bad_request",
            Code::NameNotResolved => "name_not_resolved",
            Code::NetworkUnreachable => "network_unreachable",
            Code::HostUnreachable => "host_unreachable",
            Code::Refused => "refused",
            Code::TimedOut => "timed_out",
            Code::LimitReached => "limit_reached",
            Code::Failed => "failed",
            Code::Other(_) => "other",
        }
    }

    /// The SOCKS5 reply code (RFC 1928 §6) for this answer.
    pub fn socks5(self) -> u8 {
        match self {
            Code::Connected => 0x00,
            Code::NotAllowed | Code::NoPolicy | Code::LimitReached => 0x02,
            Code::NetworkUnreachable => 0x03,
            Code::HostUnreachable | Code::NameNotResolved => 0x04,
            Code::Refused => 0x05,
            Code::TimedOut => 0x06,
            Code::BadRequest | Code::Failed | Code::Other(_) => 0x01,
        }
    }

    /// The HTTP status an HTTP CONNECT proxy answers with.
    pub fn http(self) -> u16 {
        match self {
            Code::Connected => 200,
            Code::NotAllowed | Code::NoPolicy => 403,
            Code::BadRequest => 400,
            Code::LimitReached => 429,
            Code::TimedOut => 504,
            _ => 502,
        }
    }
}

impl Answer {
    /// An answer with `text` cut to 255 bytes (at a character boundary).
    pub fn new(code: Code, text: impl Into<String>) -> Answer {
        let mut text = text.into();
        if text.len() > 255 {
            let mut end = 255;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        Answer { code, text }
    }

    /// The answer's bytes: version, code, text length, text.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION, self.code.byte(), self.text.len() as u8];
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// Writes it and flushes.
    pub async fn write<W: AsyncWrite + Unpin>(&self, w: &mut W) -> std::io::Result<()> {
        w.write_all(&self.encode()).await?;
        w.flush().await
    }

    /// Reads one answer; never reads past its last byte.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Answer, WireError> {
        let mut head = [0u8; 3];
        r.read_exact(&mut head).await?;
        if head[0] != VERSION {
            return Err(WireError::Malformed("unknown answer version"));
        }
        let mut text = vec![0u8; head[2] as usize];
        r.read_exact(&mut text).await?;
        Ok(Answer {
            code: Code::from_byte(head[1]),
            text: String::from_utf8_lossy(&text).into_owned(),
        })
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            f.write_str(self.code.label())
        } else {
            write!(f, "{}: {}", self.code.label(), self.text)
        }
    }
}
