//! `cargo fuzz run target_parse`: the body is `postern_fuzz::target_parse` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::target_parse(data));
