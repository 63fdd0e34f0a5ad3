//! `cargo fuzz run parse_config`: the body is `postern_fuzz::parse_config` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::parse_config(data));
