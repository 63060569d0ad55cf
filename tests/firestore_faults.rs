//! Tickets from Firestore when the store misbehaves, against the wire-compatible fake
//! (tests/support/fake_firestore.py): outages on demand, malformed documents, and request
//! counts, which Google's emulator cannot give. Everything else runs against the emulator
//! itself (tests/firestore.rs).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest;
use support::firestore::{fields, FakeFirestore};
use support::*;

fn id_of(ticket: &str) -> String {
    hex::encode(sha2::Sha256::digest(ticket.as_bytes()))
}

/// Plant `n` valid tickets directly; returns the ticket strings.
fn plant(fs: &FakeFirestore, n: usize) -> Vec<String> {
    let tickets: Vec<String> = (0..n).map(|i| format!("planted-ticket-{i}")).collect();
    let docs: Vec<Value> = tickets
        .iter()
        .map(|t| {
            json!({"name": FakeFirestore::doc_name(&id_of(t)),
                   "fields": fields("bulk", &["live/*"], "2099-01-01T00:00:00Z", false)})
        })
        .collect();
    for chunk in docs.chunks(2000) {
        let (status, _) = fs.control("bulk", &Value::Array(chunk.to_vec()));
        assert_eq!(status, 200);
    }
    tickets
}

fn upgrade_status(r: &Relay, ticket: &str) -> u16 {
    raw_upgrade(r.addr, &format!("Authorization: Bearer {ticket}\r\n"), "").0
}

/// The response head of an upgrade with `ticket`.
fn raw_http_head(addr: std::net::SocketAddr, ticket: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {ticket}\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    text.split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn warm_start_and_outages() {
    let fs = FakeFirestore::start();
    let t = plant(&fs, 50);
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let mut r = Relay::builder()
        .dir(dir)
        .firestore(fs.addr, &fs.url())
        .start();
    // The snapshot is persisted after the full load.
    let snap = keep.join("tickets.snapshot.json");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !snap.exists() {
        assert!(Instant::now() < deadline, "snapshot never persisted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Firestore goes down mid-run: the relay keeps serving, and says how old its data is.
    fs.set_down(true);
    wait_for(
        "failed syncs and an old snapshot",
        Duration::from_secs(10),
        || {
            r.metric("mediarelay_ticket_sync_errors_total", "") >= 1.0
                && r.metric("mediarelay_ticket_snapshot_age_seconds", "") >= 1.5
        },
    );
    assert_eq!(upgrade_status(&r, &t[7]), 101);
    assert!(r.metric("mediarelay_ticket_snapshot_age_seconds", "") >= 1.5);
    assert!(r.metric("mediarelay_ticket_sync_errors_total", "") >= 1.0);
    let (status, body) = http_get(r.admin, "/readyz").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("ticket_snapshot_age_seconds"), "{body}");
    // Restart while Firestore is still down: warm start from the persisted snapshot.
    r.signal("TERM");
    r.wait_exit(Duration::from_secs(12)).expect("exit");
    let dir2 = tempfile::TempDir::new().unwrap();
    std::fs::copy(&snap, dir2.path().join("tickets.snapshot.json")).unwrap();
    let r2 = Relay::builder()
        .dir(dir2)
        .firestore(fs.addr, &fs.url())
        .start();
    assert_eq!(upgrade_status(&r2, &t[3]), 101);
    // A ticket the relay cannot check while the store is down is not called invalid: 503
    // `tickets_unavailable` with Retry-After, so the client retries instead of logging out.
    let (status, body) = raw_upgrade(r2.addr, "Authorization: Bearer never-issued\r\n", "");
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"error":"tickets_unavailable"}"#)
    );
    let head = raw_http_head(r2.addr, "never-issued");
    assert!(head.contains("Retry-After: 1"), "{head}");
    // Firestore back: sync resumes.
    fs.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while r2
        .metric("mediarelay_ticket_snapshot_age_seconds", "")
        .is_nan()
        || r2.metric("mediarelay_ticket_snapshot_age_seconds", "") > 1.5
    {
        assert!(Instant::now() < deadline, "sync did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unknown_ticket_flood_is_bounded_by_the_lookup_rate() {
    let fs = FakeFirestore::start();
    plant(&fs, 5);
    let r = Relay::builder()
        .dir(tempfile::tempdir().unwrap())
        .firestore(fs.addr, &fs.url())
        .env(&[
            ("MEDIARELAY_AUTH_FAILURE_LIMIT", "0"),
            ("MEDIARELAY_LOOKUP_RATE", "10"),
        ])
        .start();
    let gets_before = fs.stats()["get"].as_u64().unwrap();
    let start = Instant::now();
    // Tickets the store was asked about and does not have: 401. Once the lookup budget is
    // spent, the rest cannot be checked: 503 `tickets_unavailable`, never 401.
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..200 {
        *statuses
            .entry(upgrade_status(&r, &format!("unknown-{i}")))
            .or_insert(0) += 1;
    }
    assert_eq!(
        statuses.keys().copied().collect::<Vec<u16>>(),
        [401, 503],
        "{statuses:?}"
    );
    // The same unknown ticket again is answered from the negative cache.
    for _ in 0..20 {
        assert_eq!(upgrade_status(&r, "unknown-0"), 401);
    }
    let secs = start.elapsed().as_secs_f64();
    let gets = fs.stats()["get"].as_u64().unwrap() - gets_before;
    let bound = 10.0 + 10.0 * secs + 1.0;
    assert!(
        (gets as f64) <= bound,
        "{gets} Firestore reads in {secs:.2}s (bound {bound:.0})"
    );
    assert!(r.metric("mediarelay_ticket_lookups_total", "rate_limited") > 0.0);
}

#[test]
fn malformed_documents_are_skipped_and_named() {
    let fs = FakeFirestore::start();
    let good = plant(&fs, 2);
    let bad_id = "b".repeat(64);
    let (status, _) = fs.control(
        &format!("raw?name={}", FakeFirestore::doc_name(&bad_id)),
        &json!({"uid": {"integerValue": "7"}, "updatedAt": {"timestampValue": "2026-01-01T00:00:00Z"}}),
    );
    assert_eq!(status, 200);
    fs.control(
        "raw?name=projects/test-project/databases/(default)/documents/tickets/not-a-hash",
        &json!({"uid": {"stringValue": "x"}}),
    );
    let r = Relay::builder()
        .dir(tempfile::tempdir().unwrap())
        .firestore(fs.addr, &fs.url())
        .start();
    assert_eq!(r.metric("mediarelay_ticket_snapshot_entries", ""), 2.0);
    assert_eq!(upgrade_status(&r, &good[0]), 101);
    let log = r.log_text();
    assert!(
        log.contains(&bad_id),
        "the malformed document is not named in the log"
    );
    assert!(log.contains("not-a-hash"));
}
