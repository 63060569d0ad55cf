//! Tickets: every refusal of PROTOCOL.md before the upgrade, limits, revocation and expiry
//! of connected tickets, and the CLI.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

fn upgrade(r: &Relay, auth: &str, query: &str) -> (u16, String) {
    raw_upgrade(r.addr, auth, query)
}

#[test]
fn refusals_before_upgrade() {
    let r = Relay::start(&[]);
    let good = r.issue("live/*", &[]);
    let expired = r.issue("live/*", &["--ttl", "1s"]);
    // The CLI stamped the expiry before `issue` returned.
    let expiry = Instant::now() + Duration::from_secs(1);
    let revoked = r.issue("live/*", &[]);
    let loads = r.log_text().matches("ticket snapshot loaded").count();
    r.revoke(&[&revoked]);
    wait_for(
        "the revocation to reach the snapshot",
        Duration::from_secs(5),
        || r.log_text().matches("ticket snapshot loaded").count() > loads,
    );
    wait_for("the short ticket's expiry", Duration::from_secs(5), || {
        Instant::now() >= expiry
    });

    assert_eq!(
        upgrade(&r, "", ""),
        (401, r#"{"error":"ticket_missing"}"#.into())
    );
    assert_eq!(
        upgrade(&r, "Authorization: Bearer nope\r\n", ""),
        (401, r#"{"error":"ticket_invalid"}"#.into())
    );
    assert_eq!(
        upgrade(&r, &format!("Authorization: Bearer {expired}\r\n"), ""),
        (401, r#"{"error":"ticket_expired"}"#.into())
    );
    assert_eq!(
        upgrade(&r, &format!("Authorization: Bearer {revoked}\r\n"), ""),
        (401, r#"{"error":"ticket_revoked"}"#.into())
    );
    // Both ways of presenting a ticket work.
    let (s, _) = upgrade(&r, &format!("Authorization: Bearer {good}\r\n"), "");
    assert_eq!(s, 101);
    let (s, _) = upgrade(&r, "", &format!("?ticket={good}"));
    assert_eq!(s, 101);
    // A valid ticket on a request that is not a WebSocket handshake.
    let (s, _) = raw_http(
        r.addr,
        format!("GET /ws HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {good}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    assert_eq!(s, 400);
    // The ticket never reaches the logs.
    let log = r.log_text();
    for t in [&good, &expired, &revoked] {
        assert!(!log.contains(t.as_str()), "ticket in log");
    }
    assert!(log.contains("tester"), "uid should be logged");
}

/// A ticket written to the ticket file a moment before its first use is accepted at once,
/// whenever the relay's next periodic re-read would come.
#[test]
fn a_ticket_issued_a_moment_ago_is_accepted_at_once() {
    let r = Relay::builder()
        .config("[tickets]\nreload_interval = \"1h\"\n")
        .start();
    for uid in ["a", "b"] {
        let t = issue(&r.tickets(), "*", &["--uid", uid]);
        let mut c = r.ws(&t);
        c.send(json!({"op":"unsubscribe","id":1,"stream":"s"}));
        assert_eq!(c.json()["op"], "unsubscribed");
    }
    assert_eq!(
        upgrade(&r, "Authorization: Bearer never-issued\r\n", ""),
        (401, r#"{"error":"ticket_invalid"}"#.into())
    );
}

#[test]
fn failed_attempts_are_rate_limited_per_ip() {
    let r = Relay::start(&[]);
    let good = r.issue("*", &[]);
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(upgrade(&r, "Authorization: Bearer wrong\r\n", "").0);
    }
    assert_eq!(&statuses[..20], &[401; 20]);
    assert_eq!(
        upgrade(&r, "Authorization: Bearer wrong\r\n", ""),
        (429, r#"{"error":"rate_limited"}"#.into())
    );
    // A ticket valid in the snapshot is accepted from that address all the same (users
    // behind one NAT must not be locked out by one bad client).
    let _c = r.ws(&good);
    // Unknown tickets from it are still refused without further work.
    assert_eq!(
        upgrade(&r, "Authorization: Bearer other\r\n", ""),
        (429, r#"{"error":"rate_limited"}"#.into())
    );
}

#[test]
fn max_connections_per_ticket() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &["--max-connections", "2"]);
    let a = r.ws(&t);
    let _b = r.ws(&t);
    match Client::try_connect(r.addr, Some(&t)).map_err(|e| *e) {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body = resp.body().clone().unwrap_or_default();
            assert_eq!(
                String::from_utf8_lossy(&body),
                r#"{"error":"too_many_connections"}"#
            );
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("third connection admitted"),
    }
    a.close();
    // The slot comes back when the relay has seen the close.
    wait_for(
        "the closed connection to leave",
        Duration::from_secs(5),
        || r.metric("mediarelay_connections", "") < 2.0,
    );
    let _c = r.ws(&t);
}

#[test]
fn revocation_closes_connected_clients_with_4401() {
    let r = Relay::start(&[]);
    let t = r.issue("live/*", &[]);
    let other = r.issue("live/*", &[]);
    let mut c = r.ws(&t);
    let mut d = r.ws(&other);
    c.send(json!({"op":"subscribe","id":1,"stream":"live/x"}));
    assert_eq!(c.json()["op"], "subscribed");
    let start = Instant::now();
    r.revoke(&[&t]);
    let (code, msgs) = c.close_code();
    assert_eq!(code, Some(4401));
    assert!(
        msgs.iter()
            .any(|m| m == &json!({"op":"closing","reason":"ticket_revoked"})),
        "{msgs:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Others are untouched.
    d.send(json!({"op":"unsubscribe","id":2,"stream":"live/x"}));
    assert_eq!(d.json()["op"], "unsubscribed");
}

#[test]
fn revocation_by_id_and_expiry_while_connected() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &["--ttl", "2s"]);
    let mut c = r.ws(&t);
    let (code, msgs) = c.close_code();
    assert_eq!(code, Some(4401));
    assert!(
        msgs.iter().any(|m| m["reason"] == "ticket_expired"),
        "{msgs:?}"
    );

    let t2 = r.issue("*", &[]);
    let list = cli(&["ticket", "list", "--tickets", r.tickets().to_str().unwrap()]);
    let text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(!text.contains(&t2), "list must never print a ticket");
    let id = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(t2.as_bytes()))
    };
    assert!(text.contains(&id), "{text}");
    let mut c2 = r.ws(&t2);
    r.revoke(&["--id", &id]);
    assert_eq!(c2.close_code().0, Some(4401));
}

#[test]
fn issue_prints_only_the_ticket() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.json");
    let out = cli(&[
        "ticket",
        "issue",
        "--tickets",
        file.to_str().unwrap(),
        "--uid",
        "a",
        "--streams",
        "live/cam1,vod/*",
        "--ttl",
        "7d",
        "--max-connections",
        "3",
    ]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1);
    assert_eq!(stdout.trim().len(), 43);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("\"maxConnections\": 3"), "{text}");
    assert!(!text.contains(stdout.trim()));
    let bad = cli(&[
        "ticket",
        "issue",
        "--tickets",
        file.to_str().unwrap(),
        "--uid",
        "a",
        "--streams",
        "x",
        "--ttl",
        "soon",
    ]);
    assert!(!bad.status.success());
}

#[test]
fn malformed_ticket_file_keeps_the_last_good_snapshot() {
    let r = Relay::start(&[]);
    let t = r.issue("*", &[]);
    let _c = r.ws(&t);
    std::fs::write(r.tickets(), b"{\"tickets\": {\n  oops").unwrap();
    wait_for("the failed reload", Duration::from_secs(5), || {
        r.metric("mediarelay_ticket_sync_errors_total", "") >= 1.0
    });
    let _d = r.ws(&t);
    // A ticket the snapshot does not have cannot be checked against that file: 503, not
    // 401 (it may be in the file being rewritten).
    let (s, body) = upgrade(&r, "Authorization: Bearer unknown\r\n", "");
    assert_eq!(
        (s, body.as_str()),
        (503, r#"{"error":"tickets_unavailable"}"#)
    );
    let log = r.log_text();
    assert!(log.contains("line 2"), "error should say where: {log}");
    let (s, _) = http_get(r.admin, "/readyz").unwrap();
    assert_eq!(s, 200);
}

#[test]
fn refresh_replaces_the_ticket_of_an_open_connection() {
    let r = Relay::start(&[("MEDIARELAY_EXPIRING_NOTICE", "2s")]);
    let first = r.issue("live/*", &["--ttl", "3s"]);
    let mut c = r.ws(&first);
    c.send(json!({"op":"subscribe","id":1,"stream":"live/a"}));
    c.send(json!({"op":"subscribe","id":2,"stream":"live/b"}));
    // Within a second of connecting the ticket is 2 s from its end: `expiring`, once (in
    // any order with the two `subscribed`).
    let mut ops: Vec<String> = (0..3)
        .map(|_| {
            let v = c.json();
            if v["op"] == "expiring" {
                assert!(v["expiresAt"].as_str().unwrap().ends_with('Z'), "{v}");
            }
            v["op"].as_str().unwrap().to_string()
        })
        .collect();
    ops.sort();
    assert_eq!(ops, ["expiring", "subscribed", "subscribed"]);

    // Not valid, another user's: errors, and the old ticket stays in force.
    c.send(json!({"op":"refresh","id":3,"ticket":"nonsense"}));
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(3), Some("ticket_invalid"))
    );
    let other = r.issue("*", &["--uid", "someone-else"]);
    c.send(json!({"op":"refresh","id":4,"ticket":other}));
    let v = c.json();
    assert_eq!(
        (v["id"].as_u64(), v["code"].as_str()),
        (Some(4), Some("forbidden"))
    );

    // The same user's newer ticket, narrower: accepted; live/b is ended for it.
    let second = r.issue("live/a", &["--ttl", "1h"]);
    c.send(json!({"op":"refresh","id":5,"ticket":second}));
    let v = c.json();
    assert_eq!(
        (v["op"].as_str(), v["id"].as_u64()),
        (Some("refreshed"), Some(5)),
        "{v}"
    );
    assert!(v["expiresAt"].is_string());
    assert_eq!(
        c.json(),
        json!({"op":"unsubscribed","stream":"live/b","reason":"forbidden"})
    );
    // The first ticket expires: the connection lives on with the second.
    let expiry = Instant::now() + Duration::from_secs(3);
    wait_for("the first ticket's expiry", Duration::from_secs(5), || {
        Instant::now() >= expiry
    });
    // Nothing to wait on for "not closed": give the 250 ms ticket sweep two rounds.
    std::thread::sleep(Duration::from_millis(600));
    c.send(json!({"op":"subscribe","id":6,"stream":"live/b"}));
    assert_eq!(c.json()["code"], "forbidden");
    c.send(json!({"op":"unsubscribe","id":7,"stream":"live/a"}));
    assert_eq!(c.json()["op"], "unsubscribed");
    // Revoking the second ticket closes it.
    r.revoke(&[&second]);
    let (code, _) = c.close_code();
    assert_eq!(code, Some(4401));
    assert_eq!(
        r.metric("mediarelay_requests_total", "op=\"refresh\",result=\"ok\""),
        1.0
    );
}

#[test]
fn refresh_moves_the_connection_slot() {
    let r = Relay::start(&[]);
    let a = r.issue("*", &[]);
    let b = r.issue("*", &["--max-connections", "1"]);
    let mut c = r.ws(&a);
    c.send(json!({"op":"refresh","id":1,"ticket":b}));
    assert_eq!(c.json()["op"], "refreshed");
    // The connection holds b's only slot now.
    match Client::try_connect(r.addr, Some(&b)).map_err(|e| *e) {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        other => panic!("a second connection with b: {:?}", other.map(|_| ())),
    }
    // Refreshing again to b (the same ticket) changes nothing; its slot is kept.
    c.send(json!({"op":"refresh","id":2,"ticket":b}));
    assert_eq!(c.json()["op"], "refreshed");
    c.close();
    wait_for("the slot to come back", Duration::from_secs(5), || {
        Client::try_connect(r.addr, Some(&b)).is_ok()
    });
}

#[test]
fn watch_refreshes_its_ticket_with_a_command() {
    let r = Relay::start(&[("MEDIARELAY_EXPIRING_NOTICE", "5s")]);
    let first = r.issue("live/*", &["--ttl", "10s"]);
    let second = r.issue("live/*", &["--ttl", "1h"]);
    let ticket_file = r.dir.path().join("next-ticket");
    std::fs::write(&ticket_file, format!("{second}\n")).unwrap();
    let out_file = r.dir.path().join("watch.out");
    let mut watch = std::process::Command::new(BIN)
        .args([
            "watch",
            "--url",
            &format!("ws://{}/ws", r.addr),
            "--stream",
            "live/w",
        ])
        .arg(format!("--ticket={first}"))
        .arg("--refresh-cmd")
        .arg(format!("cat {}", ticket_file.display()))
        .stdout(std::fs::File::create(&out_file).unwrap())
        .spawn()
        .unwrap();
    wait_for(
        "watch to refresh its ticket",
        Duration::from_secs(10),
        || std::fs::read_to_string(&out_file).is_ok_and(|t| t.contains("\"op\":\"refreshed\"")),
    );
    let _ = watch.kill();
    let _ = watch.wait();
    let out = std::fs::read_to_string(&out_file).unwrap();
    assert!(out.contains("\"op\":\"expiring\""), "{out}");
    assert!(!out.contains(&second), "the ticket is never printed: {out}");
}
