//! The rules a request head must follow before the front end acts on it (RFC 9112), as pure
//! functions: the message framing ([`Framing`]; refused where a proxy in front could read it
//! differently: duplicate or malformed `Content-Length`, `Content-Length` with
//! `Transfer-Encoding`, a transfer coding other than `chunked`), the `Host` rule, obsolete
//! line folding and bare-LF line ends, and the request target's forms.

/// Largest request head (docs/protocol.md: 431 above this).
pub const MAX_HEAD: usize = 16 * 1024;

/// Why a head is refused with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadHead {
    /// A line ends in LF without CR.
    #[error("line ends without CR")]
    BareLf,
    /// A header line continues the previous one (obs-fold).
    #[error("folded header line")]
    Folded,
    /// More than one `Content-Length`.
    #[error("more than one Content-Length")]
    ContentLengths,
    /// `Content-Length` is not a decimal number, or comes with `Transfer-Encoding`, or the
    /// transfer coding is not `chunked` alone (or is on an HTTP/1.0 request).
    #[error("body framing not understood")]
    Framing,
    /// HTTP/1.1 without exactly one `Host`, or HTTP/1.0 with several.
    #[error("Host missing or repeated")]
    Host,
}

/// Whether the raw head bytes (up to and including the blank line) are well formed at the
/// line level: every line ends in CRLF and no header line is folded. Also usable on a
/// partial head, so a bad one is refused before it is complete.
pub fn check_lines(raw: &[u8]) -> Result<(), BadHead> {
    check_lines_from(raw, 0)
}

/// [`check_lines`] on the bytes of `raw` from `from` on, the bytes before being already
/// checked (a head arriving in pieces): the byte before `from` is looked at too, as the
/// first byte of a new piece may continue its line.
pub fn check_lines_from(raw: &[u8], from: usize) -> Result<(), BadHead> {
    for i in from.saturating_sub(1)..raw.len() {
        if raw[i] == b'\n' {
            if i == 0 || raw[i - 1] != b'\r' {
                return Err(BadHead::BareLf);
            }
            // A line after the request line that starts with SP or HTAB continues a header.
            if matches!(raw.get(i + 1), Some(b' ' | b'\t')) {
                return Err(BadHead::Folded);
            }
        }
    }
    Ok(())
}

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (no framing header, or `Content-Length: 0`).
    None,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// The framing and `Host` rules on parsed headers; the body's framing when they hold.
/// `version` is httparse's minor version.
pub fn check_headers(headers: &[httparse::Header<'_>], version: u8) -> Result<Framing, BadHead> {
    let count = |name: &str| {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
    };
    if count("content-length") > 1 {
        return Err(BadHead::ContentLengths);
    }
    let hosts = count("host");
    if hosts > 1 || (version == 1 && hosts == 0) {
        return Err(BadHead::Host);
    }
    match (value("content-length"), count("transfer-encoding")) {
        (None, 0) => Ok(Framing::None),
        (Some(len), 0) => {
            // 1*DIGIT, and small enough to be a size (no sign, no spaces, no overflow).
            if len.is_empty() || len.len() > 18 || !len.iter().all(u8::is_ascii_digit) {
                return Err(BadHead::Framing);
            }
            let n = std::str::from_utf8(len)
                .ok()
                .and_then(|t| t.parse::<u64>().ok())
                .ok_or(BadHead::Framing)?;
            Ok(if n == 0 {
                Framing::None
            } else {
                Framing::Length(n)
            })
        }
        (None, 1) if version == 1 => match value("transfer-encoding") {
            Some(v) if v.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            _ => Err(BadHead::Framing),
        },
        _ => Err(BadHead::Framing),
    }
}

/// The path and query of a request target: origin-form (`/ws?ticket=...`) as it is, and
/// absolute-form (`http://host:port/ws?...`, which clients send to proxies) reduced to its
/// path and query.
pub fn origin_form(target: &str) -> &str {
    let rest = match target.split_once("://") {
        Some((scheme, rest))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            rest
        }
        _ => return target,
    };
    match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'/' => &rest[at..],
        Some(at) => &rest[at..],
        None => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(raw: &[u8]) -> Result<Framing, BadHead> {
        check_lines(raw)?;
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        req.parse(raw).expect("parses");
        check_headers(req.headers, req.version.unwrap_or(1))
    }

    fn parse(raw: &[u8]) -> Result<(), BadHead> {
        framing(raw).map(|_| ())
    }

    #[test]
    fn framing_that_proxies_could_read_differently_is_refused() {
        let ok = b"GET /ws HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse(ok), Ok(()));
        let two_lengths =
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 30\r\n\r\n";
        assert_eq!(parse(two_lengths), Err(BadHead::ContentLengths));
        let same_twice =
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse(same_twice), Err(BadHead::ContentLengths));
        let both =
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse(both), Err(BadHead::Framing));
        let body = b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(framing(body), Ok(Framing::Length(5)));
        let chunked = b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(framing(chunked), Ok(Framing::Chunked));
        for bad in [
            &b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"[..],
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 5 5\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"PUT / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(parse(bad), Err(BadHead::Framing), "{}", String::from_utf8_lossy(bad));
        }
        let empty = b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(framing(empty), Ok(Framing::None));
    }

    #[test]
    fn host_rules() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n\r\n"), Err(BadHead::Host));
        assert_eq!(
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Err(BadHead::Host)
        );
        assert_eq!(parse(b"GET / HTTP/1.0\r\n\r\n"), Ok(()));
        assert_eq!(
            parse(b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"),
            Err(BadHead::Host)
        );
    }

    #[test]
    fn line_rules() {
        assert_eq!(
            check_lines(b"GET / HTTP/1.1\nHost: a\n\n"),
            Err(BadHead::BareLf)
        );
        assert_eq!(
            check_lines(b"GET / HTTP/1.1\r\nHost: a\n"),
            Err(BadHead::BareLf)
        );
        assert_eq!(
            check_lines(b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\nHost: a\r\n\r\n"),
            Err(BadHead::Folded)
        );
        assert_eq!(
            check_lines(b"GET / HTTP/1.1\r\nX-A: 1\r\n\t2\r\n\r\n"),
            Err(BadHead::Folded)
        );
        assert_eq!(check_lines(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"), Ok(()));
        // A partial head is judged on what arrived.
        assert_eq!(check_lines(b"GET / HTTP/1.1\r\nHo"), Ok(()));
    }

    #[test]
    fn heads_arriving_a_byte_at_a_time() {
        let good = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n";
        for n in 1..=good.len() {
            assert_eq!(check_lines_from(&good[..n], n - 1), Ok(()), "at {n}");
        }
        let folded = b"GET / HTTP/1.1\r\nX-A: 1\r\n 2\r\n\r\n";
        let first_bad =
            (1..=folded.len()).find(|&n| check_lines_from(&folded[..n], n - 1).is_err());
        assert_eq!(first_bad, Some(25)); // as soon as the space after the CRLF arrives
        let bare = b"GET / HTTP/1.1\nHost: a\n\n";
        assert_eq!(check_lines_from(&bare[..15], 14), Err(BadHead::BareLf));
    }

    #[test]
    fn targets() {
        assert_eq!(origin_form("/ws?ticket=a"), "/ws?ticket=a");
        assert_eq!(origin_form("http://relay:8080/ws?ticket=a"), "/ws?ticket=a");
        assert_eq!(origin_form("HTTPS://relay/readyz"), "/readyz");
        assert_eq!(origin_form("http://relay"), "/");
        assert_eq!(origin_form("http://relay?x=1"), "?x=1");
        assert_eq!(origin_form("*"), "*");
    }
}
