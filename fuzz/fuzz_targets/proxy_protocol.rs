//! PROXY v2: decoding arbitrary bytes never panics, and whatever `encode`
//! writes, `decode` reads back the same (IPv4 becomes v4-mapped IPv6 when
//! the other address is IPv6).
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use postern::server::proxy_protocol::{decode, encode, Header};

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    source: SocketAddr,
    destination: SocketAddr,
    identity: Option<String>,
    tlvs: Vec<(u8, Vec<u8>)>,
}

fn as_v6(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(v4) => IpAddr::V6(v4.to_ipv6_mapped()),
        v6 => v6,
    };
    SocketAddr::new(ip, a.port())
}

fn plain(a: SocketAddr) -> SocketAddr {
    // Flow info and scope id are not carried.
    SocketAddr::new(a.ip(), a.port())
}

fuzz_target!(|input: Input| {
    if let Ok((h, used)) = decode(&input.raw) {
        assert!(used <= input.raw.len());
        // What decodes re-encodes to a header that decodes the same.
        if let Ok(again) = encode(&h) {
            assert_eq!(decode(&again).map(|(h2, _)| h2), Ok(h));
        }
    }
    let header = Header {
        source: input.source,
        destination: input.destination,
        identity: input.identity,
        tlvs: input.tlvs,
    };
    let Ok(bytes) = encode(&header) else { return };
    let (back, used) = decode(&bytes).expect("decode what encode wrote");
    assert_eq!(used, bytes.len());
    let both_v4 = header.source.is_ipv4() && header.destination.is_ipv4();
    let (s, d) = if both_v4 {
        (header.source, header.destination)
    } else {
        (as_v6(header.source), as_v6(header.destination))
    };
    assert_eq!(back.source, plain(s));
    assert_eq!(back.destination, plain(d));
    assert_eq!(back.identity, header.identity);
    assert_eq!(back.tlvs, header.tlvs);
    // Tunnel bytes after the header are left alone.
    let mut with_tail = bytes.to_vec();
    with_tail.extend_from_slice(b"tunnel bytes");
    assert_eq!(decode(&with_tail).map(|(_, n)| n), Ok(bytes.len()));
});
