//! Storage keys: validation and segment names round-trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediarelay::protocol::keys::{segment_key, segment_seq, validate_key};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if validate_key(text).is_ok() {
        assert!(!text
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == ".."));
        if let Some((stream, _)) = text.rsplit_once('/') {
            if let Some(seq) = segment_seq(stream, text) {
                let ext = text.rsplit('.').next().unwrap_or("m4s");
                assert_eq!(
                    segment_seq(stream, &segment_key(stream, seq, ext)),
                    Some(seq)
                );
            }
        }
    }
});
