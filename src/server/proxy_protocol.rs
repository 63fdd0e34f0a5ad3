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

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use bytes::{BufMut, Bytes, BytesMut};

/// The fixed 12-byte v2 signature.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// `PP2_TYPE_SSL`: TLS details about the client connection.
pub const PP2_TYPE_SSL: u8 = 0x20;
/// `PP2_SUBTYPE_SSL_CN`: inside `PP2_TYPE_SSL`, the client certificate's name.
pub const PP2_SUBTYPE_SSL_CN: u8 = 0x22;
/// `PP2_CLIENT_SSL | PP2_CLIENT_CERT_CONN`: TLS was used and the client
/// presented a certificate on this connection.
pub const PP2_CLIENT_SSL_CERT_CONN: u8 = 0x01 | 0x02;
/// Postern's own TLV (first application-reserved type): the identity, UTF-8.
pub const PP2_TYPE_POSTERN_IDENTITY: u8 = 0xE0;

/// Version 2 in the high nibble, command PROXY in the low one.
const VERSION_COMMAND_PROXY: u8 = 0x21;
const FAMILY_TCP4: u8 = 0x11;
const FAMILY_TCP6: u8 = 0x21;
/// Bytes before the variable part: signature, ver/cmd, family, length.
const FIXED_LEN: usize = 16;
const ADDR_LEN_TCP4: usize = 12;
const ADDR_LEN_TCP6: usize = 36;

/// What the header says about the tunnel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// The client's address as the server saw it.
    pub source: SocketAddr,
    /// The address the client connected to.
    pub destination: SocketAddr,
    /// The verified client identity (its primary name), if any.
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

/// Why bytes are not a header this module accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the header needs; `needed` is a lower bound.
    #[error("truncated PROXY v2 header: need at least {needed} bytes, have {have}")]
    Truncated {
        /// Bytes required so far.
        needed: usize,
        /// Bytes available.
        have: usize,
    },
    /// The first 12 bytes are not the v2 signature.
    #[error("not a PROXY v2 header (bad signature)")]
    BadSignature,
    /// The version nibble is not 2.
    #[error("unsupported PROXY protocol version {0}")]
    BadVersion(u8),
    /// Only the PROXY command is accepted (LOCAL carries no addresses).
    #[error("unsupported PROXY v2 command {0:#x}")]
    BadCommand(u8),
    /// Only TCP over IPv4 or IPv6 is accepted.
    #[error("unsupported PROXY v2 address family/protocol {0:#04x}")]
    BadFamily(u8),
    /// The length field is smaller than the address block of the family.
    #[error("PROXY v2 length {len} is shorter than the {need}-byte address block")]
    ShortAddresses {
        /// Declared length.
        len: usize,
        /// Address block length for the family.
        need: usize,
    },
    /// A TLV (or `PP2_TYPE_SSL` sub-TLV) runs past its enclosing block.
    #[error("PROXY v2 TLV of type {0:#04x} overruns its block")]
    TlvOverrun(u8),
    /// A `PP2_TYPE_SSL` TLV too short for its fixed fields.
    #[error("PROXY v2 SSL TLV is malformed")]
    BadSsl,
    /// The identity is not UTF-8.
    #[error("PROXY v2 identity is not UTF-8")]
    BadIdentity,
    /// The identity appears more than once per carrier, or the carriers differ.
    #[error("PROXY v2 header carries conflicting or repeated identities")]
    ConflictingIdentity,
}

/// Encodes `h` as a PROXY v2 header.
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
    let v4 = match (h.source, h.destination) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => Some((s, d)),
        _ => None,
    };
    let addr_len = if v4.is_some() {
        ADDR_LEN_TCP4
    } else {
        ADDR_LEN_TCP6
    };
    let id = h.identity.as_deref().map(str::as_bytes);
    // SSL TLV value: client (1) + verify (4) + CN sub-TLV (3 + id).
    let ssl_len = id.map(|i| 5 + 3 + i.len());
    // Every TLV length is at most `body`, so bounding `body` by u16 bounds
    // each of them too and the narrowing casts below are exact.
    let mut body = addr_len;
    if let (Some(i), Some(s)) = (id, ssl_len) {
        body = body.saturating_add(3 + s).saturating_add(3 + i.len());
    }
    for (_, v) in &h.tlvs {
        body = body.saturating_add(3 + v.len());
    }
    let body_u16 = u16::try_from(body).map_err(|_| EncodeError::TooLong(body))?;

    let mut out = BytesMut::with_capacity(FIXED_LEN + body);
    out.put_slice(&SIGNATURE);
    out.put_u8(VERSION_COMMAND_PROXY);
    match v4 {
        Some((s, d)) => {
            out.put_u8(FAMILY_TCP4);
            out.put_u16(body_u16);
            out.put_slice(&s.ip().octets());
            out.put_slice(&d.ip().octets());
        }
        None => {
            out.put_u8(FAMILY_TCP6);
            out.put_u16(body_u16);
            out.put_slice(&as_v6(h.source.ip()).octets());
            out.put_slice(&as_v6(h.destination.ip()).octets());
        }
    }
    out.put_u16(h.source.port());
    out.put_u16(h.destination.port());
    if let (Some(i), Some(s)) = (id, ssl_len) {
        out.put_u8(PP2_TYPE_SSL);
        out.put_u16(s as u16);
        out.put_u8(PP2_CLIENT_SSL_CERT_CONN);
        out.put_u32(0); // verify: 0 = client certificate verified
        put_tlv(&mut out, PP2_SUBTYPE_SSL_CN, i);
        put_tlv(&mut out, PP2_TYPE_POSTERN_IDENTITY, i);
    }
    for (t, v) in &h.tlvs {
        put_tlv(&mut out, *t, v);
    }
    debug_assert_eq!(out.len(), FIXED_LEN + body);
    Ok(out.freeze())
}

/// Writes one TLV; `encode` has checked that `v` fits in u16.
fn put_tlv(out: &mut BytesMut, t: u8, v: &[u8]) {
    out.put_u8(t);
    out.put_u16(v.len() as u16);
    out.put_slice(v);
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Decodes a header from the start of `buf`, returning it and the number of
/// bytes it occupied (tunnel bytes may follow).
///
/// Strict, and the inverse of [`encode`] rather than a general parser: only
/// PROXY over TCP4/TCP6, every length must fit its enclosing block, and the two
/// identity carriers must agree. An SSL TLV is only read for its CN; other TLVs
/// are returned in `tlvs`. TCP6 addresses, including v4-mapped ones, come back
/// as IPv6. Never panics, whatever the input.
pub fn decode(buf: &[u8]) -> Result<(Header, usize), DecodeError> {
    let have = buf.len();
    let sig_len = have.min(SIGNATURE.len());
    if buf[..sig_len] != SIGNATURE[..sig_len] {
        return Err(DecodeError::BadSignature);
    }
    let Some(fixed) = buf.get(..FIXED_LEN) else {
        return Err(DecodeError::Truncated {
            needed: FIXED_LEN,
            have,
        });
    };
    let (ver_cmd, family) = (fixed[12], fixed[13]);
    if ver_cmd >> 4 != 2 {
        return Err(DecodeError::BadVersion(ver_cmd >> 4));
    }
    if ver_cmd & 0x0f != 1 {
        return Err(DecodeError::BadCommand(ver_cmd & 0x0f));
    }
    let addr_len = match family {
        FAMILY_TCP4 => ADDR_LEN_TCP4,
        FAMILY_TCP6 => ADDR_LEN_TCP6,
        other => return Err(DecodeError::BadFamily(other)),
    };
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len < addr_len {
        return Err(DecodeError::ShortAddresses {
            len,
            need: addr_len,
        });
    }
    let total = FIXED_LEN + len;
    let Some(body) = buf.get(FIXED_LEN..total) else {
        return Err(DecodeError::Truncated {
            needed: total,
            have,
        });
    };
    let (addrs, mut rest) = body.split_at(addr_len);
    let (source, destination) = parse_addrs(addrs);

    let mut header = Header {
        source,
        destination,
        identity: None,
        tlvs: Vec::new(),
    };
    let mut ssl_cn: Option<String> = None;
    let mut seen_ssl = false;
    while !rest.is_empty() {
        let (t, v, next) = split_tlv(rest)?;
        rest = next;
        match t {
            PP2_TYPE_SSL => {
                if std::mem::replace(&mut seen_ssl, true) {
                    return Err(DecodeError::ConflictingIdentity);
                }
                ssl_cn = parse_ssl(v)?;
            }
            PP2_TYPE_POSTERN_IDENTITY => {
                if header.identity.is_some() {
                    return Err(DecodeError::ConflictingIdentity);
                }
                header.identity = Some(utf8(v)?);
            }
            _ => header.tlvs.push((t, v.to_vec())),
        }
    }
    match (&header.identity, ssl_cn) {
        (Some(a), Some(b)) if *a != b => return Err(DecodeError::ConflictingIdentity),
        (None, Some(b)) => header.identity = Some(b),
        _ => {}
    }
    Ok((header, total))
}

/// Reads the address block; `addrs` is exactly 12 (TCP4) or 36 (TCP6) bytes.
fn parse_addrs(addrs: &[u8]) -> (SocketAddr, SocketAddr) {
    let port = |i: usize| u16::from_be_bytes([addrs[i], addrs[i + 1]]);
    let mut a4 = [0u8; 4];
    let mut b4 = [0u8; 4];
    if addrs.len() == ADDR_LEN_TCP4 {
        a4.copy_from_slice(&addrs[0..4]);
        b4.copy_from_slice(&addrs[4..8]);
        return (
            SocketAddrV4::new(a4.into(), port(8)).into(),
            SocketAddrV4::new(b4.into(), port(10)).into(),
        );
    }
    let mut a = [0u8; 16];
    let mut b = [0u8; 16];
    a.copy_from_slice(&addrs[0..16]);
    b.copy_from_slice(&addrs[16..32]);
    (
        SocketAddrV6::new(a.into(), port(32), 0, 0).into(),
        SocketAddrV6::new(b.into(), port(34), 0, 0).into(),
    )
}

/// Splits one TLV off the front of `buf`: (type, value, remainder).
fn split_tlv(buf: &[u8]) -> Result<(u8, &[u8], &[u8]), DecodeError> {
    let [t, hi, lo, rest @ ..] = buf else {
        return Err(DecodeError::TlvOverrun(buf.first().copied().unwrap_or(0)));
    };
    let len = usize::from(u16::from_be_bytes([*hi, *lo]));
    if len > rest.len() {
        return Err(DecodeError::TlvOverrun(*t));
    }
    let (v, next) = rest.split_at(len);
    Ok((*t, v, next))
}

/// Reads a `PP2_TYPE_SSL` value: client (1), verify (4), sub-TLVs; returns the
/// CN sub-TLV if present (at most once).
fn parse_ssl(v: &[u8]) -> Result<Option<String>, DecodeError> {
    let Some(mut subs) = v.get(5..) else {
        return Err(DecodeError::BadSsl);
    };
    let mut cn = None;
    while !subs.is_empty() {
        let (t, sv, next) = split_tlv(subs)?;
        subs = next;
        if t == PP2_SUBTYPE_SSL_CN && cn.replace(utf8(sv)?).is_some() {
            return Err(DecodeError::ConflictingIdentity);
        }
    }
    Ok(cn)
}

fn utf8(v: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(v.to_vec()).map_err(|_| DecodeError::BadIdentity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn header(src: &str, dst: &str, identity: Option<&str>) -> Header {
        Header {
            source: addr(src),
            destination: addr(dst),
            identity: identity.map(Into::into),
            tlvs: Vec::new(),
        }
    }

    /// Headers that must survive encode -> decode unchanged.
    fn round_trip_fixtures() -> Vec<Header> {
        let mut with_tlvs = header("10.0.0.1:1", "10.0.0.2:2", Some("cn-ops"));
        with_tlvs.tlvs = vec![
            (0x04, vec![]),
            (0x05, b"unique".to_vec()),
            (0xE1, vec![0; 300]),
        ];
        vec![
            header("192.0.2.1:40000", "198.51.100.7:5432", None),
            header(
                "192.0.2.1:40000",
                "198.51.100.7:5432",
                Some("spiffe://example.org/ns/prod/sa/a"),
            ),
            header("[2001:db8::1]:443", "[2001:db8::2]:8443", None),
            header("[2001:db8::1]:443", "[::1]:22", Some("client.example.com")),
            header("[::ffff:192.0.2.1]:1", "[2001:db8::2]:2", Some("ünïcode")),
            header("0.0.0.0:0", "255.255.255.255:65535", Some("")),
            with_tlvs,
        ]
    }

    #[test]
    fn round_trip() {
        let mut n = 0;
        for h in round_trip_fixtures() {
            let wire = encode(&h).expect("encode");
            let mut with_payload = wire.to_vec();
            with_payload.extend_from_slice(b"tunnel bytes");
            let (got, used) = decode(&with_payload).expect("decode");
            assert_eq!(used, wire.len());
            assert_eq!(got, h);
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn mixed_families_become_v6_mapped() {
        let mut n = 0;
        for (src, dst) in [
            ("192.0.2.1:1000", "[2001:db8::2]:80"),
            ("[2001:db8::1]:1000", "198.51.100.7:80"),
        ] {
            let h = header(src, dst, Some("id"));
            let wire = encode(&h).expect("encode");
            assert_eq!(wire[13], FAMILY_TCP6);
            let (got, _) = decode(&wire).expect("decode");
            let map = |a: SocketAddr| SocketAddr::new(IpAddr::V6(as_v6(a.ip())), a.port());
            assert_eq!(got.source, map(h.source));
            assert_eq!(got.destination, map(h.destination));
            assert_eq!(got.identity.as_deref(), Some("id"));
            assert!(got.source.is_ipv6() && got.destination.is_ipv6());
            n += 1;
        }
        assert!(n > 0);
    }

    #[test]
    fn known_bytes() {
        let h = header("192.0.2.1:40000", "198.51.100.7:5432", None);
        let wire = encode(&h).expect("encode");
        let fixed: [u8; 16] = [
            0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54,
            0x0A, // signature
            0x21, // v2, PROXY
            0x11, // TCP4
            0x00, 0x0C, // 12 bytes of addresses, no TLVs
        ];
        assert_eq!(wire[..16], fixed);
        assert_eq!(
            wire[16..],
            [192, 0, 2, 1, 198, 51, 100, 7, 0x9C, 0x40, 0x15, 0x38]
        );

        // With an identity: SSL TLV (client 0x03, verify 0, CN sub-TLV), then 0xE0.
        let wire = encode(&header("192.0.2.1:1", "192.0.2.2:2", Some("ab"))).expect("encode");
        let len = 12 + (3 + 5 + 3 + 2) + (3 + 2);
        assert_eq!(wire[14..16], (len as u16).to_be_bytes());
        assert_eq!(
            wire[28..],
            [0x20, 0, 10, 0x03, 0, 0, 0, 0, 0x22, 0, 2, b'a', b'b', 0xE0, 0, 2, b'a', b'b']
        );

        let v6 = encode(&header("[::1]:1", "[::2]:2", None)).expect("encode");
        assert_eq!(v6[12..16], [0x21, 0x21, 0x00, 36]);
        assert_eq!(v6.len(), 16 + 36);
    }

    #[test]
    fn every_truncation_is_rejected() {
        let mut checked = 0;
        for h in round_trip_fixtures() {
            let wire = encode(&h).expect("encode");
            for cut in 0..wire.len() {
                assert!(
                    decode(&wire[..cut]).is_err(),
                    "prefix of {cut} bytes accepted"
                );
                checked += 1;
            }
        }
        assert!(checked > 0);
    }

    #[test]
    fn rejects_malformed() {
        let good = encode(&header("192.0.2.1:1", "192.0.2.2:2", Some("id"))).expect("encode");
        let with = |i: usize, b: u8| {
            let mut v = good.to_vec();
            v[i] = b;
            v
        };
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (
                b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n".to_vec(),
                DecodeError::BadSignature,
            ),
            (with(3, 0), DecodeError::BadSignature),
            (with(12, 0x11), DecodeError::BadVersion(1)),
            (with(12, 0x20), DecodeError::BadCommand(0)),
            (with(13, 0x12), DecodeError::BadFamily(0x12)),
            (with(13, 0x31), DecodeError::BadFamily(0x31)),
            // Length smaller than the address block.
            (
                {
                    let mut v = with(14, 0);
                    v[15] = 4;
                    v
                },
                DecodeError::ShortAddresses { len: 4, need: 12 },
            ),
            // Declared length one past the buffer.
            (
                {
                    let mut v = good.to_vec();
                    v[15] += 1;
                    v.push(0);
                    v.truncate(good.len());
                    v
                },
                DecodeError::Truncated {
                    needed: good.len() + 1,
                    have: good.len(),
                },
            ),
            // SSL TLV length claims more than the block holds.
            (with(30, 200), DecodeError::TlvOverrun(PP2_TYPE_SSL)),
            // CN sub-TLV differs from the 0xE0 TLV.
            (
                {
                    let mut v = good.to_vec();
                    let n = v.len();
                    v[n - 5 - 1] = b'X';
                    v
                },
                DecodeError::ConflictingIdentity,
            ),
            // Non-UTF-8 identity in 0xE0.
            (
                {
                    let mut v = good.to_vec();
                    let n = v.len();
                    v[n - 1] = 0xFF;
                    v
                },
                DecodeError::BadIdentity,
            ),
        ];
        let mut n = 0;
        for (bytes, want) in cases {
            assert_eq!(decode(&bytes).map(|_| ()), Err(want.clone()), "{want}");
            n += 1;
        }
        assert!(n > 0);

        // A repeated 0xE0 TLV is refused even when the values agree.
        let mut v = good.to_vec();
        v.extend_from_slice(&[0xE0, 0, 2, b'i', b'd']);
        let len = u16::from_be_bytes([v[14], v[15]]) + 5;
        v[14..16].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            decode(&v).map(|_| ()),
            Err(DecodeError::ConflictingIdentity)
        );
        // A TLV header cut short inside the block.
        let mut v = encode(&header("192.0.2.1:1", "192.0.2.2:2", None))
            .expect("encode")
            .to_vec();
        v.extend_from_slice(&[0x04, 0]);
        v[15] += 2;
        assert_eq!(decode(&v).map(|_| ()), Err(DecodeError::TlvOverrun(0x04)));
        // An SSL TLV too short for client + verify.
        let mut v = encode(&header("192.0.2.1:1", "192.0.2.2:2", None))
            .expect("encode")
            .to_vec();
        v.extend_from_slice(&[0x20, 0, 2, 3, 0]);
        v[15] += 5;
        assert_eq!(decode(&v).map(|_| ()), Err(DecodeError::BadSsl));
    }

    #[test]
    fn ssl_cn_alone_is_the_identity() {
        let mut v = encode(&header("192.0.2.1:1", "192.0.2.2:2", None))
            .expect("encode")
            .to_vec();
        v.extend_from_slice(&[0x20, 0, 10, 0x03, 0, 0, 0, 0, 0x22, 0, 2, b'o', b'k']);
        v[15] += 13;
        let (h, used) = decode(&v).expect("decode");
        assert_eq!(used, v.len());
        assert_eq!(h.identity.as_deref(), Some("ok"));
        assert!(h.tlvs.is_empty());
    }

    #[test]
    fn encode_limits() {
        let mut h = header("192.0.2.1:1", "192.0.2.2:2", None);
        h.tlvs = vec![(0xE0, b"forged".to_vec())];
        assert_eq!(encode(&h), Err(EncodeError::ReservedType(0xE0)));
        h.tlvs = vec![(0x20, vec![])];
        assert_eq!(encode(&h), Err(EncodeError::ReservedType(0x20)));

        // The largest identity that fits: 12 + (3+8+id) + (3+id) = 65535.
        let max = (65535 - 12 - 3 - 8 - 3) / 2;
        let h = header("192.0.2.1:1", "192.0.2.2:2", Some(&"a".repeat(max)));
        let wire = encode(&h).expect("fits");
        assert_eq!(decode(&wire).expect("decode").0, h);
        let h = header("192.0.2.1:1", "192.0.2.2:2", Some(&"a".repeat(max + 1)));
        assert!(matches!(encode(&h), Err(EncodeError::TooLong(_))));
        let mut h = header("192.0.2.1:1", "192.0.2.2:2", None);
        h.tlvs = vec![(0x05, vec![0; 70_000])];
        assert!(matches!(encode(&h), Err(EncodeError::TooLong(_))));
    }

    #[test]
    fn decode_never_panics_on_noise() {
        // Deterministic xorshift noise, plus mutations of a valid header.
        let good = encode(&header(
            "[2001:db8::1]:1",
            "[2001:db8::2]:2",
            Some("spiffe://x/y"),
        ))
        .expect("encode")
        .to_vec();
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut runs = 0;
        for _ in 0..20_000 {
            let mut v = good.clone();
            for _ in 0..(next() % 4 + 1) {
                let i = (next() as usize) % v.len();
                v[i] = next() as u8;
            }
            let cut = (next() as usize) % (v.len() + 1);
            let _ = decode(&v[..cut]);
            let _ = decode(&v);
            runs += 1;
        }
        assert!(runs > 0);
    }
}
