//! The HTTP front end of both listeners: health, readiness, metrics, errors, limits.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::*;

#[test]
fn health_ready_metrics_and_errors() {
    let r = Relay::start(&[]);
    for addr in [r.addr, r.admin] {
        assert_eq!(http_get(addr, "/healthz").unwrap(), (200, "ok".to_string()));
        let (s, body) = http_get(addr, "/readyz").unwrap();
        assert_eq!(s, 200);
        assert!(body.contains("ready"));
    }
    let (s, body) = http_get(r.admin, "/metrics").unwrap();
    assert_eq!(s, 200);
    assert!(body.contains("mediarelay_connections{worker=\"0\"}"));
    assert!(body.contains("mediarelay_io_driver_info"));
    // /metrics is on the admin listener only.
    let (s, body) = http_get(r.addr, "/metrics").unwrap();
    assert_eq!(s, 404);
    assert_eq!(body, r#"{"error":"not_found"}"#);
    let (s, _) = http_get(r.addr, "/nope").unwrap();
    assert_eq!(s, 404);
    let (s, body) = raw_http(
        r.addr,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!(s, 405);
    assert!(body.contains("method_not_allowed"));
    let (s, _) = raw_http(r.addr, b"DELETE /ws HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(s, 405);
    // With a body (only ingest takes one) the path and method still decide: 404, 405, and
    // 400 only for a body on a request that is otherwise good.
    for (req, status, code) in [
        (
            &b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"[..],
            404,
            "not_found",
        ),
        (
            b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            405,
            "method_not_allowed",
        ),
        (
            b"PUT /readyz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            405,
            "method_not_allowed",
        ),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
            400,
            "bad_request",
        ),
    ] {
        let started = Instant::now();
        let (s, body) = raw_http(r.addr, req).unwrap();
        assert_eq!(
            (s, body),
            (status, format!("{{\"error\":\"{code}\"}}")),
            "{}",
            String::from_utf8_lossy(req)
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let (s, body) = raw_http(r.addr, b"\x16\x03\x01garbage\r\n\r\n").unwrap();
    assert_eq!(s, 400);
    assert!(body.contains("bad_request"));
    let (s, _) = raw_http(r.addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").unwrap();
    assert_eq!(s, 400);
}

#[test]
fn keep_alive_serves_several_requests() {
    let r = Relay::start(&[]);
    let mut s = TcpStream::connect(r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 2, "{out}");
}

#[test]
fn oversized_head_gets_431() {
    let r = Relay::start(&[]);
    let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..400 {
        req.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(40)).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    let (s, _) = raw_http(r.addr, &req).unwrap();
    assert_eq!(s, 431);
}

#[test]
fn silent_client_is_dropped_after_the_handshake_timeout() {
    let r = Relay::start(&[("MEDIARELAY_HANDSHAKE_TIMEOUT", "1s")]);
    let mut s = TcpStream::connect(r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    s.write_all(b"GET /heal").unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the relay to close");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
}

#[test]
fn bad_config_is_one_line_and_exit_2() {
    let out = cli(&["serve", "--driver", "fast"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.driver") && err.trim().lines().count() == 1,
        "{err}"
    );
    let out = cli(&["serve", "--workers", "many"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("server.workers"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let out = std::process::Command::new(BIN)
        .args(["serve"])
        .env("MEDIARELAY_POLL_INTERVAL", "often")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("poll_interval"));
}

#[test]
fn the_driver_in_use_is_reported() {
    let r = Relay::start(&[("MEDIARELAY_DRIVER", "epoll")]);
    let (_, body) = http_get(r.admin, "/metrics").unwrap();
    assert!(
        body.contains("mediarelay_io_driver_info{worker=\"0\",driver=\"epoll\"} 1"),
        "{body}"
    );
    assert!(r.log_text().contains("io driver: epoll"));
    if std::env::var_os("MEDIARELAY_DRIVER").is_none() {
        let r = Relay::start(&[("MEDIARELAY_DRIVER", "auto")]);
        let (_, body) = http_get(r.admin, "/metrics").unwrap();
        // This machine has io_uring; where it does not, auto falls back to epoll.
        assert!(body.contains("driver=\"io_uring\"") || body.contains("driver=\"epoll\""));
    }
}

/// A head of exactly `len` bytes asking for `/healthz` (one filler header sized to fit).
fn head_of(len: usize) -> Vec<u8> {
    let start = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Fill: ";
    let end = b"\r\n\r\n";
    let mut req = start.to_vec();
    req.resize(len - end.len(), b'a');
    req.extend_from_slice(end);
    assert_eq!(req.len(), len);
    req
}

#[test]
fn the_16_kib_head_bound_is_exact() {
    let r = Relay::start(&[]);
    assert_eq!(raw_http(r.addr, &head_of(16 * 1024)).unwrap().0, 200);
    assert_eq!(raw_http(r.addr, &head_of(16 * 1024 + 1)).unwrap().0, 431);
}

#[test]
fn heads_a_proxy_could_read_differently_are_refused() {
    let r = Relay::start(&[]);
    let bad: [&[u8]; 6] = [
        // Content-Length: 0 then 30: the second request would hide in a "body".
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nContent-Length: 30\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
        b"GET /healthz HTTP/1.1\nHost: x\n\n",
    ];
    for req in bad {
        let started = Instant::now();
        let (status, body) = raw_http(r.addr, req).unwrap();
        assert_eq!(
            (status, body.as_str()),
            (400, r#"{"error":"bad_request"}"#),
            "{}",
            String::from_utf8_lossy(req)
        );
        // Answered at once, not after the handshake timeout.
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // HTTP/1.0 without Host is fine; absolute-form targets are read as their path.
    assert_eq!(
        raw_http(r.addr, b"GET /healthz HTTP/1.0\r\n\r\n")
            .unwrap()
            .0,
        200
    );
    let absolute = format!(
        "GET http://{}/healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        r.addr, r.addr
    );
    assert_eq!(
        raw_http(r.addr, absolute.as_bytes()).unwrap(),
        (200, "ok".into())
    );
}

#[test]
fn log_lines_in_a_file_carry_no_colour_codes() {
    let r = Relay::start(&[]);
    let _ = r.issue("*", &[]);
    let log = r.log_text();
    assert!(log.contains("mediarelay serving"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI codes in the log file:\n{log}"
    );
}

#[test]
fn a_head_split_after_a_line_end_is_read_whole() {
    let r = Relay::start(&[]);
    let mut s = TcpStream::connect(r.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Piece by piece, each ending in CRLF, as a client writing one header at a time does.
    for piece in [
        &b"GET /healthz HTTP/1.1\r\n"[..],
        b"Host: x\r\n",
        b"Connection: close\r\n",
        b"\r\n",
    ] {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(30)); // separate packets
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

#[test]
fn an_offered_extension_is_answered_without_one() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &[]);
    let mut s = TcpStream::connect(r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nAuthorization: Bearer {t}\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-extensions"), "{head}");
}

#[test]
fn a_non_ascii_authorization_value_is_refused_not_fatal() {
    let r = Relay::start(&[]);
    // A multi-byte character across byte 7 of the value (found by fuzzing: it used to
    // panic the worker).
    let mut req = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: ".to_vec();
    req.extend_from_slice(&[b'a', b'b', b'c', b'k', 0xcf, 0x86, 0xd3, 0x95]);
    req.extend_from_slice(b"\r\n\r\n");
    let (status, body) = raw_http(r.addr, &req).unwrap();
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"ticket_missing"}"#)
    );
    assert_eq!(http_get(r.admin, "/healthz").unwrap(), (200, "ok".into()));
    let t = r.issue("*", &[]);
    let _ok = r.ws(&t);
}

#[test]
fn the_player_page_and_its_modules_are_built_in() {
    let r = Relay::start(&[]);
    let get = |path: &str| {
        raw_http(
            r.addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap()
    };
    for path in ["/player", "/player/", "/player?ticket=a&stream=live/demo"] {
        let (status, body) = get(path);
        assert_eq!(status, 200, "{path}");
        assert!(body.contains("<video"), "{path}: {body}");
    }
    let (status, body) = get("/player/player.js");
    assert_eq!(status, 200);
    assert!(body.contains("from './mediarelay.js'"));
    let (status, body) = get("/player/mediarelay.js");
    assert_eq!(status, 200);
    assert_eq!(
        body.as_bytes(),
        &std::fs::read("clients/js/mediarelay.js").unwrap()[..],
        "the client module as it is in clients/js"
    );
    let mut s = std::net::TcpStream::connect(r.addr).unwrap();
    s.write_all(b"GET /player/player.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut head = String::new();
    s.read_to_string(&mut head).unwrap();
    assert!(head.contains("Content-Type: text/javascript"), "{head}");
    assert!(
        head.contains("Content-Security-Policy: default-src 'self'"),
        "{head}"
    );
    assert_eq!(get("/player/nothing.js").0, 404);
    assert_eq!(
        http_get(r.admin, "/player").unwrap().0,
        404,
        "public listener only"
    );
}
