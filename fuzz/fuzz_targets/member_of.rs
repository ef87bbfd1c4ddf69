#![no_main]
//! See `flotilla_fuzz_harness::member_of`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::member_of(data));
