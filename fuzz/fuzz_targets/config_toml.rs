#![no_main]
//! See `flotilla_fuzz_harness::config_toml`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::config_toml(data));
