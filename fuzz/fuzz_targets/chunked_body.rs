//! A chunked request body (ingest) as the decoder reads it: never a panic, never more than
//! the size limit, and the same result whether the bytes come whole or in two pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediarelay::dataplane::ingest::Chunked;

const MAX: u64 = 4096;

fuzz_target!(|data: &[u8]| {
    let mut whole = Chunked::new(MAX);
    let mut out_whole = Vec::new();
    let r_whole = whole.feed(data, &mut out_whole);
    assert!(out_whole.len() as u64 <= MAX);
    if let Ok(used) = r_whole {
        assert!(used <= data.len());
    }
    if data.is_empty() {
        return;
    }
    let cut = data[0] as usize % data.len();
    let mut pieces = Chunked::new(MAX);
    let mut out_pieces = Vec::new();
    let r_pieces = pieces.feed(&data[..cut], &mut out_pieces).and_then(|a| {
        if pieces.is_done() {
            Ok(a)
        } else {
            pieces.feed(&data[cut..], &mut out_pieces).map(|b| a + b)
        }
    });
    assert_eq!(r_whole.is_ok(), r_pieces.is_ok());
    if let (Ok(a), Ok(b)) = (r_whole, r_pieces) {
        assert_eq!(a, b);
        assert_eq!(out_whole, out_pieces);
        assert_eq!(whole.is_done(), pieces.is_done());
    }
});
