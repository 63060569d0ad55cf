//! A page of a GCS `objects.list` answer as discovery reads it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mediarelay::origin::gcs::parse_listing(data);
});
