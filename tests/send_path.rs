//! The two send paths of plain-text connections, on both io drivers: `sendfile` from payload
//! files (a directory object's own file, a sealed memfd for ingested bodies) and `writev`
//! from memory. Every byte arrives the same either way, through partial sends of objects
//! larger than the socket buffers, and the metrics say which path carried the payloads.

mod support;

use std::time::Duration;

use serde_json::json;
use support::*;

fn data(n: usize, salt: u8) -> Vec<u8> {
    (0..n)
        .map(|i| ((i * 31 + salt as usize) % 251) as u8)
        .collect()
}

fn run(driver: &str, path: &str) {
    let r = Relay::start(&[
        ("MEDIARELAY_DRIVER", driver),
        ("MEDIARELAY_SEND_PATH", path),
        ("MEDIARELAY_POLL_INTERVAL", "50ms"),
    ]);
    let objects = [
        ("vod/small.bin", data(1_000, 1)),
        ("vod/64k.bin", data(64 << 10, 2)),
        ("vod/odd.bin", data((8 << 20) + 13, 3)),
    ];
    for (k, v) in &objects {
        r.put(k, v);
    }
    let t = r.issue("*", &["--publish", "*"]);
    let mut c = r.ws(&t);
    // Pipelined: three 8 MiB frames fill the socket buffers long before the reader reads,
    // so each payload leaves in many partial sends.
    for round in 0..3 {
        for (i, (k, _)) in objects.iter().enumerate() {
            c.send(json!({"op":"get","id":round * 10 + i,"key":k}));
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        for (k, v) in &objects {
            let (meta, body) = c.media();
            assert_eq!(meta["key"], *k);
            assert!(body == *v, "{k}: {} bytes, not the object's", body.len());
        }
    }
    // A live stream: one segment ingested (its body becomes a memfd), one written to the
    // directory (sent from its own file).
    c.send(json!({"op":"subscribe","id":100,"stream":"live/s"}));
    assert_eq!(c.json()["op"], "subscribed");
    let one = data(300_000, 4);
    let (status, _) = raw_http(
        r.addr,
        &[
            format!(
                "PUT /ingest/t/{t}/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                seg_key("live/s", 1),
                one.len()
            )
            .into_bytes(),
            one.clone(),
        ]
        .concat(),
    )
    .unwrap();
    assert_eq!(status, 201);
    let (meta, body) = c.media();
    assert_eq!(meta["seq"], 1);
    assert!(body == one, "ingested segment differs");
    let two = data(200_000, 5);
    r.put(&seg_key("live/s", 2), &two);
    let (meta, body) = c.media();
    assert_eq!(meta["seq"], 2);
    assert!(body == two, "stored segment differs");

    let large: usize = 3 * ((64 << 10) + (8 << 20) + 13) + one.len() + two.len();
    let by_file = r.metric("mediarelay_sent_file_bytes_total", "");
    let files = r.metric("mediarelay_payload_files", "");
    if path == "sendfile" {
        assert_eq!(by_file as usize, large, "every large payload by sendfile");
        assert!(files >= 4.0, "{files} payload files open");
    } else {
        assert_eq!((by_file, files), (0.0, 0.0));
    }
    assert!(r.metric("mediarelay_sent_bytes_total", "") as usize > large + 3 * 1_000);
}

#[test]
fn sendfile_on_io_uring() {
    run("uring", "sendfile");
}

#[test]
fn sendfile_on_epoll() {
    run("epoll", "sendfile");
}

#[test]
fn writev_on_io_uring() {
    run("uring", "writev");
}

/// A directory object rewritten in place (not supported: objects are replaced by rename)
/// after it was cached: the connection that cannot send it whole is closed, the relay and
/// its other connections go on.
#[test]
fn a_truncated_object_file_closes_only_its_connection() {
    let r = Relay::start(&[]);
    let v = data(1 << 20, 6);
    r.put("vod/a.bin", &v);
    r.put("vod/b.bin", b"small");
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.send(json!({"op":"get","id":1,"key":"vod/a.bin"}));
    assert!(c.media().1 == v);
    std::fs::OpenOptions::new()
        .write(true)
        .open(r.media().join("vod/a.bin"))
        .unwrap()
        .set_len(10)
        .unwrap();
    let mut other = r.ws(&t);
    c.send(json!({"op":"get","id":2,"key":"vod/a.bin"}));
    c.set_timeout(Duration::from_secs(5));
    let mut raw = Vec::new();
    let got = std::io::Read::read_to_end(c.ws.get_mut(), &mut raw);
    assert!(
        got.is_ok(),
        "the connection is closed, not left hanging: {got:?}"
    );
    assert!(
        raw.len() < 100,
        "a head and the file's 10 bytes, then EOF: {}",
        raw.len()
    );
    other.send(json!({"op":"get","id":3,"key":"vod/b.bin"}));
    assert_eq!(other.media().1, b"small");
}
