//! Encoding against known bytes and the strict decoder, and the decoder's refusals.

use super::decode::{decode, DecodeError, FAMILY_TCP6};
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
        0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, // signature
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
