//! A Firestore document as the ticket sync decodes it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = mediarelay::tickets::firestore::decode_json(data);
});
