//! Many relays over the shared engines: fake-gcs-server publishing object events to
//! Google's Pub/Sub emulator, Google's Firestore emulator holding the tickets, two relay
//! processes each with its own subscription (`--notifications pubsub://PROJECT/topics/TOPIC`).
//! A segment uploaded once reaches the subscribers of both relays at once (the poll interval
//! is 5 s: only the notifications can explain it), each relay downloads it once, listings
//! stay rare, a revocation closes the viewers of both within 2 s, and each relay deletes its
//! subscription on a clean shutdown. Then HAProxy in front of three relays, one drained and
//! one killed.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::emulator::Emulator;
use support::gcs::FakeGcs;
use support::pubsub::PubSub;
use support::*;

const PROJECT: &str = "proj";
const TOPIC: &str = "media-events";

fn relay(gcs: &FakeGcs, pubsub: &PubSub, tickets: &Emulator) -> Relay {
    Relay::builder()
        .gcs(gcs.addr, "gs://media")
        .firestore(tickets.addr, &tickets.url())
        .env(&[
            ("PUBSUB_EMULATOR_HOST", &pubsub.addr.to_string()),
            (
                "MEDIARELAY_NOTIFICATIONS",
                &format!("pubsub://{PROJECT}/topics/{TOPIC}"),
            ),
            ("MEDIARELAY_POLL_INTERVAL", "5s"),
            ("MEDIARELAY_LIST_INTERVAL", "60s"),
        ])
        .start()
}

/// `mediarelay ticket ARGS` against the Firestore emulator's collection; its stdout.
fn ticket_cli(e: &Emulator, args: &[&str]) -> String {
    let url = e.url();
    let out = Command::new(BIN)
        .args(args)
        .args(["--tickets", &url])
        .env("FIRESTORE_EMULATOR_HOST", e.addr.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn two_relays_discover_through_notifications() {
    let tickets = Emulator::start("scaleout");
    let pubsub = PubSub::start();
    pubsub.create_topic(PROJECT, TOPIC);
    let gcs = FakeGcs::with_events(pubsub.addr, PROJECT, TOPIC);
    gcs.upload("live/cam1/seg-0000000001.m4s", b"first");
    let mut a = relay(&gcs, &pubsub, &tickets);
    let mut b = relay(&gcs, &pubsub, &tickets);
    wait_for("both subscriptions", Duration::from_secs(10), || {
        pubsub.subscriptions(PROJECT).len() == 2
    });
    let t = ticket_cli(
        &tickets,
        &[
            "ticket",
            "issue",
            "--uid",
            "viewer",
            "--streams",
            "live/cam1",
        ],
    );
    let mut viewers = Vec::new();
    for r in [&a, &b] {
        let mut c = r.ws(&t);
        c.send(json!({"op":"subscribe","id":1,"stream":"live/cam1"}));
        assert_eq!(c.json()["seq"], 1);
        assert_eq!(c.media().1, b"first");
        viewers.push(c);
    }
    let mut took = Vec::new();
    for seq in 2..=6u64 {
        let body = vec![seq as u8; 50_000];
        let started = Instant::now();
        gcs.upload(&seg_key("live/cam1", seq), &body);
        for c in viewers.iter_mut() {
            let (m, p) = c.media();
            assert_eq!(m["seq"], seq);
            assert_eq!(p, body);
        }
        took.push(started.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    took.sort();
    let (median, worst) = (took[took.len() / 2], took[took.len() - 1]);
    eprintln!("upload to delivery on both relays: median {median:?}, worst {worst:?}");
    assert!(
        median < Duration::from_millis(300) && worst < Duration::from_millis(1500),
        "upload to delivery on both relays: {took:?} (polls are 5 s apart)"
    );
    for seq in 2..=6u64 {
        let key = seg_key("live/cam1", seq);
        wait_for("the downloads' log lines", Duration::from_secs(5), || {
            gcs.downloads(&key) >= 2
        });
        assert_eq!(gcs.downloads(&key), 2, "one download per relay");
    }
    for r in [&a, &b] {
        assert!(r.metric("mediarelay_notifications_total", "result=\"woke\"") >= 5.0);
        assert_eq!(r.metric("mediarelay_notifications_up", ""), 1.0);
        assert!(r.metric("mediarelay_origin_calls_total", "kind=\"list\"") <= 2.0);
    }
    // A revocation in the shared ticket store closes the viewers of both relays.
    let revoked = Instant::now();
    ticket_cli(&tickets, &["ticket", "revoke", &t]);
    for c in viewers.iter_mut() {
        c.set_timeout(Duration::from_secs(5));
        let (code, msgs) = c.close_code();
        assert_eq!(code, Some(4401), "{msgs:?}");
    }
    assert!(
        revoked.elapsed() < Duration::from_millis(2500),
        "both relays closed their viewers {:?} after the revocation",
        revoked.elapsed()
    );
    // A clean shutdown deletes the relay's own subscription.
    a.signal("TERM");
    assert!(a
        .wait_exit(Duration::from_secs(15))
        .is_some_and(|s| s.success()));
    wait_for(
        "relay A's subscription deleted",
        Duration::from_secs(10),
        || pubsub.subscriptions(PROJECT).len() == 1,
    );
    b.signal("TERM");
    assert!(b.wait_exit(Duration::from_secs(15)).is_some());
}

/// HAProxy (deploy/haproxy/haproxy.cfg, Debian's package) in front of three relays over one
/// bucket: viewers are spread over all; when one relay drains (SIGTERM: `/readyz` 503, then
/// 1001) and then another is killed (SIGKILL), their viewers reconnect through the balancer
/// to the one left and resume from the next sequence number with nothing missing.
#[test]
fn a_balancer_spreads_viewers_and_a_drained_relays_viewers_resume_elsewhere() {
    if Command::new("haproxy").arg("-v").output().is_err() {
        eprintln!("SKIPPED: haproxy is not installed (scripts/test.sh installs it)");
        return;
    }
    let gcs = FakeGcs::start();
    gcs.upload("live/cam1/seg-0000000001.m4s", b"one");
    let env = [("MEDIARELAY_POLL_INTERVAL", "100ms")];
    let mut a = Relay::builder()
        .gcs(gcs.addr, "gs://media")
        .env(&env)
        .start();
    let tickets = a.tickets().to_string_lossy().into_owned();
    let start_other = || {
        Relay::builder()
            .gcs(gcs.addr, "gs://media")
            .env(&env)
            .env(&[("MEDIARELAY_TICKETS", &tickets)])
            .start()
    };
    let mut b = start_other();
    let c = start_other();
    let t = a.issue("live/cam1", &[]);
    wait_for(
        "relay B to know the ticket",
        Duration::from_secs(10),
        || Client::try_connect(b.addr, Some(&t)).is_ok(),
    );

    // The example configuration, pointed at the two relays, with quick health checks.
    let port = free_port();
    let example = std::fs::read_to_string("deploy/haproxy/haproxy.cfg").unwrap();
    let cfg: String = example
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .map(|l| match l.trim() {
            "bind :8080" => format!("    bind 127.0.0.1:{port}"),
            "default-server inter 1s fall 2 rise 2" => format!(
                "    default-server inter 100ms fall 1 rise 1\n    server a {} check\n    server b {} check\n    server c {} check",
                a.addr, b.addr, c.addr
            ),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg + "\n").unwrap();
    let mut haproxy = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("haproxy.log")).unwrap())
        .spawn()
        .unwrap();
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_for(
        "haproxy passing connections",
        Duration::from_secs(10),
        || {
            std::net::TcpStream::connect(front).is_ok()
                && Client::try_connect(front, Some(&t)).is_ok()
        },
    );

    // A viewer retries its connection as players do (a connection that reached the
    // draining relay just before it stopped accepting is dropped).
    let subscribe = |from: u64| {
        let mut tries = 0;
        let mut c = loop {
            match Client::try_connect(front, Some(&t)) {
                Ok(c) => break c,
                Err(e) if tries < 50 => {
                    tries += 1;
                    eprintln!("reconnect {tries}: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("no connection through the balancer: {e}"),
            }
        };
        c.send(json!({"op":"subscribe","id":1,"stream":"live/cam1","from":from}));
        assert_eq!(c.json()["op"], "subscribed");
        c
    };
    let mut viewers: Vec<Client> = (0..12).map(|_| subscribe(1)).collect();
    for c in viewers.iter_mut() {
        assert_eq!(c.media().1, b"one");
    }
    let (on_a, on_b, on_c) = (
        a.metric("mediarelay_connections", ""),
        b.metric("mediarelay_connections", ""),
        c.metric("mediarelay_connections", ""),
    );
    assert!(
        on_a >= 1.0 && on_b >= 1.0 && on_c >= 1.0,
        "spread over all three: {on_a}, {on_b} and {on_c}"
    );

    // Relay A drains; the next segment is uploaded meanwhile.
    a.signal("TERM");
    gcs.upload("live/cam1/seg-0000000002.m4s", b"two");
    let mut moved = 0;
    for c in viewers.iter_mut() {
        match c.recv() {
            Got::Media(m, p) => {
                assert_eq!((m["seq"].as_u64(), p.as_slice()), (Some(2), &b"two"[..]));
            }
            Got::Json(v) => {
                assert_eq!(v["reason"], "shutting_down", "{v}");
                assert!(matches!(c.recv(), Got::Closed(Some(1001))));
                // Reconnect through the balancer, from the seq after the last one received
                // (again if the balancer still chose the draining relay).
                loop {
                    *c = subscribe(2);
                    match c.recv() {
                        Got::Media(m, p) => {
                            assert_eq!((m["seq"].as_u64(), p.as_slice()), (Some(2), &b"two"[..]));
                            break;
                        }
                        Got::Json(v) if v["reason"] == "shutting_down" => continue,
                        other => panic!("after reconnecting: {other:?}"),
                    }
                }
                moved += 1;
            }
            Got::Closed(code) => panic!("closed without closing: {code:?}"),
        }
    }
    assert_eq!(moved as f64, on_a, "every viewer of A moved");
    assert!(a.wait_exit(Duration::from_secs(15)).is_some());
    gcs.upload("live/cam1/seg-0000000003.m4s", b"three");
    for v in viewers.iter_mut() {
        let (m, p) = v.media();
        assert_eq!((m["seq"].as_u64(), p.as_slice()), (Some(3), &b"three"[..]));
    }
    // Relay B is killed (no close frame, no drain): its viewers see the connection end,
    // reconnect through the balancer (which finds B down) and resume at the next seq.
    let on_b = b.metric("mediarelay_connections", "");
    let _ = b.child.as_mut().unwrap().kill();
    let _ = b.child.as_mut().unwrap().wait();
    gcs.upload("live/cam1/seg-0000000004.m4s", b"four");
    let mut moved = 0;
    for v in viewers.iter_mut() {
        let got = loop {
            match v.ws.read() {
                Ok(tungstenite::Message::Binary(f)) => break Some(f),
                Ok(tungstenite::Message::Close(_)) | Err(_) => break None,
                Ok(_) => continue,
            }
        };
        let frame = match got {
            Some(f) => f,
            None => {
                moved += 1;
                *v = subscribe(4);
                match v.recv() {
                    Got::Media(m, p) => {
                        assert_eq!((m["seq"].as_u64(), p.as_slice()), (Some(4), &b"four"[..]));
                    }
                    other => panic!("after reconnecting: {other:?}"),
                }
                continue;
            }
        };
        let n = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
        let meta: serde_json::Value = serde_json::from_slice(&frame[4..4 + n]).unwrap();
        assert_eq!(
            (meta["seq"].as_u64(), &frame[4 + n..]),
            (Some(4), &b"four"[..])
        );
    }
    assert_eq!(moved as f64, on_b, "every viewer of the killed relay moved");
    gcs.upload("live/cam1/seg-0000000005.m4s", b"five");
    for v in viewers.iter_mut() {
        let (m, p) = v.media();
        assert_eq!((m["seq"].as_u64(), p.as_slice()), (Some(5), &b"five"[..]));
    }
    assert_eq!(c.metric("mediarelay_connections", ""), 12.0);
    let _ = haproxy.kill();
    let _ = haproxy.wait();
}
