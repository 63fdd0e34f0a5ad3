//! The bodies of Postern's fuzz targets, one function per target, each taking
//! the fuzzer's raw bytes. The `cargo fuzz` binaries in `fuzz_targets/` call
//! them, and the main package's tests replay every file of `corpus/` through
//! the same functions (`tests/it/fuzz_corpus.rs` includes this file), so the
//! corpus runs on every CI without a nightly toolchain.
//!
//! Each function panics only when a promise of the code under test is broken.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use postern::authz::{Allow, Pattern, PeerIdentity};
use postern::client::Target;
use postern::testing::proxy_protocol::{decode, encode, Header};
use postern::tls::pem;

/// A target's body: the fuzzer's bytes in, a panic only on a broken promise.
pub type Body = fn(&[u8]);

/// Every target by the name of its `fuzz_targets/` binary and corpus folder.
pub const TARGETS: &[(&str, Body)] = &[
    ("parse_config", parse_config),
    ("pattern_match", pattern_match),
    ("pem_files", pem_files),
    ("proxy_protocol", proxy_protocol),
    ("target_parse", target_parse),
];

/// The TOML routes/policy config: any text must parse or fail cleanly.
pub fn parse_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = postern::testing::parse_config(text);
    }
}

#[derive(Arbitrary, Debug)]
struct Patterns {
    patterns: Vec<String>,
    uris: Vec<String>,
    dns_names: Vec<String>,
    common_name: Option<String>,
}

/// Identity patterns: parsing arbitrary text, matching arbitrary identities,
/// and the promises of the syntax (an exact pattern matches its own value, a
/// wildcard matches one step below it, never the bare prefix).
pub fn pattern_match(data: &[u8]) {
    let Ok(input) = Patterns::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let id = PeerIdentity {
        uris: input.uris,
        dns_names: input.dns_names,
        common_name: input.common_name,
        ..Default::default()
    };
    let mut parsed = Vec::new();
    for text in &input.patterns {
        let Ok(p) = Pattern::from_str(text) else {
            continue;
        };
        let _ = p.matches(&id);
        // Display gives back the syntax FromStr takes.
        assert_eq!(Pattern::from_str(&p.to_string()).as_ref(), Ok(&p));
        let own = |uris: Vec<String>, dns: Vec<String>, cn: Option<String>| PeerIdentity {
            uris,
            dns_names: dns,
            common_name: cn,
            ..Default::default()
        };
        match &p {
            Pattern::Uri(u) => match u.strip_suffix('*') {
                None => assert!(p.matches(&own(vec![u.clone()], vec![], None))),
                Some(prefix) => {
                    assert!(p.matches(&own(vec![format!("{prefix}x")], vec![], None)));
                    let bare = prefix.trim_end_matches('/').to_owned();
                    assert!(!p.matches(&own(vec![bare], vec![], None)));
                }
            },
            Pattern::Dns(d) => match d.strip_prefix('*') {
                None => assert!(p.matches(&own(vec![], vec![d.to_ascii_uppercase()], None))),
                Some(suffix) => {
                    assert!(p.matches(&own(vec![], vec![format!("a{suffix}")], None)));
                    assert!(!p.matches(&own(vec![], vec![format!("a.b{suffix}")], None)));
                    assert!(!p.matches(&own(vec![], vec![suffix[1..].to_owned()], None)));
                }
            },
            Pattern::CommonName(c) => assert!(p.matches(&own(vec![], vec![], Some(c.clone())))),
        }
        parsed.push(p);
    }
    let verdict = Allow::new(parsed.clone()).check(&id);
    if !parsed.is_empty() {
        assert_eq!(verdict.is_ok(), parsed.iter().any(|p| p.matches(&id)));
    }
}

fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        std::env::temp_dir().join(format!("postern-fuzz-pem-{}.pem", std::process::id()))
    })
}

/// The PEM loading paths, fed through a real file as at start-up and on
/// reload: certificates, keys, CRLs and CA bundles must load or fail with an
/// error, and every certificate that loads has its identity read the way a
/// verified peer's would be.
pub fn pem_files(data: &[u8]) {
    let path = scratch();
    std::fs::write(path, data).expect("write scratch file");
    if let Ok(certs) = pem::load_certs(path) {
        for cert in &certs {
            let _ = PeerIdentity::from_der(cert);
            let _ = pem::check_validity(path, cert);
        }
    }
    let _ = pem::load_key(path);
    let _ = pem::load_crls(path);
    let _ = pem::load_roots(path);
    let _ = pem::load_identity(path, path);
    // The DER parser on its own, without the PEM armour.
    let _ = PeerIdentity::from_der(&data.to_vec().into());
}

#[derive(Arbitrary, Debug)]
struct ProxyInput {
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

/// PROXY v2: decoding arbitrary bytes never panics, and whatever `encode`
/// writes, `decode` reads back the same (IPv4 becomes v4-mapped IPv6 when
/// the other address is IPv6).
pub fn proxy_protocol(data: &[u8]) {
    // The raw bytes on their own first, so a corpus file that is a real
    // header is decoded as one.
    decode_stable(data);
    let Ok(input) = ProxyInput::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    decode_stable(&input.raw);
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
}

/// What decodes re-encodes to a header that decodes the same.
fn decode_stable(raw: &[u8]) {
    if let Ok((h, used)) = decode(raw) {
        assert!(used <= raw.len());
        if let Ok(again) = encode(&h) {
            assert_eq!(decode(&again).map(|(h2, _)| h2), Ok(h));
        }
    }
}

/// `--url` parsing: any string must parse or fail cleanly, and a parsed
/// target must be self-consistent.
pub fn target_parse(data: &[u8]) {
    if let Ok(url) = std::str::from_utf8(data) {
        if let Ok(t) = Target::parse(url) {
            assert_eq!(t.tls, t.uri.scheme_str() == Some("https"));
            assert!(t.uri.query().is_none());
        }
    }
}
