//! Tickets from Firestore, against Google's own Firestore emulator (one per test): a
//! collection empty at start, paging among equal `updatedAt` values, the incremental sync,
//! point lookups, the `ticket` CLI, revocation and deletion reaching open connections, a
//! warm start with the store down, and the store coming back empty. The faults the
//! emulator cannot produce are in tests/firestore_faults.rs.

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use sha2::Digest;
use support::emulator::{ticket_fields, Emulator};
use support::*;

fn id_of(ticket: &str) -> String {
    hex::encode(sha2::Sha256::digest(ticket.as_bytes()))
}

/// `mediarelay ticket ARGS --tickets <the emulator's collection>`.
fn cli_fs(e: &Emulator, args: &[&str]) -> std::process::Output {
    let url = e.url();
    let mut all: Vec<&str> = args.to_vec();
    all.extend_from_slice(&["--tickets", &url]);
    std::process::Command::new(BIN)
        .args(&all)
        .env("FIRESTORE_EMULATOR_HOST", e.addr.to_string())
        .output()
        .unwrap()
}

/// Issue a ticket with the CLI; returns it.
fn issue(e: &Emulator, streams: &str) -> String {
    let out = cli_fs(
        e,
        &["ticket", "issue", "--uid", "fs-user", "--streams", streams],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Revoke a ticket with the CLI.
fn revoke(e: &Emulator, ticket: &str) {
    let out = cli_fs(e, &["ticket", "revoke", ticket]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Write `n` tickets straight into the collection, 500 to a commit (each commit's
/// documents share one `updatedAt`); returns the ticket strings.
fn plant(e: &Emulator, tag: &str, n: usize) -> Vec<String> {
    let tickets: Vec<String> = (0..n).map(|i| format!("{tag}-ticket-{i}")).collect();
    let docs: Vec<_> = tickets
        .iter()
        .map(|t| {
            (
                id_of(t),
                ticket_fields("bulk", &["live/*"], "2099-01-01T00:00:00Z", false),
            )
        })
        .collect();
    e.write(&docs);
    tickets
}

fn relay(e: &Emulator, env: &[(&str, &str)]) -> Relay {
    Relay::builder()
        .firestore(e.addr, &e.url())
        .env(env)
        .start()
}

fn entries(r: &Relay) -> f64 {
    r.metric("mediarelay_ticket_snapshot_entries", "")
}

/// Wait for the connection to be closed with 4401; returns how long it took.
fn closed_with_4401(c: &mut Client, since: Instant) -> Duration {
    c.set_timeout(Duration::from_secs(15));
    let (code, msgs) = c.close_code();
    assert_eq!(code, Some(4401), "{msgs:?}");
    since.elapsed()
}

#[test]
fn an_empty_collection_at_start_then_tickets_written_and_revoked() {
    let e = Emulator::start("empty-start");
    let r = relay(&e, &[("MEDIARELAY_SYNC_INTERVAL", "200ms")]);
    assert_eq!(entries(&r), 0.0);
    // Written after the start: the incremental sync brings it in (no sync errors).
    let t = issue(&e, "live/*");
    wait_for(
        "the sync to bring the ticket",
        Duration::from_secs(5),
        || entries(&r) == 1.0,
    );
    assert_eq!(r.metric("mediarelay_ticket_sync_errors_total", ""), 0.0);
    let mut c = r.ws(&t);
    c.send(json!({"op":"subscribe","id":1,"stream":"live/a"}));
    assert_eq!(c.json()["op"], "subscribed");
    // Revoked: the connection is closed within 2 s.
    let start = Instant::now();
    revoke(&e, &t);
    let took = closed_with_4401(&mut c, start);
    eprintln!(
        "revocation after an empty start: 4401 {} ms after the write",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(r.metric("mediarelay_ticket_sync_errors_total", ""), 0.0);
}

#[test]
fn paging_among_equal_update_times_and_the_incremental_sync() {
    let e = Emulator::start("paging");
    let first = plant(&e, "first", 2_600);
    let r = relay(&e, &[("MEDIARELAY_SYNC_INTERVAL", "200ms")]);
    assert_eq!(entries(&r), 2_600.0);
    // 1,200 more in three commits (ties across the sync's 1,000-document pages).
    let later = plant(&e, "later", 1_200);
    wait_for("the incremental sync", Duration::from_secs(10), || {
        entries(&r) == 3_800.0
    });
    for t in [&first[0], &first[2_599], &later[0], &later[1_199]] {
        let _c = r.ws(t);
    }
    assert_eq!(r.metric("mediarelay_ticket_sync_errors_total", ""), 0.0);
}

#[test]
fn point_lookups_and_the_cli() {
    let e = Emulator::start("lookups");
    plant(&e, "old", 2);
    // A slow sync: a new ticket is found by its point lookup.
    let r = relay(&e, &[("MEDIARELAY_SYNC_INTERVAL", "60s")]);
    let fresh = issue(&e, "*");
    let _a = r.ws(&fresh);
    assert_eq!(r.metric("mediarelay_ticket_lookups_total", "found"), 1.0);
    // A ticket the store does not have: 401 (the store answered).
    let (status, body) = raw_upgrade(r.addr, "Authorization: Bearer never-issued\r\n", "");
    assert_eq!(
        (status, body.as_str()),
        (401, r#"{"error":"ticket_invalid"}"#)
    );
    assert_eq!(r.metric("mediarelay_ticket_lookups_total", "missing"), 1.0);
    // Publish rights travel through the store.
    let out = cli_fs(
        &e,
        &[
            "ticket",
            "issue",
            "--uid",
            "encoder",
            "--streams",
            "live/cam1",
            "--publish",
            "live/cam1,live/cam2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let encoder = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let _b = r.ws(&encoder);
    // A refresh round trip with a ticket only the store knows (one point lookup), and
    // with one already in the snapshot.
    let mut c = r.ws(&fresh);
    for round in ["point lookup", "snapshot"] {
        let newer = if round == "snapshot" {
            fresh.clone()
        } else {
            issue(&e, "*")
        };
        let start = Instant::now();
        c.send(json!({"op":"refresh","id":1,"ticket":newer}));
        let v = c.json();
        assert_eq!(v["op"], "refreshed", "{v}");
        eprintln!(
            "refresh round trip ({round}): {} µs",
            start.elapsed().as_micros()
        );
    }
    drop(c);
    // The CLI lists from Firestore and never prints a ticket.
    revoke(&e, &fresh);
    let out = cli_fs(&e, &["ticket", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&id_of(&fresh)) && !text.contains(&fresh),
        "{text}"
    );
    assert!(text.contains("revoked"), "{text}");
    assert!(text.contains("live/cam1,live/cam2"), "{text}");
    // Revoking a ticket the store does not have is an error.
    let out = cli_fs(&e, &["ticket", "revoke", "never-issued"]);
    assert!(!out.status.success());
}

#[test]
fn a_deleted_document_closes_its_connections() {
    let e = Emulator::start("deletion");
    let t = plant(&e, "del", 3);
    let r = relay(
        &e,
        &[
            ("MEDIARELAY_SYNC_INTERVAL", "200ms"),
            ("MEDIARELAY_DELETION_CHECK_INTERVAL", "1s"),
        ],
    );
    let mut c = r.ws(&t[1]);
    let start = Instant::now();
    e.delete(&id_of(&t[1]));
    let took = closed_with_4401(&mut c, start);
    eprintln!("deletion: 4401 {} ms after the delete", took.as_millis());
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(entries(&r), 2.0);
    let _ok = r.ws(&t[0]);
}

#[test]
fn warm_start_with_the_store_down_then_the_store_back_empty() {
    let mut e = Emulator::start("warm");
    let t = plant(&e, "warm", 20);
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_path_buf();
    let mut r = Relay::builder()
        .dir(dir)
        .firestore(e.addr, &e.url())
        .start();
    let snap = keep.join("tickets.snapshot.json");
    wait_for("the persisted snapshot", Duration::from_secs(5), || {
        snap.exists()
    });
    r.signal("TERM");
    r.wait_exit(Duration::from_secs(12)).expect("exit");
    // The store is down: the relay starts from its persisted snapshot.
    e.stop();
    let dir2 = tempfile::tempdir().unwrap();
    std::fs::copy(&snap, dir2.path().join("tickets.snapshot.json")).unwrap();
    let r2 = Relay::builder()
        .dir(dir2)
        .firestore(e.addr, &e.url())
        .env(&[
            ("MEDIARELAY_SYNC_INTERVAL", "200ms"),
            ("MEDIARELAY_DELETION_CHECK_INTERVAL", "1s"),
            ("MEDIARELAY_LOOKUP_TIMEOUT", "500ms"),
        ])
        .start();
    let mut c = r2.ws(&t[3]);
    // A ticket it cannot check while the store is down: 503, never 401.
    let (status, body) = raw_upgrade(r2.addr, "Authorization: Bearer unknown\r\n", "");
    assert_eq!(
        (status, body.as_str()),
        (503, r#"{"error":"tickets_unavailable"}"#)
    );
    // The store comes back empty (the emulator keeps nothing across a restart): the
    // relay follows the store, whose tickets are gone, so its connections are closed.
    let start = Instant::now();
    e.restart();
    let took = closed_with_4401(&mut c, start);
    eprintln!(
        "store back empty: 4401 {} ms after the restart",
        took.as_millis()
    );
    wait_for("the empty snapshot", Duration::from_secs(10), || {
        entries(&r2) == 0.0
    });
}
