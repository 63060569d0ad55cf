//! The fake Firestore REST server (tests/support/fake_firestore.py) on a loopback port.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::free_port;
use super::gcs::request;

pub const PROJECT: &str = "test-project";
pub const COLLECTION: &str = "tickets";

pub struct FakeFirestore {
    child: Child,
    pub addr: SocketAddr,
}

impl FakeFirestore {
    pub fn start() -> FakeFirestore {
        let port = free_port();
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/support/fake_firestore.py"
        );
        let child = Command::new("python3")
            .arg(script)
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the fake Firestore");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "fake Firestore did not start");
            std::thread::sleep(Duration::from_millis(30));
        }
        FakeFirestore { child, addr }
    }

    pub fn url(&self) -> String {
        format!("firestore://{PROJECT}/{COLLECTION}")
    }

    pub fn doc_name(id_hex: &str) -> String {
        format!("projects/{PROJECT}/databases/(default)/documents/{COLLECTION}/{id_hex}")
    }

    pub fn control(&self, what: &str, body: &Value) -> (u16, Vec<u8>) {
        request(
            self.addr,
            "POST",
            &format!("/__control/{what}"),
            "application/json",
            body.to_string().as_bytes(),
        )
    }

    pub fn stats(&self) -> Value {
        let (_, body) = request(
            self.addr,
            "GET",
            "/__control/stats",
            "application/json",
            b"",
        );
        serde_json::from_slice(&body).unwrap()
    }

    pub fn set_down(&self, down: bool) {
        self.control(if down { "down" } else { "up" }, &json!({}));
    }

    pub fn delete(&self, id_hex: &str) {
        let path = format!("/v1/{}", Self::doc_name(id_hex));
        let mut s = TcpStream::connect(self.addr).unwrap();
        use std::io::{Read, Write};
        write!(
            s,
            "DELETE {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer owner\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        assert!(
            out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
            "{out}"
        );
    }
}

impl Drop for FakeFirestore {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A ticket document's fields.
pub fn fields(uid: &str, streams: &[&str], expires: &str, revoked: bool) -> Value {
    let values: Vec<Value> = streams.iter().map(|s| json!({"stringValue": s})).collect();
    json!({
        "uid": {"stringValue": uid},
        "streams": {"arrayValue": if values.is_empty() { json!({}) } else { json!({"values": values}) }},
        "expiresAt": {"timestampValue": expires},
        "revoked": {"booleanValue": revoked},
        "updatedAt": {"timestampValue": "2026-01-01T00:00:00.000000001Z"},
    })
}
