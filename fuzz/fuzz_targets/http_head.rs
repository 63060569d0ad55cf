//! A request head as the front end judges it: line ends and folding (also fed in pieces,
//! as packets arrive), httparse, the framing and Host rules, the request target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediarelay::dataplane::head::{check_headers, check_lines, check_lines_from, origin_form};

fuzz_target!(|data: &[u8]| {
    let whole = check_lines(data);
    // The same bytes arriving in two pieces are judged the same.
    if !data.is_empty() {
        let cut = data[0] as usize % data.len();
        let pieces = check_lines_from(&data[..cut], 0).and_then(|()| check_lines_from(data, cut));
        assert_eq!(whole.is_ok(), pieces.is_ok());
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    if let Ok(httparse::Status::Complete(_)) = req.parse(data) {
        let _ = check_headers(req.headers, req.version.unwrap_or(1));
        let target = origin_form(req.path.unwrap_or(""));
        assert!(target.len() <= req.path.unwrap_or("").len().max(1));
    }
});
