//! Ingest (PROTOCOL.md v1.1): `PUT` and `DELETE /ingest/<key>` (or `/ingest/t/<ticket>/<key>`
//! for encoders that cannot set headers) on the public listener.
//!
//! The publisher's ticket, its `publish` rights over the key and the announced size are
//! judged before any body byte is read (and before `100 Continue`). The body, framed by
//! `Content-Length` or chunked, is read into one buffer with a frame's headroom in front of
//! it. A live segment or init segment in that buffer goes to this relay's subscribers the
//! moment it is complete ([`crate::fanout::hub::Hub::ingested`]); the buffer is stored
//! ([`crate::origin::Origin::put`]: durable and whole, or nothing), becomes the cached object,
//! and only then is the publisher answered. A body cut off mid-way, or over
//! `max_object_size`, is neither stored nor published.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Instant;

use super::socket::Socket;

use super::core::Core;
use super::head::Framing;
use super::http::{error, find_ticket, header, linger_close, write_all};
use super::session::Context;
use crate::origin::{headroom_for, pool, Object, OriginError, Stored};
use crate::protocol::keys::{segment_name_seq, validate_key};
use crate::sys::Io;

/// Longest `Content-Type` kept from a publisher.
const MAX_CONTENT_TYPE: usize = 128;
/// Longest a stored segment waits for its stream's init segment still arriving.
const INIT_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// How much of a `Content-Length` body's buffer is made ready ahead of the bytes received.
const LENGTH_STEP: usize = 1 << 20;
/// First allocation for a chunked body (it grows as chunks arrive).
const CHUNKED_START: usize = 256 << 10;

/// What the front end read from an ingest request's head.
pub struct Request {
    pub put: bool,
    /// The ticket from the path, `Authorization: Bearer` or `?ticket=`.
    pub ticket: Option<String>,
    /// The key, percent-decoded (not yet validated).
    pub key: Result<String, ()>,
    pub framing: Framing,
    pub expect_continue: bool,
    pub content_type: Option<String>,
    pub keep_alive: bool,
}

impl Request {
    /// `rest`: the path after `/ingest/`.
    pub fn from_head(
        put: bool,
        rest: &str,
        query: &str,
        headers: &[httparse::Header<'_>],
        framing: Framing,
        keep_alive: bool,
    ) -> Request {
        let (path_ticket, key) = split_target(rest);
        let ticket = match path_ticket {
            Some(t) => Some(t),
            None => find_ticket(headers, query).map(Cow::into_owned),
        };
        let content_type = header(headers, "content-type")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && t.len() <= MAX_CONTENT_TYPE
                    && t.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            })
            .map(str::to_string);
        Request {
            put,
            ticket,
            key,
            framing,
            expect_continue: header(headers, "expect")
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue")),
            content_type,
            keep_alive,
        }
    }
}

/// The ticket (path form) and the percent-decoded key of an ingest path (after
/// `/ingest/`). A path starting `t/` always carries a ticket, so keys whose first segment
/// is `t` cannot be written through ingest (docs/protocol.md).
pub fn split_target(rest: &str) -> (Option<String>, Result<String, ()>) {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .map(Cow::into_owned)
            .map_err(|_| ())
    };
    match rest.strip_prefix("t/") {
        Some(r) => match r.split_once('/') {
            Some((ticket, key)) => (decode(ticket).ok(), decode(key)),
            None => (decode(r).ok(), Err(())),
        },
        None => (None, decode(rest)),
    }
}

/// Serve one ingest request whose head is `buf[..head_len]`. On `true` the connection
/// goes on (keep-alive) with `buf` holding what followed the request; on `false` it ends.
pub async fn serve(
    core: &Core,
    stream: &Socket,
    peer: SocketAddr,
    req: Request,
    buf: &mut Vec<u8>,
    head_len: usize,
) -> bool {
    let has_body = req.framing != Framing::None;
    // The request is taken whatever its answer: a kept-alive connection goes on with what
    // follows it.
    buf.drain(..head_len);
    // Before the body is read, an error answer ends the connection (the body, or part of
    // it, may be on its way).
    let early_keep = req.keep_alive && !has_body;
    // Counted under the same name as the JSON error (ticket refusals included).
    let fail = |result: &'static str, status: u16| {
        core.stats.ingest(result);
        async move {
            error(stream, status, result, early_keep).await;
            if !early_keep && has_body {
                linger_close(stream).await;
            }
            early_keep
        }
    };
    // A draining relay stores nothing more: the publisher retries (503, Retry-After).
    if core.shared.is_draining() {
        return fail("unavailable", 503).await;
    }
    let key = match req.key.as_deref().map(validate_key) {
        Ok(Ok(())) => req.key.clone().unwrap_or_default(),
        _ => return fail("bad_request", 400).await,
    };
    if !req.put && has_body {
        return fail("bad_request", 400).await;
    }
    let wait = core.shared.config().tickets.lookup_timeout;
    let record = match core
        .shared
        .gate
        .check(peer.ip(), req.ticket.as_deref(), wait)
        .await
    {
        Ok((_, record)) => record,
        Err(r) => {
            let (status, code) = r.status_and_code();
            return fail(code, status).await;
        }
    };
    if !record.covers_publish(&key) {
        return fail("forbidden", 403).await;
    }
    let origin = core.shared.cache.origin().clone();
    if !req.put {
        let (status, result) = match origin.delete(&key).await {
            Ok(true) => {
                core.shared.cache.forget(&key);
                (204, "deleted")
            }
            Ok(false) => (404, "not_found"),
            Err(e) => {
                tracing::warn!(uid = %record.uid, "ingest delete failed: {e}");
                (503, "unavailable")
            }
        };
        core.stats.ingest(result);
        return answer(stream, status, result, req.keep_alive).await;
    }
    // The stream this key is a live part of, if any: `S/init.mp4` or `S/seg-<seq>.<ext>`.
    let live = key.rsplit_once('/').and_then(|(stream, name)| {
        if name == "init.mp4" {
            Some((stream.to_string(), true))
        } else {
            segment_name_seq(name).map(|_| (stream.to_string(), false))
        }
    });
    let incoming = match &live {
        Some((stream, true)) => Some(core.shared.hub.init_incoming(stream)),
        _ => None,
    };
    let max = core.shared.config().storage.max_object_size;
    if let Framing::Length(n) = req.framing {
        if n > max {
            return fail("too_large", 413).await;
        }
    }
    if req.expect_continue && has_body && !write_all(stream, b"HTTP/1.1 100 Continue\r\n\r\n").await
    {
        return false;
    }
    let headroom = headroom_for(&key);
    let idle = core.shared.config().server.handshake_timeout;
    let body = match read_body(core, stream, req.framing, buf, headroom, max, idle).await {
        Ok(b) => b,
        Err(BodyError::TooLarge) => {
            core.stats.ingest("too_large");
            error(stream, 413, "too_large", false).await;
            linger_close(stream).await;
            return false;
        }
        Err(BodyError::Malformed) => {
            core.stats.ingest("bad_request");
            error(stream, 400, "bad_request", false).await;
            return false;
        }
        Err(BodyError::Cut) => {
            core.stats.ingest("aborted");
            tracing::debug!(uid = %record.uid, "ingest body cut off; nothing stored");
            return false;
        }
    };
    let size = body.len() - headroom;
    let mut obj = Object::new(pool::freeze(body), headroom, key.as_str().into());
    obj.content_type = req
        .content_type
        .map(Into::into)
        .or_else(|| crate::origin::fs::content_type(&key).map(Into::into));
    // The body's one buffer becomes a sealed payload file (when payload files are on), which
    // storage, the cache and every viewer then share.
    let obj = crate::origin::files::seal(obj);
    // A live segment goes to this relay's subscribers the moment its last byte is here
    // (after its stream's init segment, if that is still arriving); the answer to the
    // publisher waits for storage. If storing fails the publisher hears 503, and viewers
    // who already got the segment keep it.
    let published = live.is_some() && {
        if let Some((stream, false)) = &live {
            core.shared.hub.init_settled(stream, INIT_WAIT).await;
        }
        core.shared.hub.ingested(&obj)
    };
    drop(incoming);
    let started = Instant::now();
    let stored = origin.put(&obj).await;
    let (status, result) = match stored {
        Ok(how) => {
            core.shared.cache.replace(&obj);
            core.stats.ingest_bytes.add(size as u64);
            tracing::debug!(
                uid = %record.uid,
                size,
                published,
                store_micros = started.elapsed().as_micros() as u64,
                "ingested"
            );
            match how {
                Stored::Created => (201, "created"),
                Stored::Replaced => (204, "replaced"),
            }
        }
        Err(OriginError::TooLarge { .. }) => (413, "too_large"),
        Err(e) => {
            tracing::warn!(uid = %record.uid, "ingest store failed: {e}");
            (503, "unavailable")
        }
    };
    core.stats.ingest(result);
    answer(stream, status, result, req.keep_alive).await
}

/// The final answer once the body is read: 201/204 without a body, errors as JSON.
async fn answer(stream: &Socket, status: u16, result: &str, keep_alive: bool) -> bool {
    match status {
        201 | 204 => {
            let mut head = format!("HTTP/1.1 {status} {}\r\n", super::http::reason(status));
            if status == 201 {
                head.push_str("Content-Length: 0\r\n");
            }
            head.push_str(if keep_alive {
                "\r\n"
            } else {
                "Connection: close\r\n\r\n"
            });
            if !write_all(stream, head.as_bytes()).await {
                return false;
            }
            if !keep_alive {
                stream.shutdown_write();
            }
        }
        _ => error(stream, status, result, keep_alive).await,
    }
    keep_alive
}

/// Why a body was not read whole.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over the maximum object size.
    TooLarge,
    /// Chunked framing that does not parse.
    Malformed,
    /// The connection ended, failed or stalled before the body was complete.
    Cut,
}

/// Read the body into a buffer with `headroom` zero bytes in front. `pending` holds the
/// bytes that followed the head; on return it holds what followed the body.
async fn read_body(
    core: &Core,
    stream: &Socket,
    framing: Framing,
    pending: &mut Vec<u8>,
    headroom: usize,
    max: u64,
    idle: std::time::Duration,
) -> Result<Vec<u8>, BodyError> {
    match framing {
        Framing::None => {
            let mut body = pool::take(headroom);
            body.resize(headroom, 0);
            Ok(body)
        }
        Framing::Length(n) => {
            let total = headroom + n as usize;
            // Capacity for the whole body up front (address space only), but pages are
            // touched (zeroed, then filled) a step at a time as bytes arrive: an announced
            // size costs memory only once it is sent.
            let mut body = pool::take(total);
            body.resize(headroom, 0);
            let from_pending = pending.len().min(n as usize);
            body.extend_from_slice(&pending[..from_pending]);
            pending.drain(..from_pending);
            let mut filled = body.len();
            while filled < total {
                if filled == body.len() {
                    body.resize((filled + LENGTH_STEP).min(total), 0);
                }
                // The kernel writes straight into the object's buffer.
                match stream.recv(&mut body[filled..]) {
                    Ok(Io::Done(0)) | Err(_) => return Err(BodyError::Cut),
                    Ok(Io::Done(got)) => filled += got,
                    Ok(Io::WouldBlock) => wait_readable(stream, idle).await?,
                }
            }
            Ok(body)
        }
        Framing::Chunked => {
            let mut body = pool::take(headroom + CHUNKED_START.min(max as usize));
            body.resize(headroom, 0);
            let mut decoder = Chunked::new(max);
            let used = decoder.feed(pending, &mut body)?;
            pending.drain(..used);
            while !decoder.is_done() {
                let progressed = {
                    let mut scratch = core.scratch();
                    match stream.recv(&mut scratch[..]) {
                        Ok(Io::Done(0)) | Err(_) => return Err(BodyError::Cut),
                        Ok(Io::Done(got)) => {
                            let used = decoder.feed(&scratch[..got], &mut body)?;
                            // Bytes after the body: the next request on this connection.
                            pending.extend_from_slice(&scratch[used..got]);
                            true
                        }
                        Ok(Io::WouldBlock) => false,
                    }
                };
                if !progressed {
                    wait_readable(stream, idle).await?;
                }
            }
            Ok(body)
        }
    }
}

/// Wait for more of the body, for at most `idle`.
async fn wait_readable(stream: &Socket, idle: std::time::Duration) -> Result<(), BodyError> {
    match monoio::time::timeout(idle, stream.stream().readable(false)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(BodyError::Cut),
    }
}

/// Longest chunk-size line (with extensions) and trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a chunk-size line: hex digits so far, then extensions.
    Size {
        digits: usize,
        ext: bool,
    },
    /// CR seen at the end of the size line.
    SizeLf,
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// After a chunk's data: expecting CR, then LF.
    DataCr,
    DataLf,
    /// In the trailer section: at the start of a line (`true`) or inside one.
    Trailer {
        line_start: bool,
    },
    /// CR seen in the trailer section; `empty`: the line was empty (the end).
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// An incremental decoder of a chunked body (RFC 9112 §7.1): chunk extensions and trailer
/// fields are read and dropped; sizes are bounded by the maximum object size.
pub struct Chunked {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
    total: u64,
    max: u64,
}

impl Chunked {
    /// A decoder refusing bodies over `max` bytes.
    pub fn new(max: u64) -> Chunked {
        Chunked {
            state: State::Size {
                digits: 0,
                ext: false,
            },
            size: 0,
            line: 0,
            trailers: 0,
            total: 0,
            max,
        }
    }

    /// Whether the last chunk and the trailer section have been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode what `input` holds, appending data to `out`; returns how many bytes of
    /// `input` were used (all of them, unless the body ended inside it).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BodyError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let n = (left as usize).min(input.len() - i);
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    self.state = if left as usize == n {
                        State::DataCr
                    } else {
                        State::Data(left - n as u64)
                    };
                    continue;
                }
                State::Size { digits, ext } => {
                    self.line += 1;
                    if self.line > MAX_CHUNK_LINE {
                        return Err(BodyError::Malformed);
                    }
                    match b {
                        b'\r' if digits > 0 => self.state = State::SizeLf,
                        _ if ext => {}
                        b';' | b' ' | b'\t' if digits > 0 => {
                            self.state = State::Size { digits, ext: true }
                        }
                        _ => {
                            let d = (b as char).to_digit(16).ok_or(BodyError::Malformed)?;
                            if digits >= 15 {
                                return Err(BodyError::Malformed);
                            }
                            self.size = self.size * 16 + u64::from(d);
                            self.state = State::Size {
                                digits: digits + 1,
                                ext,
                            };
                        }
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.line = 0;
                    let size = std::mem::take(&mut self.size);
                    if size == 0 {
                        self.state = State::Trailer { line_start: true };
                    } else {
                        self.total += size;
                        if self.total > self.max {
                            return Err(BodyError::TooLarge);
                        }
                        out.reserve(size as usize);
                        self.state = State::Data(size);
                    }
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = State::Size {
                        digits: 0,
                        ext: false,
                    };
                }
                State::Trailer { line_start } => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err(BodyError::Malformed);
                    }
                    self.state = if b == b'\r' {
                        State::TrailerLf { empty: line_start }
                    } else {
                        State::Trailer { line_start: false }
                    };
                }
                State::TrailerLf { empty } => {
                    if b != b'\n' {
                        return Err(BodyError::Malformed);
                    }
                    self.state = if empty {
                        State::Done
                    } else {
                        State::Trailer { line_start: true }
                    };
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(
        body: &[u8],
        piece: usize,
        max: u64,
    ) -> Result<(Vec<u8>, usize), BodyError> {
        let mut d = Chunked::new(max);
        let mut out = Vec::new();
        let mut used = 0;
        for part in body.chunks(piece) {
            let n = d.feed(part, &mut out)?;
            used += n;
            if d.is_done() {
                return Ok((out, used));
            }
        }
        Err(BodyError::Cut)
    }

    #[test]
    fn chunked_bodies_in_any_pieces() {
        let body = b"5\r\nhello\r\n1;name=value\r\n \r\nA  \r\n0123456789\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        for piece in 1..=body.len() {
            let (out, used) = decode_in_pieces(body, piece, 1 << 20).unwrap();
            assert_eq!(out, b"hello 0123456789", "piece {piece}");
            assert_eq!(&body[used..], b"NEXT", "piece {piece}");
        }
        let (out, _) = decode_in_pieces(b"0\r\n\r\n", 3, 10).unwrap();
        assert!(out.is_empty());
    }

    #[test]
    fn chunked_errors() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXY",
            b"5\nhello\r\n",
            b"ffffffffffffffff1\r\n",
            b"-1\r\n",
        ] {
            assert_eq!(
                decode_in_pieces(bad, 1, 1 << 20),
                Err(BodyError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            decode_in_pieces(b"6\r\nhello!\r\n0\r\n\r\n", 4, 5),
            Err(BodyError::TooLarge)
        );
        assert_eq!(
            decode_in_pieces(b"3\r\nabc\r\n3\r\nabc\r\n0\r\n\r\n", 4, 5),
            Err(BodyError::TooLarge)
        );
        let long_ext = [b"1;".as_slice(), &[b'a'; 5000]].concat();
        assert_eq!(
            decode_in_pieces(&long_ext, 100, 10),
            Err(BodyError::Malformed)
        );
    }

    #[test]
    fn targets() {
        assert_eq!(
            split_target("live/cam1/seg-0000000001.m4s"),
            (None, Ok("live/cam1/seg-0000000001.m4s".into()))
        );
        assert_eq!(
            split_target("t/abc%2Dd/live/cam1/init.mp4"),
            (Some("abc-d".into()), Ok("live/cam1/init.mp4".into()))
        );
        assert_eq!(split_target("t/abc"), (Some("abc".into()), Err(())));
        assert_eq!(split_target("a%20b"), (None, Ok("a b".into())));
        assert_eq!(split_target("a%ff"), (None, Err(())));
    }
}
