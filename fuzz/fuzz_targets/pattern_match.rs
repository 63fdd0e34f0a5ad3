//! `cargo fuzz run pattern_match`: the body is `postern_fuzz::pattern_match` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::pattern_match(data));
