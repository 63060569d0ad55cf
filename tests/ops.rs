//! Operations: SIGHUP configuration reloads, and tickets kept out of the logs.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn wait_for_log(r: &Relay, needle: &str, times: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = r.log_text();
        if log.matches(needle).count() >= times {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn subscriptions_allowed(r: &Relay, t: &str) -> usize {
    let mut c = r.ws(t);
    for i in 0..5 {
        c.send(json!({"op":"subscribe","id":i,"stream":format!("live/s{i}")}));
        if c.json()["op"] != "subscribed" {
            return i;
        }
    }
    5
}

#[test]
fn sighup_applies_what_it_can_and_survives_a_bad_file() {
    let r = Relay::start_config(
        "[connection]\nmax_subscriptions = 3\n[server]\nbacklog = 512\n",
        &[],
    );
    let t = r.issue("*", &[]);
    assert_eq!(subscriptions_allowed(&r, &t), 3);

    std::fs::write(
        r.config_path(),
        "[connection]\nmax_subscriptions = 1\n[server]\nbacklog = 64\n",
    )
    .unwrap();
    r.signal("HUP");
    let log = wait_for_log(&r, "SIGHUP: configuration reloaded", 1);
    let line = log
        .lines()
        .find(|l| l.contains("SIGHUP: configuration reloaded"))
        .unwrap();
    assert!(line.contains("connection.max_subscriptions"), "{line}");
    assert!(
        line.contains("needs_restart") && line.contains("server.backlog"),
        "{line}"
    );
    assert_eq!(subscriptions_allowed(&r, &t), 1);

    std::fs::write(r.config_path(), "[connection\nmax_subscriptions = 9\n").unwrap();
    r.signal("HUP");
    wait_for_log(&r, "configuration not reloaded", 1);
    assert_eq!(
        subscriptions_allowed(&r, &t),
        1,
        "a bad file must change nothing"
    );
    assert_eq!(http_get(r.admin, "/healthz").unwrap().0, 200);
}

#[test]
fn tickets_never_reach_the_logs() {
    let r = Relay::start(&[("MEDIARELAY_LOG_LEVEL", "trace")]);
    let t = r.issue("live/*", &[]);
    // Header and query forms, good and bad, a revocation, requests and a close.
    let mut c = r.ws(&t);
    c.send(json!({"op":"subscribe","id":1,"stream":"live/a"}));
    c.json();
    c.send(json!({"op":"get","id":2,"key":"vod/nope"}));
    c.json();
    let _ = raw_http(
        r.addr,
        format!("GET /ws?ticket={t}x HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    );
    let _ = raw_http(
        r.addr,
        format!("GET /ws?ticket={t} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").as_bytes(),
    );
    let out = cli(&[
        "ticket",
        "revoke",
        "--tickets",
        r.tickets().to_str().unwrap(),
        &t,
    ]);
    assert!(out.status.success());
    assert_eq!(c.close_code().0, Some(4401));
    let log = r.log_text();
    assert!(log.contains("tester"), "the uid should be logged");
    assert!(!log.contains(&t), "a ticket reached the log");
    assert!(!log.contains(&t[..20]), "part of a ticket reached the log");
}
