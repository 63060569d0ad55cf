//! A client's text message: the control message parser (simd-json in place).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediarelay::protocol::{parse, Request};

fuzz_target!(|data: &[u8]| {
    let mut buf = data.to_vec();
    match parse(&mut buf) {
        Request::Get { key, .. } => assert!(mediarelay::protocol::keys::validate_key(&key).is_ok()),
        Request::Subscribe { stream, .. } => {
            assert!(mediarelay::protocol::keys::validate_stream(&stream).is_ok());
        }
        _ => {}
    }
});
