#![no_main]
//! See `flotilla_fuzz_harness::service_definition`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::service_definition(data));
