//! The GCS origin against fake-gcs-server on loopback (`STORAGE_EMULATOR_HOST`), with a
//! fault-injecting proxy for retries.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::gcs::{FakeGcs, Fault, FaultProxy};
use support::*;

fn data(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn objects_of_every_size_and_odd_names() {
    let gcs = FakeGcs::start();
    let sizes = [1usize, 64 * 1024, (1 << 20) + 7, 32 << 20];
    for (i, n) in sizes.iter().enumerate() {
        gcs.upload(&format!("root/vod/size-{i}.bin"), &data(*n, i as u8));
    }
    let odd = [
        "vod/with space.bin",
        "vod/100%.bin",
        "vod/a+b=c&d.bin",
        "vod/ünïcödé/文件.bin",
        "vod/a/b/c/d/e/f/g/h.bin",
        "vod/quote\"d.bin",
    ];
    for (i, k) in odd.iter().enumerate() {
        gcs.upload(&format!("root/{k}"), &data(1000 + i, 9));
    }
    gcs.upload("outside-the-prefix.bin", b"no");
    let r = Relay::builder()
        .gcs(gcs.addr, "gs://media/root")
        .env(&[("MEDIARELAY_MAX_OBJECT_SIZE", "33MiB")])
        .start();
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    for (i, n) in sizes.iter().enumerate() {
        c.send(json!({"op":"get","id":i,"key":format!("vod/size-{i}.bin")}));
        let (m, p) = c.media();
        assert_eq!(m["size"], *n);
        assert!(m["generation"].as_u64().is_some(), "{m}");
        assert!(p == data(*n, i as u8), "size {n}: bytes differ");
    }
    for (i, k) in odd.iter().enumerate() {
        c.send(json!({"op":"get","id":100 + i,"key":k}));
        let (m, p) = c.media();
        assert_eq!(m["key"], *k);
        assert_eq!(p, data(1000 + i, 9), "{k}");
    }
    c.send(json!({"op":"get","id":7,"key":"vod/nothing-here.bin"}));
    assert_eq!(c.json()["code"], "not_found");
    c.send(json!({"op":"get","id":8,"key":"outside-the-prefix.bin"}));
    assert_eq!(c.json()["code"], "not_found");
    gcs.upload("root/vod/huge.bin", &vec![1u8; 34 << 20]);
    c.send(json!({"op":"get","id":9,"key":"vod/huge.bin"}));
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(9), Some("too_large")),
        "{v}"
    );
}

#[test]
fn concurrent_cold_gets_download_once() {
    let gcs = FakeGcs::start();
    gcs.upload("vod/cold.bin", &data(2 << 20, 3));
    let r = Relay::builder().gcs(gcs.addr, "gs://media").start();
    let t = r.issue("*", &[]);
    let mut clients: Vec<Client> = (0..100).map(|_| r.ws(&t)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"op":"get","id":i,"key":"vod/cold.bin"}));
    }
    for c in clients.iter_mut() {
        assert_eq!(c.media().1.len(), 2 << 20);
    }
    assert_eq!(gcs.downloads("vod/cold.bin"), 1, "{}", gcs.log());
}

#[test]
fn live_stream_from_a_bucket() {
    let gcs = FakeGcs::start();
    gcs.upload("live/cam1/init.mp4", b"INIT");
    gcs.upload("live/cam1/a-playlist.m3u8", b"#EXTM3U");
    gcs.upload("live/cam1/b-notes.txt", b"x");
    gcs.upload(
        "live/cam1/nested/seg-0000000009.m4s",
        b"not a segment of this stream",
    );
    gcs.upload("live/cam1/seg-0000000001.m4s", &data(5000, 1));
    // Two objects per listing page, so discovery follows nextPageToken.
    let r = Relay::builder()
        .gcs(gcs.addr, "gs://media")
        .env(&[("MEDIARELAY_LIST_PAGE_SIZE", "2")])
        .start();
    let t = r.issue("live/cam1", &[]);
    let mut a = r.ws(&t);
    let mut b = r.ws(&t);
    for c in [&mut a, &mut b] {
        c.send(json!({"op":"subscribe","id":1,"stream":"live/cam1","from":"start"}));
        assert_eq!(c.json()["seq"], 1);
        assert_eq!(c.media().1, b"INIT");
        assert_eq!(c.media().1, data(5000, 1));
    }
    for seq in 2..=5u64 {
        gcs.upload(&format!("live/cam1/.upload-{seq}"), b"temporary");
        gcs.upload(
            &format!("live/cam1/seg-{seq:010}.m4s"),
            &data(70_000, seq as u8),
        );
        for c in [&mut a, &mut b] {
            let (m, p) = c.media();
            assert_eq!(m["seq"], seq);
            assert_eq!(p, data(70_000, seq as u8));
        }
    }
    // An encoder restart replaces the init (a new generation): it goes out again, seq 0,
    // before the next segment.
    gcs.upload("live/cam1/init.mp4", b"INIT-2");
    gcs.upload(&seg_key("live/cam1", 6), &data(70_000, 6));
    for c in [&mut a, &mut b] {
        let (m, p) = c.media();
        assert_eq!((m["seq"].as_u64(), p.as_slice()), (Some(0), &b"INIT-2"[..]));
        assert_eq!(c.media().0["seq"], 6);
    }
    assert!(gcs.log().contains("pageToken="), "discovery never paged");
    // One download per segment however many subscribers. The server writes its access log
    // line after the response, so wait for it before counting.
    for seq in 2..=6u64 {
        let key = seg_key("live/cam1", seq);
        wait_for("the download's log line", Duration::from_secs(5), || {
            gcs.downloads(&key) >= 1
        });
        assert_eq!(gcs.downloads(&key), 1);
    }
}

#[test]
fn retries_recover_and_fail_within_the_deadline() {
    let gcs = FakeGcs::start();
    for i in 0..4 {
        gcs.upload(&format!("vod/r{i}.bin"), &data(300_000, i));
    }
    let proxy = FaultProxy::start(gcs.addr);
    let r = Relay::builder()
        .gcs(proxy.addr, "gs://media")
        .env(&[
            ("MEDIARELAY_ATTEMPT_TIMEOUT", "1s"),
            ("MEDIARELAY_REQUEST_DEADLINE", "4s"),
        ])
        .start();
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    let cases = [
        (Fault::Unavailable, 3),
        (Fault::ResetMidBody, 2),
        (Fault::Stall, 1),
    ];
    for (i, (fault, times)) in cases.iter().enumerate() {
        proxy.push(*fault, *times);
        let before = proxy.downloads.load(std::sync::atomic::Ordering::Relaxed);
        c.send(json!({"op":"get","id":i,"key":format!("vod/r{i}.bin")}));
        let (m, p) = c.media();
        assert_eq!(m["id"], i, "{fault:?}");
        assert_eq!(p, data(300_000, i as u8), "{fault:?}: wrong bytes");
        let tries = proxy.downloads.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(tries, times + 1, "{fault:?}");
    }
    // Refused credentials: no retry, `unavailable`, and a log line that says so.
    proxy.push(Fault::Forbidden, 1);
    let before = proxy.downloads.load(std::sync::atomic::Ordering::Relaxed);
    c.send(json!({"op":"get","id":8,"key":"vod/r3.bin"}));
    assert_eq!(c.json()["code"], "unavailable");
    assert_eq!(
        proxy.downloads.load(std::sync::atomic::Ordering::Relaxed) - before,
        1
    );
    assert!(
        r.log_text().contains("refused the credentials"),
        "{}",
        r.log_text()
    );
    // An origin that keeps failing: `unavailable` within the deadline, relay still fine.
    proxy.push(Fault::Unavailable, 1000);
    let start = Instant::now();
    c.send(json!({"op":"get","id":9,"key":"vod/r3.bin"}));
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(9), Some("unavailable")),
        "{v}"
    );
    let took = start.elapsed();
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(http_get(r.admin, "/healthz").unwrap().0, 200);
    c.send(json!({"op":"get","id":10,"key":"vod/r0.bin"}));
    assert_eq!(c.media().0["id"], 10, "cached object still served");
}

#[test]
fn origin_faults_are_bounded_and_never_serve_wrong_bytes() {
    let gcs = FakeGcs::start();
    gcs.upload("vod/small.bin", &data(4_000, 7));
    gcs.upload("live/loop/seg-0000000001.m4s", &data(100, 1));
    let proxy = FaultProxy::start(gcs.addr);
    let r = Relay::builder()
        .gcs(proxy.addr, "gs://media")
        .env(&[
            ("MEDIARELAY_ATTEMPT_TIMEOUT", "1s"),
            ("MEDIARELAY_REQUEST_DEADLINE", "4s"),
        ])
        .start();
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.set_timeout(Duration::from_secs(20));
    // A body that is garbage for its declared length (checksum mismatch): retried, and
    // only the right bytes ever reach the client.
    proxy.push(Fault::Garbage, 1);
    c.send(json!({"op":"get","id":1,"key":"vod/small.bin"}));
    assert_eq!(c.media().1, data(4_000, 7));
    // A body that drips at 1 KiB/s: the attempt times out and is retried.
    proxy.push(Fault::Drip, 1);
    c.send(json!({"op":"get","id":2,"key":"vod/small.bin"}));
    assert_eq!(c.media().1, data(4_000, 7));
    // Garbage every time: `unavailable` within the deadline, nothing partial or wrong.
    gcs.upload("vod/other.bin", &data(4_000, 8));
    proxy.push(Fault::Garbage, 1_000);
    let start = Instant::now();
    c.send(json!({"op":"get","id":3,"key":"vod/other.bin"}));
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(3), Some("unavailable"))
    );
    assert!(
        start.elapsed() < Duration::from_secs(6),
        "{:?}",
        start.elapsed()
    );
    assert!(r.metric("mediarelay_origin_requests_total", "result=\"unavailable\"") >= 1.0);
    // A listing whose page token loops: it fails instead of looping; the stream still
    // answers its subscriber, and the relay keeps serving.
    proxy
        .loop_listings
        .store(true, std::sync::atomic::Ordering::Relaxed);
    c.send(json!({"op":"subscribe","id":4,"stream":"live/loop"}));
    assert_eq!(c.json()["op"], "subscribed");
    let seen = proxy.listings.load(std::sync::atomic::Ordering::Relaxed);
    assert!(seen < 100, "{seen} listing requests");
    assert!(r.log_text().contains("does not end"), "{}", r.log_text());
    assert_eq!(http_get(r.admin, "/healthz").unwrap().0, 200);
}

#[test]
fn storage_refusing_connections_at_start_recovers() {
    let gcs = FakeGcs::start();
    gcs.upload("vod/a.bin", &data(2_000, 3));
    // Nothing listens on the storage address yet.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let r = Relay::builder()
        .gcs(port, "gs://media")
        .env(&[
            ("MEDIARELAY_ATTEMPT_TIMEOUT", "1s"),
            ("MEDIARELAY_REQUEST_DEADLINE", "2s"),
        ])
        .start();
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    c.send(json!({"op":"get","id":1,"key":"vod/a.bin"}));
    assert_eq!(c.json()["code"], "unavailable");
    // Storage comes up on that address: the next get is served.
    let _proxy = FaultProxy::start_on(std::net::TcpListener::bind(port).unwrap(), gcs.addr);
    c.send(json!({"op":"get","id":2,"key":"vod/a.bin"}));
    assert_eq!(c.media().1, data(2_000, 3));
}

/// Ingest into a bucket: one upload with the body's crc32c, 201 then 204, DELETE 204 then
/// 404; the object in the bucket has the bytes sent; a live segment reaches subscribers at
/// once and is not downloaded back.
#[test]
fn ingest_writes_to_the_bucket() {
    let gcs = FakeGcs::start();
    let r = Relay::builder()
        .gcs(gcs.addr, "gs://media/root")
        .env(&[("MEDIARELAY_POLL_INTERVAL", "3s")])
        .start();
    let publisher = r.issue("*", &["--publish", "*"]);
    let viewer = r.issue("*", &[]);
    let send = |method: &str, key: &str, body: &[u8]| {
        support::gcs::request(
            r.addr,
            method,
            &format!("/ingest/t/{publisher}/{}", key.replace(' ', "%20")),
            "application/octet-stream",
            body,
        )
    };
    let body = data(300_000, 9);
    assert_eq!(send("PUT", "vod/up load.bin", &body).0, 201);
    let (status, stored) = gcs.read("root/vod/up load.bin", true);
    assert_eq!((status, stored.len()), (200, body.len()));
    assert_eq!(stored, body);
    assert_eq!(send("PUT", "vod/up load.bin", b"second").0, 204);
    let mut c = r.ws(&viewer);
    c.send(json!({"op":"get","id":1,"key":"vod/up load.bin"}));
    assert_eq!(c.media().1, b"second");
    assert_eq!(send("DELETE", "vod/up load.bin", b"").0, 204);
    assert_eq!(send("DELETE", "vod/up load.bin", b"").0, 404);

    c.send(json!({"op":"subscribe","id":2,"stream":"live/cam9"}));
    assert_eq!(c.json()["op"], "subscribed");
    let started = Instant::now();
    assert_eq!(send("PUT", &seg_key("live/cam9", 1), &body).0, 201);
    let (m, p) = c.media();
    assert_eq!(m["seq"], 1);
    assert_eq!(p, body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "before the 3 s poll"
    );
    assert_eq!(gcs.downloads("root/live/cam9/seg-0000000001.m4s"), 0);
}

/// A body larger than `storage.upload_chunk` goes up in a resumable session, one piece
/// per 256 KiB here: the object has every byte and the content type, a replacement is told
/// apart (204), and the pieces were sent as `Content-Range` PUTs to the session.
#[test]
fn large_ingest_uses_a_resumable_upload() {
    let gcs = FakeGcs::start();
    let r = Relay::builder()
        .gcs(gcs.addr, "gs://media/root")
        .env(&[("MEDIARELAY_UPLOAD_CHUNK", "256KiB")])
        .start();
    let publisher = r.issue("*", &["--publish", "*"]);
    let body = data((1 << 20) + 12_345, 4);
    let put = |body: &[u8]| {
        support::gcs::request(
            r.addr,
            "PUT",
            &format!("/ingest/t/{publisher}/vod/big.mp4"),
            "video/mp4",
            body,
        )
        .0
    };
    assert_eq!(put(&body), 201);
    let (status, stored) = gcs.read("root/vod/big.mp4", true);
    assert_eq!((status, stored.len()), (200, body.len()));
    assert!(stored == body, "the stored object differs from the body");
    let (_, meta) = gcs.read("root/vod/big.mp4", false);
    let meta: serde_json::Value = serde_json::from_slice(&meta).unwrap();
    assert_eq!(meta["contentType"], "video/mp4");
    // Five pieces: four answered 308 (persisted so far), the last one 200.
    let log = gcs.log();
    let pieces = log
        .lines()
        .filter(|l| l.contains("PUT /upload/storage/v1/b/media/o?uploadType=resumable"))
        .collect::<Vec<_>>();
    assert_eq!(pieces.len(), 5, "{log}");
    assert_eq!(
        pieces.iter().filter(|l| l.contains("\" 308 ")).count(),
        4,
        "{log}"
    );

    let second = data((1 << 20) + 1, 5);
    assert_eq!(put(&second), 204);
    let (_, stored) = gcs.read("root/vod/big.mp4", true);
    assert!(stored == second, "the replacement was not stored whole");
    // A body of one piece or less is one single-request upload.
    assert_eq!(put(&data(256 << 10, 6)), 204);
    assert_eq!(
        gcs.log().matches("uploadType=media").count(),
        1,
        "{}",
        gcs.log()
    );
}

/// Discovery on a bucket reads the predicted next segment instead of listing: listings
/// only at the start and every `list_interval` (which also finds a segment after a gap).
#[test]
fn discovery_predicts_names_and_lists_rarely() {
    let gcs = FakeGcs::start();
    gcs.upload("live/p/seg-0000000001.m4s", b"one");
    let r = Relay::builder()
        .gcs(gcs.addr, "gs://media")
        .env(&[
            ("MEDIARELAY_POLL_INTERVAL", "50ms"),
            ("MEDIARELAY_LIST_INTERVAL", "2s"),
        ])
        .start();
    let t = r.issue("live/p", &[]);
    let mut c = r.ws(&t);
    c.send(json!({"op":"subscribe","id":1,"stream":"live/p"}));
    assert_eq!(c.json()["seq"], 1);
    assert_eq!(c.media().1, b"one");
    let started = Instant::now();
    for seq in 2..=21u64 {
        gcs.upload(&seg_key("live/p", seq), &data(10_000, seq as u8));
        let (m, p) = c.media();
        assert_eq!(m["seq"], seq);
        assert_eq!(p, data(10_000, seq as u8));
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = started.elapsed().as_secs_f64();
    let lists = r.metric("mediarelay_origin_calls_total", "kind=\"list\"");
    let misses = r.metric("mediarelay_origin_calls_total", "kind=\"get_not_found\"");
    // One at the start, then one per 2 s.
    assert!(lists <= 2.0 + secs / 2.0, "{lists} listings in {secs:.1} s");
    assert!(
        misses > 10.0,
        "predicted reads that found nothing: {misses}"
    );
    // A gap (seq 22 never written): the next listing finds 23.
    gcs.upload(&seg_key("live/p", 23), b"after the gap");
    let (m, p) = c.media();
    assert_eq!(
        (m["seq"].as_u64(), p.as_slice()),
        (Some(23), &b"after the gap"[..])
    );
    assert_eq!(gcs.downloads("live/p/seg-0000000023.m4s"), 1);
}
