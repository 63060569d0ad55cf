//! Google's Firestore emulator (the `google-cloud-cli-firestore-emulator` Debian package,
//! installed by scripts/test.sh) on a loopback port, one per test, and the writes tests
//! make to it directly (as another writer of the collection would).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::free_port;

/// Where the Debian package puts the emulator (`FIRESTORE_EMULATOR_BIN` overrides).
const DEFAULT_BIN: &str =
    "/usr/lib/google-cloud-sdk/platform/cloud-firestore-emulator/cloud_firestore_emulator";

pub const COLLECTION: &str = "tickets";

/// A running emulator.
pub struct Emulator {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub project: String,
    log: tempfile::NamedTempFile,
}

impl Emulator {
    /// Start one on a free port and wait until it answers.
    pub fn start(project: &str) -> Emulator {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut e = Emulator {
            child: None,
            addr,
            project: project.to_string(),
            log,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let bin = std::env::var("FIRESTORE_EMULATOR_BIN").unwrap_or_else(|_| DEFAULT_BIN.into());
        assert!(
            std::path::Path::new(&bin).exists(),
            "{bin} is missing: scripts/test.sh installs Debian's google-cloud-cli-firestore-emulator"
        );
        let child = Command::new(&bin)
            .args([
                "--host",
                "127.0.0.1",
                "--port",
                &self.addr.port().to_string(),
            ])
            .env("JAVA_OPTS", "-Xmx256m")
            .stdin(Stdio::null())
            .stdout(self.log.reopen().unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the Firestore emulator");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if answers(self.addr) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the Firestore emulator did not start: {}",
                std::fs::read_to_string(self.log.path()).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it (its data is gone: the emulator keeps documents in memory). The command is
    /// a script that starts a JVM, so it is asked to shut down over HTTP, not killed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if answers(self.addr) {
                let _ = std::panic::catch_unwind(|| post_json(self.addr, "/shutdown", b""));
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(self.addr).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same port, empty.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The relay's `--tickets` value for the collection.
    pub fn url(&self) -> String {
        format!("firestore://{}/{COLLECTION}", self.project)
    }

    fn root(&self) -> String {
        format!("projects/{}/databases/(default)/documents", self.project)
    }

    /// The full name of the document of a ticket id (hex).
    pub fn doc_name(&self, id_hex: &str) -> String {
        format!("{}/{COLLECTION}/{id_hex}", self.root())
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let (status, out) = post_json(self.addr, path, body.to_string().as_bytes());
        (status, serde_json::from_slice(&out).unwrap_or(Value::Null))
    }

    /// Write ticket documents in one commit: `updatedAt` is the server's request time, the
    /// same for all of them (as a batch written by an application would be).
    pub fn write(&self, docs: &[(String, Value)]) {
        let writes: Vec<Value> = docs
            .iter()
            .map(|(id_hex, fields)| {
                json!({"update": {"name": self.doc_name(id_hex), "fields": fields},
                       "updateTransforms": [{"fieldPath": "updatedAt",
                                             "setToServerValue": "REQUEST_TIME"}]})
            })
            .collect();
        for chunk in writes.chunks(500) {
            let (status, body) = self.post(
                &format!("/v1/{}:commit", self.root()),
                &json!({"writes": chunk}),
            );
            assert_eq!(status, 200, "{body}");
        }
    }

    /// Delete a ticket document.
    pub fn delete(&self, id_hex: &str) {
        let (status, body) = self.post(
            &format!("/v1/{}:commit", self.root()),
            &json!({"writes": [{"delete": self.doc_name(id_hex)}]}),
        );
        assert_eq!(status, 200, "{body}");
    }
}

/// POST a JSON body; the status and the body (the emulator keeps connections open and may
/// answer chunked, so the response is read by its framing, not to EOF).
fn post_json(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAuthorization: Bearer owner\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (mut length, mut chunked) = (None, false);
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse::<usize>().ok();
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
            chunked = true;
        }
    }
    let mut out = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut chunk = vec![0u8; n + 2];
            r.read_exact(&mut chunk).unwrap();
            out.extend_from_slice(&chunk[..n]);
        }
    } else if let Some(n) = length {
        out.resize(n, 0);
        r.read_exact(&mut out).unwrap();
    }
    (status, out)
}

/// Whether the emulator answers `GET /` with 200.
fn answers(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A ticket document's fields (`updatedAt` is set by the write).
pub fn ticket_fields(uid: &str, streams: &[&str], expires: &str, revoked: bool) -> Value {
    let values: Vec<Value> = streams.iter().map(|s| json!({"stringValue": s})).collect();
    json!({
        "uid": {"stringValue": uid},
        "streams": {"arrayValue": if values.is_empty() { json!({}) } else { json!({"values": values}) }},
        "expiresAt": {"timestampValue": expires},
        "revoked": {"booleanValue": revoked},
    })
}
