//! `--url` parsing: any string must parse or fail cleanly, and a parsed
//! target must be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postern::client::connector::Target;

fuzz_target!(|data: &[u8]| {
    if let Ok(url) = std::str::from_utf8(data) {
        if let Ok(t) = Target::parse(url) {
            assert_eq!(t.tls, t.uri.scheme_str() == Some("https"));
            assert!(t.uri.query().is_none());
        }
    }
});
