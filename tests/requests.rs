//! Requests on an open connection: get, errors that keep the connection usable, and the
//! close codes for bad frames.

mod support;

use serde_json::json;
use support::*;

/// The next message is an `error` answering request `id` with `code`.
fn expect_error(c: &mut Client, id: u32, code: &str) {
    let v = c.json();
    assert_eq!(v["op"], "error", "{v}");
    assert_eq!(v["id"], id, "{v}");
    assert_eq!(v["code"], code, "{v}");
    assert!(v["message"].is_string());
}

#[test]
fn get_hit_miss_forbidden_and_bad_keys() {
    let r = Relay::start(&[("MEDIARELAY_MAX_OBJECT_SIZE", "1MiB")]);
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    r.put("vod/movie/seg-0000000001.m4s", &payload);
    r.put("vod/a b+%ü.bin", b"odd");
    r.put("vod/big.bin", &vec![0u8; (1 << 20) + 1]);
    r.put("secret/x", b"no");
    let t = r.issue("vod/*", &[]);
    let mut c = r.ws(&t);
    for id in [1, 2] {
        c.send(json!({"op":"get","id":id,"key":"vod/movie/seg-0000000001.m4s"}));
        let (meta, body) = c.media();
        assert_eq!(meta["id"], id);
        assert_eq!(meta["key"], "vod/movie/seg-0000000001.m4s");
        assert_eq!(meta["size"], 100_000);
        assert_eq!(body, payload);
    }
    c.send(json!({"op":"get","id":3,"key":"vod/a b+%ü.bin"}));
    assert_eq!(c.media().1, b"odd");
    c.send(json!({"op":"get","id":4,"key":"vod/missing"}));
    expect_error(&mut c, 4, "not_found");
    c.send(json!({"op":"get","id":5,"key":"secret/x"}));
    expect_error(&mut c, 5, "forbidden");
    c.send(json!({"op":"get","id":6,"key":"vod/big.bin"}));
    expect_error(&mut c, 6, "too_large");
    for (id, key) in [
        (7, "vod/../secret/x"),
        (8, "/vod/a"),
        (9, "vod\\a"),
        (10, "vod/a\u{1}b"),
        (11, "vod//a"),
        (12, ""),
        // One object has one spelling: `.` segments would bypass the cache.
        (14, "vod/./movie/seg-0000000001.m4s"),
        (15, "./vod/movie/seg-0000000001.m4s"),
    ] {
        c.send(json!({"op":"get","id":id,"key":key}));
        expect_error(&mut c, id, "bad_request");
    }
    // Still usable after all that.
    c.send(json!({"op":"get","id":13,"key":"vod/movie/seg-0000000001.m4s"}));
    assert_eq!(c.media().0["id"], 13);
    let origin = r.metric("mediarelay_origin_requests_total", "");
    eprintln!("origin reads: {origin}");
    assert_eq!(origin, 4.0);
}

/// PROTOCOL.md: a client that asks for more than its queue allows waits, and its other
/// requests wait behind it.
#[test]
fn requests_wait_behind_gets_that_wait_for_room() {
    let r = Relay::start(&[("MEDIARELAY_SEND_QUEUE", "4096")]);
    let object: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 249) as u8).collect();
    r.put("vod/big", &object);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    // More MiB than both sockets hold while the client reads nothing (and under the 64
    // gets that may wait).
    let n = (socket_buffers_mib() + 10).min(60);
    for id in 1..=n {
        c.send(json!({"op":"get","id":id,"key":"vod/big"}));
    }
    c.send(json!({"op":"unsubscribe","id":n + 1,"stream":"live/a"}));
    c.send(json!({"op":"get","id":n + 2,"key":"vod/big"}));
    let mut order = Vec::new();
    while order.len() < n as usize + 2 {
        match c.recv() {
            Got::Media(m, body) => {
                assert_eq!(body.len(), object.len());
                order.push(m["id"].as_u64().unwrap());
            }
            Got::Json(v) => {
                assert_eq!(v["op"], "unsubscribed", "{v}");
                order.push(v["id"].as_u64().unwrap());
            }
            Got::Closed(code) => panic!("closed: {code:?}"),
        }
    }
    assert_eq!(order, (1..=n + 2).collect::<Vec<_>>());
}

#[test]
fn long_segments_and_big_numbers_are_answered_plainly() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    // A path segment over 255 bytes: bad_request, for get and subscribe alike.
    let long = format!("live/{}", "s".repeat(300));
    c.send(json!({"op":"subscribe","id":1,"stream":long}));
    expect_error(&mut c, 1, "bad_request");
    c.send(json!({"op":"get","id":2,"key":format!("{long}/seg-0000000001.m4s")}));
    expect_error(&mut c, 2, "bad_request");
    assert!(!r.log_text().contains("WARN"), "{}", r.log_text());
    // A number beyond 64 bits is valid JSON: the reply keeps the id.
    c.send_text(r#"{"op":"teleport","id":3,"n":123456789012345678901234567890}"#);
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(3), Some("bad_request"))
    );
    assert!(!v["message"].as_str().unwrap().contains("JSON"), "{v}");
}

#[test]
fn symlinks_out_of_the_root_are_not_followed() {
    let r = Relay::start(&[]);
    std::fs::write(r.dir.path().join("outside"), b"secret").unwrap();
    std::fs::create_dir_all(r.media().join("vod")).unwrap();
    std::os::unix::fs::symlink(r.dir.path().join("outside"), r.media().join("vod/link")).unwrap();
    std::os::unix::fs::symlink(r.dir.path(), r.media().join("vod/dir")).unwrap();
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    for (id, key) in [(1, "vod/link"), (2, "vod/dir/outside")] {
        c.send(json!({"op":"get","id":id,"key":key}));
        let v = c.json();
        assert_eq!(v["code"], "not_found", "{v}");
    }
}

#[test]
fn bad_messages_keep_the_connection() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.send_text("not json");
    let v = c.json();
    assert_eq!(
        (v["op"].as_str(), v["code"].as_str()),
        (Some("error"), Some("bad_request"))
    );
    assert!(v.get("id").is_none());
    c.send(json!({"op":"teleport","id":9}));
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(9), Some("bad_request"))
    );
    c.send(json!({"op":"get","id":"x","key":"a"}));
    assert_eq!(c.json()["code"], "bad_request");
    c.send(json!({"op":"subscribe","id":3,"stream":"s","from":"yesterday"}));
    assert_eq!(c.json()["id"], 3);
    // Fragmented text message is reassembled.
    let msg = br#"{"op":"unsubscribe","id":4,"stream":"s"}"#;
    c.send_raw(&frame(false, 1, &msg[..10]));
    c.send_raw(&frame(false, 0, &msg[10..20]));
    c.send_raw(&frame(true, 0, &msg[20..]));
    assert_eq!(c.json(), json!({"op":"unsubscribed","id":4,"stream":"s"}));
    // A ping is answered and the connection stays up.
    c.send_raw(&frame(true, 9, b"hi"));
    c.send(json!({"op":"unsubscribe","id":5,"stream":"s"}));
    assert_eq!(c.json()["id"], 5);
}

fn close_code_for(raw: &[u8], env: &[(&str, &str)]) -> Option<u16> {
    let r = Relay::start(env);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.send_raw(raw);
    c.close_code().0
}

#[test]
fn bad_frames_get_their_close_codes() {
    // Binary frames are not part of v1, small or over the message size limit.
    assert_eq!(
        close_code_for(&frame(true, 2, b"\x00\x01"), &[]),
        Some(1003)
    );
    assert_eq!(
        close_code_for(&frame(true, 2, &vec![0u8; 5000]), &[]),
        Some(1003)
    );
    // Invalid UTF-8 in a text frame.
    assert_eq!(
        close_code_for(&frame(true, 1, &[0xc3, 0x28]), &[]),
        Some(1007)
    );
    // Over the message size limit.
    assert_eq!(
        close_code_for(&frame(true, 1, &vec![b' '; 5000]), &[]),
        Some(1009)
    );
    // Reserved bits, unknown opcode, continuation with nothing to continue, unmasked.
    let mut rsv = frame(true, 1, b"{}");
    rsv[0] |= 0x20;
    assert_eq!(close_code_for(&rsv, &[]), Some(1002));
    assert_eq!(close_code_for(&frame(true, 5, b""), &[]), Some(1002));
    assert_eq!(close_code_for(&frame(true, 0, b"x"), &[]), Some(1002));
    assert_eq!(close_code_for(&[0x81, 0x02, b'{', b'}'], &[]), Some(1002));
}

#[test]
fn reassembled_message_over_the_limit_is_1009() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.send_raw(&frame(false, 1, &vec![b' '; 3000]));
    c.send_raw(&frame(true, 0, &vec![b' '; 3000]));
    assert_eq!(c.close_code().0, Some(1009));
    let mut d = r.ws(&t);
    d.send_raw(&frame(false, 1, &[0xe2, 0x82]));
    d.send_raw(&frame(true, 0, &[0x28]));
    assert_eq!(d.close_code().0, Some(1007));
}

#[test]
fn client_close_is_answered() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.send_raw(&frame(true, 8, &[0x03, 0xe8]));
    assert_eq!(c.close_code().0, Some(1000));
}
