//! `cargo fuzz run proxy_protocol`: the body is `postern_fuzz::proxy_protocol` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::proxy_protocol(data));
