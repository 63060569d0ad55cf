//! Client bytes as a connection reads them: frame boundaries (`frame_len`, which refuses
//! oversized and unmasked frames before buffering) and fastwebsockets' parse of each frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediarelay::ws::frame::{frame_len, Parser};

fuzz_target!(|data: &[u8]| {
    let mut parser = Parser::default();
    let mut at = 0;
    while at < data.len() {
        match frame_len(&data[at..], 4096) {
            Ok(Some(len)) => {
                assert!(len >= 2 && at + len <= data.len());
                let _ = parser.parse(&data[at..at + len]);
                at += len;
            }
            Ok(None) | Err(_) => break,
        }
    }
});
