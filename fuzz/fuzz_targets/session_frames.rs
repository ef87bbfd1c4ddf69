#![no_main]
//! See `flotilla_fuzz_harness::session_frames`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::session_frames(data));
