#![no_main]
//! See `flotilla_fuzz_harness::image_manifest`.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flotilla_fuzz_harness::image_manifest(data));
