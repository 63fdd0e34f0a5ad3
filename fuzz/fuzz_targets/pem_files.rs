//! `cargo fuzz run pem_files`: the body is `postern_fuzz::pem_files` (fuzz/src/lib.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::pem_files(data));
