//! Many relays over one bucket: fake-gcs-server publishing object events to Google's
//! Pub/Sub emulator, two relay processes each with its own subscription
//! (`--notifications pubsub://PROJECT/topics/TOPIC`). A segment uploaded once reaches the
//! subscribers of both relays at once (the poll interval is 5 s: only the notifications
//! can explain it), each relay downloads it once, listings stay rare, and each relay
//! deletes its subscription on a clean shutdown.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::gcs::FakeGcs;
use support::pubsub::PubSub;
use support::*;

const PROJECT: &str = "proj";
const TOPIC: &str = "media-events";

fn relay(gcs: &FakeGcs, pubsub: &PubSub) -> Relay {
    Relay::builder()
        .gcs(gcs.addr, "gs://media")
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

#[test]
fn two_relays_discover_through_notifications() {
    let pubsub = PubSub::start();
    pubsub.create_topic(PROJECT, TOPIC);
    let gcs = FakeGcs::with_events(pubsub.addr, PROJECT, TOPIC);
    gcs.upload("live/cam1/seg-0000000001.m4s", b"first");
    let mut a = relay(&gcs, &pubsub);
    let mut b = relay(&gcs, &pubsub);
    wait_for("both subscriptions", Duration::from_secs(10), || {
        pubsub.subscriptions(PROJECT).len() == 2
    });
    let mut viewers = Vec::new();
    for r in [&a, &b] {
        let t = r.issue("live/cam1", &[]);
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
