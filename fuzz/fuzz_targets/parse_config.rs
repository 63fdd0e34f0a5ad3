//! The TOML routes/policy config: any text must parse or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = postern::authz::policy::parse_config(text);
    }
});
