//! Tickets from Firestore, against the wire-compatible fake (tests/support/fake_firestore.py).

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::Digest;
use support::firestore::{fields, FakeFirestore};
use support::*;

fn id_of(ticket: &str) -> String {
    hex::encode(sha2::Sha256::digest(ticket.as_bytes()))
}

/// `mediarelay ticket ...` against the fake.
fn cli_fs(fs: &FakeFirestore, args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env("FIRESTORE_EMULATOR_HOST", fs.addr.to_string())
        .output()
        .unwrap()
}

fn issue_fs(fs: &FakeFirestore, streams: &str) -> String {
    let url = fs.url();
    let out = cli_fs(
        fs,
        &[
            "ticket",
            "issue",
            "--tickets",
            &url,
            "--uid",
            "fs-user",
            "--streams",
            streams,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
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

#[test]
fn full_load_issue_and_revoke_while_connected() {
    let fs = FakeFirestore::start();
    let planted = plant(&fs, 10_000);
    let r = Relay::builder()
        .dir(tempfile::tempdir().unwrap())
        .firestore(fs.addr, &fs.url())
        .start();
    assert_eq!(r.metric("mediarelay_ticket_snapshot_entries", ""), 10_000.0);
    // 300 per page: at least 34 list requests.
    assert!(fs.stats()["list"].as_u64().unwrap() >= 34, "{}", fs.stats());
    let mut c = r.ws(&planted[9_999]);
    c.send(json!({"op":"subscribe","id":1,"stream":"live/a"}));
    assert_eq!(c.json()["op"], "subscribed");

    // Issued through the CLI while the relay runs: usable at once (point lookup or sync).
    let fresh = issue_fs(&fs, "live/*");
    let mut d = r.ws(&fresh);
    d.send(json!({"op":"subscribe","id":1,"stream":"live/b"}));
    assert_eq!(d.json()["op"], "subscribed");

    // Revoked through the CLI: 4401 within 2 s, others untouched.
    let start = Instant::now();
    let url = fs.url();
    let out = cli_fs(&fs, &["ticket", "revoke", "--tickets", &url, &fresh]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, msgs) = d.close_code();
    assert_eq!(code, Some(4401));
    assert!(
        msgs.iter().any(|m| m["reason"] == "ticket_revoked"),
        "{msgs:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    c.send(json!({"op":"unsubscribe","id":2,"stream":"live/a"}));
    assert_eq!(c.json()["op"], "unsubscribed");
    assert_eq!(upgrade_status(&r, &fresh), 401);

    // The CLI lists from Firestore and never prints a ticket.
    let out = cli_fs(&fs, &["ticket", "list", "--tickets", &url]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&id_of(&fresh)) && !text.contains(&fresh));
    assert!(text.contains("revoked"));
}

#[test]
fn deleted_documents_are_caught_by_the_full_resync() {
    let fs = FakeFirestore::start();
    let t = plant(&fs, 3);
    let r = Relay::builder()
        .dir(tempfile::tempdir().unwrap())
        .firestore(fs.addr, &fs.url())
        .env(&[("MEDIARELAY_FULL_RESYNC_INTERVAL", "2s")])
        .start();
    let mut c = r.ws(&t[1]);
    fs.delete(&id_of(&t[1]));
    let start = Instant::now();
    let (code, _) = c.close_code();
    assert_eq!(code, Some(4401));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(upgrade_status(&r, &t[0]), 101);
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
    assert_eq!(upgrade_status(&r2, "never-issued"), 401);
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
    for i in 0..200 {
        assert_eq!(upgrade_status(&r, &format!("unknown-{i}")), 401);
    }
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
fn a_new_ticket_is_found_by_one_point_lookup() {
    let fs = FakeFirestore::start();
    plant(&fs, 2);
    let r = Relay::builder()
        .dir(tempfile::tempdir().unwrap())
        .firestore(fs.addr, &fs.url())
        .env(&[("MEDIARELAY_SYNC_INTERVAL", "60s")])
        .start();
    let fresh = issue_fs(&fs, "*");
    let before = fs.stats()["get"].as_u64().unwrap();
    let _a = r.ws(&fresh);
    let _b = r.ws(&fresh);
    assert_eq!(fs.stats()["get"].as_u64().unwrap() - before, 1);
    assert_eq!(r.metric("mediarelay_ticket_lookups_total", "found"), 1.0);
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
