//! PROXY protocol v2 headers, written by the server to a backend before any
//! tunnel bytes so the backend learns the real client address and the client's
//! verified identity and can make its own authorization decision.
//!
//! Wire format (HAProxy's proxy-protocol.txt, section 2.2):
//!
//! ```text
//! 12 bytes  signature \r\n\r\n\0\r\nQUIT\n
//!  1 byte   0x21       version 2, command PROXY
//!  1 byte   0x11/0x21  TCP over IPv4 / TCP over IPv6
//!  2 bytes  length of everything that follows (big-endian)
//! 12/36     source address, destination address, source port, destination port
//!  ...      TLVs: type (1), length (2, big-endian), value
//! ```
//!
//! The identity is carried twice, so both stock and Postern-aware backends can
//! read it:
//!
//! * `PP2_TYPE_SSL` (0x20) with `client = PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN`
//!   (0x03), `verify = 0` (the certificate was verified) and one sub-TLV
//!   `PP2_SUBTYPE_SSL_CN` (0x22) holding the identity. Software that reads the
//!   client CN from PROXY v2 headers finds it there, although for SPIFFE
//!   peers the value is the URI rather than a real subject CN.
//! * [`PP2_TYPE_POSTERN_IDENTITY`] (0xE0, the first of the application-reserved
//!   range `PP2_TYPE_MIN_CUSTOM`..`PP2_TYPE_MAX_CUSTOM`) holding the identity as
//!   UTF-8, unambiguous for backends that know Postern.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use bytes::Bytes;
use ppp::v2::{Builder, Command, Protocol, TypeLengthValue, Version, WriteToHeader};

#[cfg(any(test, feature = "testing"))]
pub(crate) mod decode;

/// `PP2_TYPE_SSL`: TLS details about the client connection.
pub(crate) const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_CN`: inside `PP2_TYPE_SSL`, the client certificate's name.
pub(crate) const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN`: TLS was used and the client
/// presented a certificate on this connection.
pub(crate) const PP2_CLIENT_SSL_CERT_CONN: u8 = 0x01 | 0x02;
/// Postern's own TLV (first application-reserved type): the identity, UTF-8.
pub(crate) const PP2_TYPE_POSTERN_IDENTITY: u8 = 0xE0;

const ADDR_LEN_TCP4: usize = 12;
const ADDR_LEN_TCP6: usize = 36;

/// What the header says about the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The client's address as the server saw it.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
    /// The verified client identity (the name the allow-list matched, else its primary name), if any.
    pub identity: Option<String>,
    /// Extra TLVs, written after the identity TLVs in this order. Types 0x20
    /// and 0xE0 are reserved for `identity` and refused by [`encode`].
    pub tlvs: Vec<(u8, Vec<u8>)>,
}

/// Why a header could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The address block plus TLVs would not fit the u16 length field.
    #[error("PROXY v2 header too long: {0} bytes after the fixed part (max 65535)")]
    TooLong(usize),
    /// An extra TLV used a type that `identity` owns, which would let two
    /// conflicting identities reach the backend.
    #[error("TLV type {0:#04x} is reserved for the identity")]
    ReservedType(u8),
}

/// Encodes `h` as a PROXY v2 header (with the `ppp` crate's builder).
///
/// If either address is IPv6 both are sent as TCP6, mapping an IPv4 address to
/// `::ffff:a.b.c.d`, because the header has one family for both (flow info
/// and scope id are not representable and are dropped). Returns an error
/// rather than truncating: a silently shortened identity could name someone
/// else.
pub fn encode(h: &Header) -> Result<Bytes, EncodeError> {
    if let Some(&(t, _)) = h
        .tlvs
        .iter()
        .find(|(t, _)| *t == PP2_TYPE_SSL || *t == PP2_TYPE_POSTERN_IDENTITY)
    {
        return Err(EncodeError::ReservedType(t));
    }
    let addresses = match (h.source, h.destination) {
        (s @ SocketAddr::V4(_), d @ SocketAddr::V4(_)) => (s, d),
        (s, d) => (mapped(s), mapped(d)),
    };
    // ppp refuses (WriteZero) any TLV or total over u16; say how long it was.
    let too_long = |_| EncodeError::TooLong(body_len(h, addresses.0.is_ipv4()));
    let mut builder =
        Builder::with_addresses(Version::Two | Command::Proxy, Protocol::Stream, addresses);
    if let Some(id) = h.identity.as_deref().map(str::as_bytes) {
        // The SSL TLV's value: client flags (1), verify (4, 0 = verified),
        // then the CN as a sub-TLV. ppp has no SSL TLV builder, only the
        // generic TLV one used for the sub-TLV here.
        let mut ssl = vec![PP2_CLIENT_SSL_CERT_CONN, 0, 0, 0, 0];
        ssl.extend(
            TypeLengthValue::new(PP2_SUBTYPE_SSL_CN, id)
                .to_bytes()
                .map_err(too_long)?,
        );
        builder = builder
            .write_tlv(PP2_TYPE_SSL, &ssl)
            .and_then(|b| b.write_tlv(PP2_TYPE_POSTERN_IDENTITY, id))
            .map_err(too_long)?;
    }
    for (t, v) in &h.tlvs {
        builder = builder.write_tlv(*t, v).map_err(too_long)?;
    }
    builder.build().map(Bytes::from).map_err(too_long)
}

/// The length of everything after the fixed part, for the error message.
fn body_len(h: &Header, v4: bool) -> usize {
    let mut body = if v4 { ADDR_LEN_TCP4 } else { ADDR_LEN_TCP6 };
    if let Some(id) = &h.identity {
        // SSL TLV (3 + client 1 + verify 4 + CN sub-TLV 3 + id), then 0xE0 (3 + id).
        body += 3 + 5 + 3 + id.len() + 3 + id.len();
    }
    body + h.tlvs.iter().map(|(_, v)| 3 + v.len()).sum::<usize>()
}

fn mapped(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(as_v6(a.ip())), a.port())
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

#[cfg(test)]
mod tests;
