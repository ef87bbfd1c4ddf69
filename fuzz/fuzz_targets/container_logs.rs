#![no_main]
//! See `flotilla_fuzz_harness::container_logs`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::container_logs(data));
