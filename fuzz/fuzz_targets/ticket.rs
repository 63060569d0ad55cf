//! Ticket extraction from a request: the `Authorization: Bearer` header or the
//! percent-encoded `?ticket=` query parameter.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mediarelay::dataplane::http::find_ticket;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize % data.len().max(1));
    let (value, query) = data.split_at(cut);
    let Ok(query) = std::str::from_utf8(query) else {
        return;
    };
    let headers = [httparse::Header {
        name: "Authorization",
        value,
    }];
    let _ = find_ticket(&headers, query);
    let _ = find_ticket(&[], query);
});
