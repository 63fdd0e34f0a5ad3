//! The strict PROXY v2 decoder behind Postern's own tests, reached through
//! `postern::testing`: it is not on the production path, where the server
//! only writes headers.
//!
//! Kept hand-written on purpose: it is the independent check of what the
//! encoder (`ppp`) emits, so it must not share that crate's reading of the
//! format; and it enforces what Postern promises beyond the spec (one
//! identity per carrier, the two carriers agreeing), which a general parser
//! accepts.

use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};

use super::{
    Header, ADDR_LEN_TCP4, ADDR_LEN_TCP6, PP2_SUBTYPE_SSL_CN, PP2_TYPE_POSTERN_IDENTITY,
    PP2_TYPE_SSL,
};

/// The fixed 12-byte v2 signature.
pub(crate) const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
pub(crate) const FAMILY_TCP4: u8 = 0x11;
pub(crate) const FAMILY_TCP6: u8 = 0x21;
/// Bytes before the variable part: signature, ver/cmd, family, length.
/// Only this strict decoder, which checks what the server writes, needs
/// them: encoding is `ppp`'s.
const FIXED_LEN: usize = 16;

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

/// Decodes a header from the start of `buf`, returning it and the number of
/// bytes it occupied (tunnel bytes may follow).
///
/// Strict, and the inverse of [`encode`](super::encode) rather than a general parser: only
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
