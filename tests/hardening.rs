//! Clients that are gone, greedy or hostile: keepalive pings and the idle close (4402),
//! the relay-wide connection limit (503 `overloaded`), the per-connection request rate
//! (`rate_limited`, then 1008), and slowloris heads that trickle in byte by byte while a
//! normal viewer is served.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

/// A raw WebSocket client that sees every frame, control frames included.
struct Raw(TcpStream);

impl Raw {
    fn connect(addr: SocketAddr, ticket: &str) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {ticket}\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Raw(s)
    }

    /// The next frame: (opcode, payload).
    fn frame(&mut self) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        self.0.read_exact(&mut h).unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut e = [0u8; 2];
                self.0.read_exact(&mut e).unwrap();
                u16::from_be_bytes(e) as usize
            }
            n => n as usize,
        };
        let mut p = vec![0u8; len];
        self.0.read_exact(&mut p).unwrap();
        (h[0] & 0x0f, p)
    }

    fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [9u8, 8, 7, 6];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.0.write_all(&f).unwrap();
    }
}

#[test]
fn silent_connections_are_pinged_then_closed_with_4402() {
    // Pings at 0.5 s and 1 s of silence, the close at 1.5 s.
    pinged_then_closed(
        &[
            ("MEDIARELAY_PING_INTERVAL", "500ms"),
            ("MEDIARELAY_IDLE_TIMEOUT", "1500ms"),
        ],
        2,
    );
}

#[test]
fn an_idle_timeout_below_the_ping_interval_still_pings() {
    // Only the idle timeout, under the default 30 s ping interval: pings come at half of it.
    pinged_then_closed(&[("MEDIARELAY_IDLE_TIMEOUT", "1500ms")], 1);
}

/// A silent connection gets at least `min_pings` pings, then 4402; one that answers pings
/// stays.
fn pinged_then_closed(env: &[(&str, &str)], min_pings: u32) {
    let r = Relay::start(env);
    let t = r.issue("*", &[]);
    let start = Instant::now();
    let mut silent = Raw::connect(r.addr, &t);
    // The other one answers every ping with a pong: still open after twice the timeout.
    let mut alive = Raw::connect(r.addr, &t);
    let answering = std::thread::spawn(move || {
        while start.elapsed() < Duration::from_secs(3) {
            let (op, payload) = alive.frame();
            assert_eq!(op, 0x9, "only pings before anything else");
            alive.send(0xA, &payload);
        }
        alive.send(0x1, br#"{"op":"unsubscribe","id":1,"stream":"s"}"#);
        loop {
            match alive.frame() {
                (0x9, p) => alive.send(0xA, &p),
                (op, text) => {
                    assert_eq!(op, 0x1);
                    assert!(String::from_utf8_lossy(&text).contains("unsubscribed"));
                    break;
                }
            }
        }
    });
    // The silent one: a ping after the ping interval, then `closing` and 4402.
    assert_eq!(silent.frame().0, 0x9);
    assert!(
        start.elapsed() >= Duration::from_millis(450),
        "{:?}",
        start.elapsed()
    );
    // A ping every ping interval of silence, then `closing` and 4402.
    let (mut op, mut text) = silent.frame();
    let mut pings = 1;
    while op == 0x9 {
        pings += 1;
        (op, text) = silent.frame();
    }
    assert!(pings >= min_pings, "{pings} pings");
    assert_eq!(op, 0x1);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&text).unwrap(),
        json!({"op":"closing","reason":"idle_timeout"})
    );
    let (op, close) = silent.frame();
    assert_eq!((op, u16::from_be_bytes([close[0], close[1]])), (0x8, 4402));
    assert!(
        start.elapsed() >= Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
    answering.join().unwrap();
    assert!(r.metric("mediarelay_pings_total", "") >= 2.0);
    assert_eq!(r.metric("mediarelay_closes_total", "code=\"4402\""), 1.0);
}

#[test]
fn the_relay_wide_connection_limit_answers_503() {
    let r = Relay::start(&[("MEDIARELAY_MAX_CONNECTIONS", "2")]);
    let t = r.issue("*", &[]);
    let a = r.ws(&t);
    let _b = r.ws(&t);
    let mut s = TcpStream::connect(r.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {t}\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert!(out.contains("Retry-After: 1"), "{out}");
    assert!(out.ends_with(r#"{"error":"overloaded"}"#), "{out}");
    assert_eq!(r.metric("mediarelay_max_connections", ""), 2.0);
    assert_eq!(r.metric("mediarelay_upgrades_total", "overloaded"), 1.0);
    a.close();
    wait_for("a free slot", Duration::from_secs(5), || {
        Client::try_connect(r.addr, Some(&t)).is_ok()
    });
}

#[test]
fn request_floods_get_rate_limited_then_1008() {
    let r = Relay::start(&[("MEDIARELAY_MAX_REQUESTS_PER_SEC", "5")]);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    for id in 0..8 {
        c.send(json!({"op":"unsubscribe","id":id,"stream":"s"}));
    }
    let replies: Vec<_> = (0..8).map(|_| c.json()).collect();
    let limited = replies
        .iter()
        .filter(|v| v["code"] == "rate_limited")
        .count();
    assert!((3..=8).contains(&limited), "{replies:?}");
    assert_eq!(replies[0]["op"], "unsubscribed");
    // Keeping at it: closed with 1008.
    for id in 0..30 {
        c.send(json!({"op":"unsubscribe","id":id,"stream":"s"}));
    }
    let (code, _) = c.close_code();
    assert_eq!(code, Some(1008));
}

#[test]
fn slowloris_heads_do_not_delay_viewers() {
    let r = Relay::start(&[("MEDIARELAY_HANDSHAKE_TIMEOUT", "2s")]);
    r.put("vod/a.bin", &[5u8; 1000]);
    let t = r.issue("*", &[]);
    const N: usize = 2_000;
    let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Slow: aaaaaaaaaaaa";
    let mut slow: Vec<TcpStream> = (0..N)
        .map(|_| {
            let s = TcpStream::connect(r.addr).unwrap();
            s.set_nodelay(true).unwrap();
            s
        })
        .collect();
    let mut viewer = r.ws(&t);
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut i = 0;
    // Trickle one byte per connection per round while the viewer asks for an object.
    while start.elapsed() < Duration::from_millis(1500) {
        let b = head[i % head.len()];
        for s in &mut slow {
            let _ = s.write_all(&[b]);
        }
        i += 1;
        let asked = Instant::now();
        viewer.send(json!({"op":"get","id":i,"key":"vod/a.bin"}));
        assert_eq!(viewer.media().1.len(), 1000);
        worst = worst.max(asked.elapsed());
        // The trickle's pace: a byte per connection every 20 ms (and the viewer's gets stay
        // under the request rate limit).
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "{N} trickling heads: worst get round trip {} ms",
        worst.as_millis()
    );
    assert!(worst < Duration::from_millis(500), "{worst:?}");
    // The handshake timeout closes every trickling connection.
    wait_for(
        "the trickling connections to be closed",
        Duration::from_secs(5),
        || {
            slow.iter_mut().all(|s| {
                s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
                let mut b = [0u8; 4096];
                match s.read(&mut b) {
                    Ok(0) => true,
                    Ok(n) => panic!("answered: {}", String::from_utf8_lossy(&b[..n])),
                    Err(e) => !matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ),
                }
            })
        },
    );
}
