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
    let r = Relay::builder()
        .config("[connection]\nmax_subscriptions = 3\n[server]\nbacklog = 512\n")
        .start();
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
    let _ = raw_upgrade(r.addr, "", &format!("?ticket={t}"));
    r.revoke(&[&t]);
    assert_eq!(c.close_code().0, Some(4401));
    let log = r.log_text();
    assert!(log.contains("tester"), "the uid should be logged");
    assert!(!log.contains(&t), "a ticket reached the log");
    assert!(!log.contains(&t[..20]), "part of a ticket reached the log");
}

/// Ask the relay for `n` gets of `key` and wait for each answer.
fn gets(c: &mut Client, key: &str, n: usize) {
    for i in 0..n {
        c.send(json!({"op":"get","id":i,"key":key}));
        let _ = c.recv();
    }
}

fn which(bin: &str) -> std::path::PathBuf {
    let out = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "`{bin}` not found: scripts/test.sh installs Debian's prometheus package"
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}

#[test]
fn metrics_pass_promtool_after_traffic() {
    let r = Relay::start(&[]);
    r.put("vod/a.bin", b"hello");
    let t = r.issue("*", &[]);
    let mut c = r.ws(&t);
    gets(&mut c, "vod/a.bin", 3);
    gets(&mut c, "vod/missing", 2);
    let _ = Client::try_connect(r.addr, Some("bad-ticket"));
    let (status, body) = http_get(r.admin, "/metrics").unwrap();
    assert_eq!(status, 200);
    let mut p = std::process::Command::new(which("promtool"))
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    p.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let out = p.wait_with_output().unwrap();
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool: {report}"
    );
    // One read of the cached object, one per miss (misses are not cached).
    assert!(
        body.contains("mediarelay_origin_fetch_seconds_count{backend=\"fs\"} 3"),
        "{body}"
    );
}

#[test]
fn prometheus_scrapes_what_the_traffic_did() {
    let r = Relay::start(&[]);
    r.put("vod/a.bin", &[7u8; 1000]);
    let t = r.issue("*", &[]);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: relay\n    static_configs:\n      - targets: ['{}']\n",
            r.admin
        ),
    )
    .unwrap();
    let mut prom = std::process::Command::new(which("prometheus"))
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("prometheus.log")).unwrap())
        .spawn()
        .unwrap();
    let mut c = r.ws(&t);
    gets(&mut c, "vod/a.bin", 7);
    gets(&mut c, "vod/missing", 3);
    let prom_addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let query = |q: &str| -> Option<f64> {
        let (status, body) = http_get(
            prom_addr,
            &format!("/api/v1/query?query={}", support::gcs::encode(q)),
        )
        .ok()?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = [
        (
            r#"sum(mediarelay_requests_total{op="get",result="ok"})"#,
            7.0,
        ),
        (
            r#"sum(mediarelay_requests_total{op="get",result="not_found"})"#,
            3.0,
        ),
        (r#"sum(mediarelay_upgrades_total{result="ok"})"#, 1.0),
        ("sum(mediarelay_connections)", 1.0),
    ];
    loop {
        let last: Vec<Option<f64>> = want.iter().map(|(q, _)| query(q)).collect();
        if want.iter().zip(&last).all(|((_, w), got)| *got == Some(*w)) {
            break;
        }
        if Instant::now() > deadline {
            let _ = prom.kill();
            panic!(
                "Prometheus saw {last:?}, expected {:?}\n{}",
                want.iter().map(|w| w.1).collect::<Vec<_>>(),
                std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    // Bytes sent as Prometheus saw them cover the seven 1000-byte payloads.
    let sent = query("sum(mediarelay_sent_bytes_total)").unwrap_or(0.0);
    assert!(sent >= 7000.0, "{sent}");
    let _ = prom.kill();
    let _ = prom.wait();
}

#[test]
fn a_second_relay_on_the_same_address_is_refused() {
    let first = Relay::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let run = |listen: String, admin: String| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mediarelay"))
            .args(["serve", "--listen", &listen, "--admin", &admin])
            .arg("--storage")
            .arg(dir.path().join("media"))
            .arg("--tickets")
            .arg(dir.path().join("tickets.json"))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Same public address: SO_REUSEPORT would let it in; the relay refuses.
    let free = format!("127.0.0.1:{}", free_port());
    let (code, err) = run(first.addr.to_string(), free.clone());
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("address is in use"), "{err}");
    // Same admin address.
    let (code, err) = run(
        format!("127.0.0.1:{}", free_port()),
        first.admin.to_string(),
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains(&first.admin.to_string()), "{err}");
    // The first relay still serves every connection.
    let t = first.issue("*", &[]);
    let clients: Vec<Client> = (0..20).map(|_| first.ws(&t)).collect();
    assert_eq!(clients.len(), 20);
}

/// A relay stopped with SIGTERM frees its addresses before it exits: one started on them at
/// once (a restart) binds them. (With io_uring an accept in flight kept a closed listener
/// listening until after the process had exited, and a restart failed with "address in
/// use" about one time in three.)
#[test]
fn a_relay_restarted_at_once_gets_its_addresses() {
    let mut first = Relay::start(&[]);
    let (listen, admin) = (first.addr, first.admin);
    let t = first.issue("*", &[]);
    drop(first.ws(&t));
    first.signal("TERM");
    assert_eq!(
        first
            .wait_exit(Duration::from_secs(20))
            .and_then(|s| s.code()),
        Some(0)
    );
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let mut relay = std::process::Command::new(env!("CARGO_BIN_EXE_mediarelay"))
            .args([
                "serve",
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .arg("--storage")
            .arg(dir.path().join("media"))
            .arg("--tickets")
            .arg(dir.path().join("tickets.json"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = relay.try_wait() {
                let mut err = String::new();
                use std::io::Read;
                let _ = relay.stderr.take().unwrap().read_to_string(&mut err);
                panic!("restart {round} exited with {status}: {err}");
            }
            if matches!(http_get(admin, "/readyz"), Ok((200, _))) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "restart {round} never became ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Some traffic on both listeners, then stop it the same way.
        assert!(std::net::TcpStream::connect(listen).is_ok());
        std::process::Command::new("kill")
            .args(["-TERM", &relay.id().to_string()])
            .status()
            .unwrap();
        let status = relay.wait().unwrap();
        assert_eq!(status.code(), Some(0), "restart {round}");
    }
}
