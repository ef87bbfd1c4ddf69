#![no_main]
//! See `flotilla_fuzz_harness::operator_query`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::operator_query(data));
