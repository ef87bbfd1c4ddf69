#![no_main]
//! See `flotilla_fuzz_harness::compose`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::compose(data));
