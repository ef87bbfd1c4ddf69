#![no_main]
//! See `flotilla_fuzz_harness::registry_answer`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::registry_answer(data));
