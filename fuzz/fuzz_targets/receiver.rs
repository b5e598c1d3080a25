#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| syncoid_rsync_core::fuzz::receiver(data));
