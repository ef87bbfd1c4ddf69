#![no_main]
//! See `flotilla_fuzz_harness::join_request`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::join_request(data));
