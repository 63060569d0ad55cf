//! Smoke runs of every `mediarelay-load` scenario against the real relay: a few seconds,
//! small N each, checking that the report is consistent with itself and with what the
//! relay says it did (bytes received equal the bytes the relay counted as sent).
//!
//! Needs the load generator built (`cargo build --workspace`; scripts/test.sh does it).

mod support;

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;
use support::Relay;

fn load_bin() -> PathBuf {
    // target/<profile>/deps/loadtest-HASH -> target/<profile>/mediarelay-load
    let exe = std::env::current_exe().expect("test executable path");
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("mediarelay-load"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --workspace` first",
        bin.display()
    );
    bin
}

/// Runs one scenario with `--json` against `relay` and returns its report.
fn run(relay: &Relay, ticket: &str, args: &[&str]) -> Value {
    let pid = relay
        .child
        .as_ref()
        .expect("relay running")
        .id()
        .to_string();
    let out = Command::new(load_bin())
        .args(["--addr", &relay.addr.to_string(), "--ticket", ticket])
        .args(["--server-pid", &pid, "--json", "--threads", "2"])
        .args(args)
        .output()
        .expect("run mediarelay-load");
    assert!(
        out.status.success(),
        "mediarelay-load {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn sent_bytes(relay: &Relay) -> u64 {
    relay.metric("mediarelay_sent_bytes_total", "") as u64
}

#[test]
fn vod_and_gets_reports_match_the_relay() {
    let relay = Relay::start(&[]);
    for i in 0..10 {
        relay.put(&format!("vod/smoke/{i}.bin"), &vec![i as u8; 65536 + i]);
    }
    let ticket = relay.issue("vod/*", &[]);

    let before = sent_bytes(&relay);
    let r = run(
        &relay,
        &ticket,
        &[
            "vod",
            "--connections",
            "8",
            "--inflight",
            "2",
            "--prefix",
            "vod/smoke/",
            "--keys",
            "10",
            "--count",
            "300",
            "--duration",
            "20",
        ],
    );
    assert_eq!(r["replies"], 300, "{r}");
    assert_eq!(r["errors"], serde_json::json!({}), "{r}");
    assert_eq!(r["failed_connections"], 0, "{r}");
    assert_eq!(r["latency_ms"]["count"], 300, "{r}");
    assert_eq!(r["handshake_ms"]["count"], 8, "{r}");
    let received = r["received_bytes"].as_u64().unwrap();
    assert_eq!(received, sent_bytes(&relay) - before, "{r}");
    // 300 replies of 65,536..65,545 payload bytes plus frame heads and meta.
    assert!(received > 300 * 65536 && received < 300 * 65800, "{r}");
    assert!(r["server_cpu_seconds"].as_f64().is_some(), "{r}");

    let before = sent_bytes(&relay);
    let r = run(
        &relay,
        &ticket,
        &["gets", "--prefix", "vod/smoke/", "--count", "10"],
    );
    assert_eq!(r["replies"], 10, "{r}");
    assert_eq!(r["scenario"], "gets");
    assert_eq!(
        r["received_bytes"].as_u64().unwrap(),
        sent_bytes(&relay) - before
    );

    // A key that does not exist is counted as an error by kind, not as a reply's bytes.
    let r = run(
        &relay,
        &ticket,
        &[
            "vod",
            "--connections",
            "1",
            "--prefix",
            "vod/missing/",
            "--keys",
            "1",
            "--count",
            "3",
        ],
    );
    assert_eq!(r["errors"]["not_found"], 3, "{r}");
}

#[test]
fn fanout_and_mixed_reports_match_the_relay() {
    let relay = Relay::start(&[("MEDIARELAY_SEND_QUEUE", "256KiB")]);
    let ticket = relay.issue("*", &[]);
    let storage = relay.media();
    let storage = storage.to_str().unwrap();

    let before = sent_bytes(&relay);
    let r = run(
        &relay,
        &ticket,
        &[
            "fanout",
            "--subscribers",
            "20",
            "--streams",
            "2",
            "--storage",
            storage,
            "--stream",
            "live/smoke",
            "--size",
            "16384",
            "--rate",
            "20",
            "--count",
            "10",
            "--duration",
            "30",
        ],
    );
    assert_eq!(r["subscribers"], 20, "{r}");
    assert_eq!(r["segments_produced"], 10, "{r}");
    assert_eq!(r["segments_expected"], 200, "{r}");
    assert_eq!(r["segments_delivered"], 200, "{r}");
    assert_eq!(r["lag_ms"]["count"], 200, "{r}");
    assert_eq!(r["skipped_messages"], 0, "{r}");
    assert_eq!(
        r["received_bytes"].as_u64().unwrap(),
        sent_bytes(&relay) - before,
        "{r}"
    );
    // Two streams: one poller each, one fetch per segment per stream.
    assert_eq!(
        relay.metric("mediarelay_segments_published_total", ""),
        20.0
    );

    // Slow readers (8 KiB/s against 32 KiB/s of segments) and stalled ones beside normal
    // ones: the normal ones get everything.
    let r = run(
        &relay,
        &ticket,
        &[
            "mixed",
            "--subscribers",
            "10",
            "--slow",
            "2",
            "--slow-rate",
            "8192",
            "--stalled",
            "2",
            "--storage",
            storage,
            "--stream",
            "live/mixed",
            "--size",
            "16384",
            "--rate",
            "2",
            "--count",
            "6",
            "--duration",
            "30",
        ],
    );
    assert_eq!(r["scenario"], "mixed");
    assert_eq!(r["segments_delivered"], 60, "{r}");
    assert_eq!(r["normal_unaffected"], true, "{r}");
    assert_eq!(r["slow"]["subscribers"], 2, "{r}");
    assert_eq!(r["stalled_subscribers"], 2, "{r}");
}

#[test]
fn connect_and_idle_reports_match_the_relay() {
    let relay = Relay::start(&[("MEDIARELAY_AUTH_FAILURE_LIMIT", "0")]);
    let ticket = relay.issue("*", &[]);
    let ok_before = relay.metric("mediarelay_upgrades_total", "result=\"ok\"");
    let r = run(
        &relay,
        &ticket,
        &[
            "connect",
            "--count",
            "200",
            "--concurrency",
            "8",
            "--bad-share",
            "0.1",
        ],
    );
    assert_eq!(r["attempts"], 200, "{r}");
    assert_eq!(r["statuses"]["101"], 180, "{r}");
    assert_eq!(r["statuses"]["401"], 20, "{r}");
    assert_eq!(
        relay.metric("mediarelay_upgrades_total", "result=\"ok\"") - ok_before,
        180.0
    );

    let r = run(
        &relay,
        &ticket,
        &["idle", "--connections", "50", "--hold", "0.2"],
    );
    assert_eq!(r["connections"], 50, "{r}");
    assert_eq!(r["failed"], 0, "{r}");
    assert!(r["server_kib_per_connection"].as_f64().is_some(), "{r}");
}

#[test]
fn tickets_come_from_a_file_or_the_cli() {
    let relay = Relay::start(&[]);
    relay.put("vod/t/0.bin", b"hello");
    let ticket = relay.issue("*", &[]);
    let file = relay.dir.path().join("ticket.txt");
    std::fs::write(&file, format!("{ticket}\n")).unwrap();
    let out = Command::new(load_bin())
        .args(["--addr", &relay.addr.to_string()])
        .args(["--ticket-file", file.to_str().unwrap(), "--json"])
        .args(["gets", "--prefix", "vod/t/", "--count", "1"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["replies"], 1, "{r}");

    // --issue-ticket runs `mediarelay ticket issue` against the relay's ticket file and
    // waits until the relay accepts the new ticket.
    let before = relay.metric("mediarelay_ticket_snapshot_entries", "");
    let out = Command::new(load_bin())
        .args(["--addr", &relay.addr.to_string()])
        .args(["--issue-ticket", relay.tickets().to_str().unwrap()])
        .args(["--mediarelay", env!("CARGO_BIN_EXE_mediarelay"), "--json"])
        .args(["gets", "--prefix", "vod/t/", "--count", "1"])
        .output()
        .unwrap();
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(r["replies"], 1, "{r}");
    assert!(relay.metric("mediarelay_ticket_snapshot_entries", "") > before);
}
