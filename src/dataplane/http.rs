//! The HTTP/1.1 front end of both listeners: reading a request head (bounded size and
//! time), routing (`/ws`, `/healthz`, `/readyz`, `/metrics`, the player page `/player`
//! built into the binary, and `/ingest/...` to [`super::ingest`]), the ticket check before the upgrade, and plain responses. Parsing is httparse; responses are small and written
//! directly.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::socket::{HandshakeFailure, Socket};
use super::tls::{version_label as tls_version_label, TlsConn};

use super::core::Core;
use super::head::{check_headers, check_lines, check_lines_from, origin_form, Framing, MAX_HEAD};
use super::ingest;
use super::session::{self, Context};
use super::Mode;
use crate::sys::Io;
use crate::tickets::Refusal;
use crate::ws::handshake::{self, HandshakeError};

/// Which listener a connection came in on.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Public,
    /// The public listener with TLS.
    PublicTls,
    Admin,
}

enum HeadRead {
    /// A complete head of this many bytes is at the start of the buffer.
    Complete(usize),
    TooLarge,
    Malformed,
    Closed,
}

/// Serve one accepted TCP connection.
pub async fn serve(core: Rc<Core>, stream: TcpStream, peer: SocketAddr, which: Listener) {
    let _ = stream.set_nodelay(true);
    let timeout = core.shared.config().server.handshake_timeout;
    let stream = match (which, &core.shared.tls) {
        (Listener::PublicTls, Some(tls)) => {
            let conn = match TlsConn::new(tls.config()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("TLS connection: {e}");
                    return;
                }
            };
            let sock = Socket::tls(stream, conn);
            // Boxed, like ingest: only TLS connections pay for its room.
            match Box::pin(sock.handshake(Instant::now() + timeout)).await {
                Ok(()) => {
                    core.stats
                        .tls_handshake(Ok(tls_version_label(sock.tls_version())));
                    sock
                }
                Err(HandshakeFailure::Timeout) => {
                    core.stats.tls_handshake(Err("timeout"));
                    return;
                }
                Err(HandshakeFailure::Failed(why)) => {
                    core.stats.tls_handshake(Err("failed"));
                    tracing::debug!(%peer, "TLS handshake failed: {why}");
                    return;
                }
            }
        }
        _ => Socket::plain(stream),
    };
    let which = match which {
        Listener::PublicTls => Listener::Public,
        w => w,
    };
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let deadline = Instant::now() + timeout;
        let head =
            match monoio::time::timeout_at(deadline.into(), read_head(&core, &stream, &mut buf))
                .await
            {
                Ok(h) => h,
                Err(_) => return, // no complete head in time: close
            };
        let len = match head {
            HeadRead::Complete(n) if n > MAX_HEAD => {
                error(&stream, 431, "request_header_fields_too_large", false).await;
                return;
            }
            HeadRead::Complete(n) => n,
            HeadRead::TooLarge => {
                error(&stream, 431, "request_header_fields_too_large", false).await;
                return;
            }
            HeadRead::Malformed => {
                error(&stream, 400, "bad_request", false).await;
                return;
            }
            HeadRead::Closed => return,
        };
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let framing = if check_lines(&buf[..len]).is_ok() && req.parse(&buf[..len]).is_ok() {
            check_headers(req.headers, req.version.unwrap_or(1)).ok()
        } else {
            None
        };
        let Some(framing) = framing else {
            // Malformed, or framed so that a proxy in front could read it differently.
            error(&stream, 400, "bad_request", false).await;
            return;
        };
        let method = req.method.unwrap_or("");
        let target = origin_form(req.path.unwrap_or(""));
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let keep_alive = req.version == Some(1)
            && !header(req.headers, "connection").is_some_and(|v| has_token(v, "close"));
        let route = match (which, path) {
            (_, "/healthz") => Route::Health,
            (_, "/readyz") => Route::Ready,
            (Listener::Admin, "/metrics") => Route::Metrics,
            (Listener::Public, "/ws") => Route::Ws,
            // The conformance server upgrades on any path.
            (Listener::Public, _) if core.shared.mode == Mode::Echo => Route::Ws,
            (Listener::Public, p) => {
                player_asset(p).map_or(Route::NotFound, |(ctype, body)| Route::Player(ctype, body))
            }
            _ => Route::NotFound,
        };
        if which == Listener::Public && path.starts_with("/ingest/") && route == Route::NotFound {
            if method != "PUT" && method != "DELETE" {
                method_not_allowed(&stream, "PUT, DELETE", false).await;
                return;
            }
            let rest = &path["/ingest/".len()..];
            let request = ingest::Request::from_head(
                method == "PUT",
                rest,
                query,
                req.headers,
                framing,
                keep_alive,
            );
            // Boxed: the ingest state machine is large, and every connection's handshake
            // task would otherwise carry its room.
            if !Box::pin(ingest::serve(&core, &stream, peer, request, &mut buf, len)).await {
                return;
            }
            continue;
        }
        let allowed = method == "GET" || (method == "HEAD" && route != Route::Ws);
        if framing != Framing::None {
            // Only ingest takes a body: answer what the path and method get anyway (400 for
            // a body where the request is otherwise good), then close; the body is read and
            // dropped first, so the client reads the answer, not a reset.
            match route {
                Route::NotFound => error(&stream, 404, "not_found", false).await,
                _ if !allowed => method_not_allowed(&stream, "GET", false).await,
                _ => error(&stream, 400, "bad_request", false).await,
            }
            linger_close(&stream).await;
            return;
        }
        if route != Route::NotFound && !allowed {
            method_not_allowed(&stream, "GET", keep_alive).await;
            if !keep_alive {
                return;
            }
            buf.drain(..len);
            continue;
        }
        let head_only = method == "HEAD";
        match route {
            Route::Health => {
                respond_maybe(&stream, 200, "text/plain", b"ok", keep_alive, head_only).await;
            }
            Route::Ready => {
                let age = core.shared.gate.tickets.age().map(|d| d.as_secs_f64());
                let (status, body) = match core.shared.readiness() {
                    Ok(()) => (
                        200,
                        serde_json::to_vec(&serde_json::json!({
                            "status": "ready",
                            "ticket_snapshot_age_seconds": age,
                        }))
                        .unwrap_or_default(),
                    ),
                    Err(reason) => (
                        503,
                        serde_json::to_vec(
                            &serde_json::json!({"status":"not_ready","reason":reason.to_string()}),
                        )
                        .unwrap_or_default(),
                    ),
                };
                respond_maybe(
                    &stream,
                    status,
                    "application/json",
                    &body,
                    keep_alive,
                    head_only,
                )
                .await;
            }
            Route::Metrics => {
                let body = core.shared.metrics.render(&core.shared.figures());
                respond_maybe(
                    &stream,
                    200,
                    "text/plain; version=0.0.4; charset=utf-8",
                    body.as_bytes(),
                    keep_alive,
                    head_only,
                )
                .await;
            }
            Route::Player(ctype, body) => {
                if head_only {
                    let head = response_head(200, ctype, body.len(), PLAYER_HEADERS, keep_alive);
                    write_all(&stream, head.as_bytes()).await;
                } else {
                    respond(&stream, 200, ctype, body, PLAYER_HEADERS, keep_alive).await;
                }
            }
            Route::NotFound => error(&stream, 404, "not_found", keep_alive).await,
            Route::Ws => {
                let pending = buf[len..].to_vec();
                upgrade(core, stream, peer, req.headers, query, pending).await;
                return;
            }
        }
        if !keep_alive {
            return;
        }
        buf.drain(..len);
    }
}

#[derive(PartialEq, Eq)]
enum Route {
    Health,
    Ready,
    Metrics,
    Ws,
    /// A player file: its content type and bytes.
    Player(&'static str, &'static [u8]),
    NotFound,
}

/// The player page and its modules (built into the binary from `clients/`), by path:
/// content type and bytes.
fn player_asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    const PAGE: &[u8] = include_bytes!("../../clients/player/index.html");
    const PLAYER: &[u8] = include_bytes!("../../clients/player/player.js");
    const CLIENT: &[u8] = include_bytes!("../../clients/js/mediarelay.js");
    match path {
        "/player" | "/player/" | "/player/index.html" => Some(("text/html; charset=utf-8", PAGE)),
        "/player/player.js" => Some(("text/javascript; charset=utf-8", PLAYER)),
        "/player/mediarelay.js" => Some(("text/javascript; charset=utf-8", CLIENT)),
        _ => None,
    }
}

/// What the player's responses allow the browser: its own scripts, WebSockets to any relay
/// (`?relay=`), media from MediaSource blobs, and its inline style sheet.
const PLAYER_HEADERS: &[(&str, &str)] = &[
    (
        "Content-Security-Policy",
        "default-src 'self'; connect-src 'self' ws: wss:; media-src 'self' blob:; style-src 'self' 'unsafe-inline'; img-src 'self' data:",
    ),
    ("X-Content-Type-Options", "nosniff"),
];

pub(super) fn header<'a>(headers: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The ticket from `Authorization: Bearer` or `?ticket=` (percent-decoded), borrowed from
/// the request where possible.
pub fn find_ticket<'a>(
    headers: &'a [httparse::Header<'a>],
    query: &'a str,
) -> Option<Cow<'a, str>> {
    if let Some(v) = header(headers, "authorization") {
        let v = std::str::from_utf8(v).ok()?.trim();
        // Compared as bytes: slicing the text at 7 could split a multi-byte character of a
        // value that is not a bearer token (found by fuzzing: a panic on such a header).
        if v.len() > 7 && v.as_bytes()[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(Cow::Borrowed(v[7..].trim()));
        }
    }
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == "ticket").then(|| percent_encoding::percent_decode_str(v).decode_utf8_lossy())
    })
}

async fn upgrade(
    core: Rc<Core>,
    stream: Socket,
    peer: SocketAddr,
    headers: &[httparse::Header<'_>],
    query: &str,
    pending: Vec<u8>,
) {
    let gate = &core.shared.gate;
    let refuse = |r: Refusal| {
        let (status, code) = r.status_and_code();
        core.stats.upgrade(code);
        error(&stream, status, code, false)
    };
    // At its limit the relay refuses before any ticket or WebSocket work.
    if !core.shared.admit_connection() {
        refuse(Refusal::Overloaded).await;
        return;
    }
    // The slot is given back however the upgrade ends.
    let slot = ConnectionSlot(core.shared.clone());
    let checked = if core.shared.mode == Mode::Echo {
        Ok(([0u8; 32], echo_record()))
    } else {
        let ticket = find_ticket(headers, query);
        let wait = core.shared.config().tickets.lookup_timeout;
        gate.check(peer.ip(), ticket.as_deref(), wait).await
    };
    let (id, record) = match checked {
        Ok(ok) => ok,
        Err(r) => {
            refuse(r).await;
            return;
        }
    };
    let accept = match handshake::accept(headers) {
        Ok(a) => a,
        Err(e) => {
            core.stats.upgrade("bad_handshake");
            match e {
                HandshakeError::UnsupportedVersion => {
                    respond(
                        &stream,
                        426,
                        "application/json",
                        br#"{"error":"unsupported_websocket_version"}"#,
                        &[("Sec-WebSocket-Version", "13")],
                        false,
                    )
                    .await;
                }
                HandshakeError::BadRequest(why) => {
                    let body = serde_json::to_vec(
                        &serde_json::json!({"error":"bad_request","message":why}),
                    )
                    .unwrap_or_default();
                    respond(&stream, 400, "application/json", &body, &[], false).await;
                }
            }
            return;
        }
    };
    if let Err(r) = gate.acquire(&id, &record) {
        refuse(r).await;
        return;
    }
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if !write_all(&stream, head.as_bytes()).await {
        gate.release(&id);
        return;
    }
    core.stats.upgrade("ok");
    let conn = core.admit(id, record);
    tracing::debug!(conn = conn.id, uid = %conn.ticket.borrow().uid, %peer, "connected");
    // The connection lives on in tasks of its own, so everything the handshake used (this
    // future's buffers and header arrays) is freed now; while it is idle it is only a
    // parked readiness wait (see `session::start`).
    let held = Held {
        slot,
        conn: conn.clone(),
    };
    session::start(core, conn, stream, pending, held);
}

/// What a connection holds for as long as it lives: its relay-wide slot and its ticket's
/// connection count, both given back when it ends.
struct Held {
    slot: ConnectionSlot,
    conn: Rc<session::Conn>,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The ticket it holds now (a refresh may have replaced the first one).
        self.slot.0.gate.release(&self.conn.ticket_id.get());
        tracing::debug!(conn = self.conn.id, "disconnected");
    }
}

/// The stand-in ticket of echo-mode connections (no tickets there).
fn echo_record() -> std::sync::Arc<crate::tickets::TicketRecord> {
    let far = std::time::SystemTime::now() + std::time::Duration::from_secs(100 * 365 * 86_400);
    std::sync::Arc::new(crate::tickets::TicketRecord {
        uid: "echo".into(),
        streams: Vec::new(),
        expires_at: far,
        revoked: false,
        max_connections: None,
        publish: Vec::new(),
        updated_at: std::time::SystemTime::now(),
    })
}

/// A relay-wide connection slot, given back when dropped.
struct ConnectionSlot(std::sync::Arc<super::shared::Shared>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.release_connection();
    }
}

/// Read until a complete request head is buffered.
async fn read_head(core: &Core, stream: &Socket, buf: &mut Vec<u8>) -> HeadRead {
    // Work per call stays linear in the head's size however it is split into packets: the
    // end marker is searched only in new bytes, the partial parse runs every 512 bytes.
    let mut scanned = 0usize;
    let mut judged: Option<usize> = None;
    loop {
        let from = scanned.saturating_sub(3);
        let end = head_end(&buf[from..]).map(|n| from + n);
        // Line ends are checked in the new bytes of the head only (and the byte before,
        // for its CR): what follows the head may be WebSocket frames.
        if check_lines_from(&buf[..end.unwrap_or(buf.len())], scanned).is_err() {
            return HeadRead::Malformed;
        }
        if let Some(n) = end {
            return HeadRead::Complete(n);
        }
        scanned = buf.len();
        if buf.len() > MAX_HEAD {
            return HeadRead::TooLarge;
        }
        // Reject garbage early rather than wait for 16 KiB of it.
        if !buf.is_empty() && judged.is_none_or(|at| buf.len() >= at + 512) {
            judged = Some(buf.len());
            if let Some(verdict) = early_verdict(buf) {
                return verdict;
            }
        }
        let got = {
            let mut scratch = core.scratch();
            let room = (MAX_HEAD + 1 - buf.len()).min(scratch.len());
            match stream.recv(&mut scratch[..room]) {
                Ok(Io::Done(n)) if n > 0 => {
                    buf.extend_from_slice(&scratch[..n]);
                    Ok(())
                }
                Ok(Io::Done(_)) | Err(_) => Err(()),
                Ok(Io::WouldBlock) => Ok(()),
            }
        };
        match got {
            Err(()) => return HeadRead::Closed,
            Ok(()) if buf.len() > scanned => continue,
            Ok(()) => {
                if stream.stream().readable(false).await.is_err() {
                    return HeadRead::Closed;
                }
            }
        }
    }
}

/// A partial head that can already be judged: malformed, or too many headers.
fn early_verdict(buf: &[u8]) -> Option<HeadRead> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    match httparse::Request::new(&mut headers).parse(buf) {
        Ok(_) => None,
        Err(httparse::Error::TooManyHeaders) => Some(HeadRead::TooLarge),
        Err(_) => Some(HeadRead::Malformed),
    }
}

fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Write all of `data` (small responses), waiting for room when needed.
pub(super) async fn write_all(stream: &Socket, mut data: &[u8]) -> bool {
    loop {
        let step = if data.is_empty() {
            // Everything taken: with TLS, wait until the encrypted bytes are out too.
            match stream.flush() {
                Ok(true) => {
                    // A whole answer is out: TLS gives its write buffer back.
                    stream.quiet();
                    return true;
                }
                Ok(false) => Ok(Io::WouldBlock),
                Err(e) => Err(e),
            }
        } else {
            stream.writev(&[data], false)
        };
        match step {
            Ok(Io::Done(n)) => data = &data[n..],
            Ok(Io::WouldBlock) => {
                if stream.stream().writable(false).await.is_err() {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

pub(super) fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        403 => "Forbidden",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

async fn respond_maybe(
    stream: &Socket,
    status: u16,
    ctype: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) {
    if head_only {
        let head = response_head(status, ctype, body.len(), &[], keep_alive);
        write_all(stream, head.as_bytes()).await;
    } else {
        respond(stream, status, ctype, body, &[], keep_alive).await;
    }
}

fn response_head(
    status: u16,
    ctype: &str,
    len: usize,
    extra: &[(&str, &str)],
    keep_alive: bool,
) -> String {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {ctype}\r\nContent-Length: {len}\r\nCache-Control: no-store\r\n",
        reason(status)
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(if keep_alive {
        "\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    head
}

/// A JSON error response `{"error": code}`. A 503 tells the client to come back
/// (`Retry-After: 1`): overloaded, storage or tickets unavailable.
pub(super) async fn error(stream: &Socket, status: u16, code: &str, keep_alive: bool) {
    let body = format!("{{\"error\":\"{code}\"}}");
    let retry: &[(&str, &str)] = if status == 503 {
        &[("Retry-After", "1")]
    } else {
        &[]
    };
    respond(
        stream,
        status,
        "application/json",
        body.as_bytes(),
        retry,
        keep_alive,
    )
    .await;
}

/// 405 with the methods the path takes.
async fn method_not_allowed(stream: &Socket, allow: &str, keep_alive: bool) {
    respond(
        stream,
        405,
        "application/json",
        br#"{"error":"method_not_allowed"}"#,
        &[("Allow", allow)],
        keep_alive,
    )
    .await;
}

/// Write a complete response.
pub(super) async fn respond(
    stream: &Socket,
    status: u16,
    ctype: &str,
    body: &[u8],
    extra: &[(&str, &str)],
    keep_alive: bool,
) {
    let mut out = response_head(status, ctype, body.len(), extra, keep_alive).into_bytes();
    out.extend_from_slice(body);
    write_all(stream, &out).await;
    if !keep_alive {
        stream.shutdown_write();
    }
}

/// After an error answer to a request whose body is still arriving: read and drop what
/// comes for a moment (at most 2 s and 1 MiB) before closing, so the client reads the answer
/// instead of a reset.
pub(super) async fn linger_close(stream: &Socket) {
    let until = Instant::now() + std::time::Duration::from_secs(2);
    let mut left = 1usize << 20;
    let mut sink = [0u8; 8192];
    while left > 0 {
        match stream.recv(&mut sink) {
            Ok(Io::Done(0)) | Err(_) => return,
            Ok(Io::Done(n)) => left = left.saturating_sub(n),
            Ok(Io::WouldBlock) => {
                let wait = until.saturating_duration_since(Instant::now());
                match monoio::time::timeout(wait, stream.stream().readable(false)).await {
                    Ok(Ok(())) => {}
                    _ => return,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_from_header_or_query() {
        let h = [httparse::Header {
            name: "Authorization",
            value: b"Bearer abc-_",
        }];
        assert_eq!(find_ticket(&h, "").as_deref(), Some("abc-_"));
        assert_eq!(find_ticket(&[], "x=1&ticket=q%2Dz").as_deref(), Some("q-z"));
        assert_eq!(find_ticket(&[], "x=1"), None);
        let basic = [httparse::Header {
            name: "authorization",
            value: b"Basic xyz",
        }];
        assert_eq!(find_ticket(&basic, ""), None);
        // Not a bearer value, with a multi-byte character across byte 7: no panic.
        let odd = [httparse::Header {
            name: "Authorization",
            value: &[0, 0, 0, b'k', 0xcf, 0x86, 0xd3, 0x95],
        }];
        assert_eq!(find_ticket(&odd, "x=1"), None);
        let fuzzed = [httparse::Header {
            name: "Authorization",
            value: &[9, 0, 0, 0, 107, 207, 134, 211, 149],
        }];
        assert_eq!(find_ticket(&fuzzed, "er X11"), None);
    }

    #[test]
    fn head_boundaries() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
