//! Test helpers: start the real `mediarelay` binary on loopback, issue tickets through its
//! CLI, and talk to it with a real WebSocket client (tungstenite) or raw sockets.
#![allow(dead_code)]

pub mod emulator;
pub mod firestore;
pub mod gcs;
pub mod pubsub;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Message, WebSocket};

pub const BIN: &str = env!("CARGO_BIN_EXE_mediarelay");

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until `ready` holds, checking every 20 ms, for at most `within`; panics naming
/// `what` when it never does. The tests wait on observable state (a metric, a log line,
/// an HTTP answer), never for a fixed time.
pub fn wait_for(what: &str, within: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Text without ANSI escape sequences (the log's colours).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The value of `name=` in a log line.
fn log_field(line: &str, name: &str) -> Option<String> {
    let at = line.find(&format!("{name}="))? + name.len() + 1;
    Some(line[at..].split_whitespace().next()?.to_string())
}

/// Wait for the relay's "mediarelay serving" line and read its public and admin addresses
/// from it (the relay logs the ports it bound when given port 0).
pub fn wait_serving(log: &Path, child: &mut Child) -> Result<(SocketAddr, SocketAddr), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
        if let Some(line) = text.lines().find(|l| l.contains("mediarelay serving")) {
            let listen = log_field(line, "listen").and_then(|a| a.parse().ok());
            let admin = log_field(line, "admin").and_then(|a| a.parse().ok());
            return match (listen, admin) {
                (Some(l), Some(a)) => Ok((l, a)),
                _ => Err(format!("no addresses in `{line}`")),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err("no `mediarelay serving` line in 20 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running relay with its own storage directory and ticket file.
pub struct Relay {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub log: PathBuf,
}

/// How to start a relay, for every kind of test: local storage (the default) or a GCS
/// emulator, tickets from a file (the default) or a Firestore emulator, a config file,
/// extra `MEDIARELAY_*` variables, and the directory to run in (reuse one for a warm start).
#[derive(Default)]
pub struct RelayBuilder {
    dir: Option<tempfile::TempDir>,
    env: Vec<(String, String)>,
    config: Option<String>,
    gcs: Option<(SocketAddr, String)>,
    firestore: Option<(SocketAddr, String)>,
}

impl RelayBuilder {
    /// Extra environment (`MEDIARELAY_*` pairs and the like).
    pub fn env(mut self, env: &[(&str, &str)]) -> Self {
        self.env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Run in `dir` (its `media/`, `tickets.json`, snapshot and log).
    pub fn dir(mut self, dir: tempfile::TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// Start with `--config dir/config.toml`, written from `toml`.
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_string());
        self
    }

    /// Objects from the bucket `url` (`gs://...`) of the GCS emulator at `emulator`.
    pub fn gcs(mut self, emulator: SocketAddr, url: &str) -> Self {
        self.gcs = Some((emulator, url.to_string()));
        self
    }

    /// Tickets from the Firestore emulator at `emulator` (`url`: `firestore://...`), the
    /// snapshot persisted in the run directory.
    pub fn firestore(mut self, emulator: SocketAddr, url: &str) -> Self {
        self.firestore = Some((emulator, url.to_string()));
        self
    }

    /// Start the relay and wait until it is ready.
    pub fn start(self) -> Relay {
        let dir = self.dir.unwrap_or_else(|| tempfile::tempdir().unwrap());
        std::fs::create_dir_all(dir.path().join("media")).unwrap();
        if let Some(toml) = &self.config {
            std::fs::write(dir.path().join("config.toml"), toml).unwrap();
        }
        let mut env = Vec::new();
        if let Some((emulator, url)) = &self.gcs {
            env.push(("STORAGE_EMULATOR_HOST".to_string(), emulator.to_string()));
            env.push(("MEDIARELAY_STORAGE".to_string(), url.clone()));
        }
        if let Some((emulator, url)) = &self.firestore {
            let snap = dir.path().join("tickets.snapshot.json");
            env.push(("FIRESTORE_EMULATOR_HOST".to_string(), emulator.to_string()));
            env.push(("MEDIARELAY_TICKETS".to_string(), url.clone()));
            env.push((
                "MEDIARELAY_TICKET_SNAPSHOT".to_string(),
                snap.to_str().unwrap().to_string(),
            ));
        }
        env.extend(self.env);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Relay::start_with(dir, self.gcs.is_none(), &env)
    }
}

impl Relay {
    /// A builder for any kind of relay.
    pub fn builder() -> RelayBuilder {
        RelayBuilder::default()
    }

    /// Start with default settings plus `env` (MEDIARELAY_* pairs).
    pub fn start(env: &[(&str, &str)]) -> Relay {
        Relay::builder().env(env).start()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    fn start_with(dir: tempfile::TempDir, local_storage: bool, env: &[(&str, &str)]) -> Relay {
        // Port 0: the relay binds free ports and logs them (`mediarelay serving ...`).
        let log = dir.path().join("relay.log");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--admin")
            .arg("127.0.0.1:0")
            .args(if env.iter().any(|(k, _)| *k == "MEDIARELAY_TICKETS") {
                Vec::new()
            } else {
                vec![
                    "--tickets".into(),
                    dir.path().join("tickets.json").into_os_string(),
                ]
            })
            .arg("--workers")
            .arg("2")
            .env("MEDIARELAY_POLL_INTERVAL", "50ms")
            .env("MEDIARELAY_LOG_LEVEL", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if local_storage {
            cmd.arg("--storage").arg(dir.path().join("media"));
        }
        if dir.path().join("config.toml").exists() {
            cmd.arg("--config").arg(dir.path().join("config.toml"));
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start mediarelay");
        let (addr, admin) = match wait_serving(&log, &mut child) {
            Ok(addrs) => addrs,
            Err(why) => {
                let _ = child.kill();
                panic!(
                    "relay did not start: {why}; log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        let relay = Relay {
            child: Some(child),
            dir,
            addr,
            admin,
            log,
        };
        relay.wait_ready();
        relay
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok((status, _)) = http_get(self.admin, "/readyz") {
                if status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("relay not ready; log:\n{}", self.log_text());
    }

    pub fn media(&self) -> PathBuf {
        self.dir.path().join("media")
    }

    pub fn tickets(&self) -> PathBuf {
        self.dir.path().join("tickets.json")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Write an object into storage (temporary name, then rename).
    pub fn put(&self, key: &str, data: &[u8]) {
        put(&self.media(), key, data);
    }

    /// Issue a ticket with the CLI and wait until the relay's snapshot holds it.
    pub fn issue(&self, streams: &str, extra: &[&str]) -> String {
        let before = self.metric("mediarelay_ticket_snapshot_entries", "");
        let t = issue(&self.tickets(), streams, extra);
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.metric("mediarelay_ticket_snapshot_entries", "") <= before {
            assert!(
                Instant::now() < deadline,
                "ticket never reached the snapshot"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        t
    }

    /// Revoke a ticket (or, with `--id`, an id) with the CLI.
    pub fn revoke(&self, args: &[&str]) {
        let tickets = self.tickets();
        let mut all = vec!["ticket", "revoke", "--tickets", tickets.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = cli(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ws(&self, ticket: &str) -> Client {
        Client::connect(self.addr, Some(ticket))
    }

    /// A metric's value (sum over label sets matching `filter`).
    pub fn metric(&self, name: &str, filter: &str) -> f64 {
        let (_, body) = http_get(self.admin, "/metrics").unwrap();
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(filter))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().unwrap().id();
        Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn put(root: &Path, key: &str, data: &[u8]) {
    let path = root.join(key);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_file_name(format!(
        ".tmp-{}",
        path.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
}

pub fn issue(tickets: &Path, streams: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(["ticket", "issue", "--tickets"])
        .arg(tickets)
        .args(if extra.contains(&"--uid") {
            vec!["--streams", streams]
        } else {
            vec!["--uid", "tester", "--streams", streams]
        })
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

/// A plain HTTP/1.1 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    raw_http(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Send raw bytes, read the whole response; returns (status, body).
pub fn raw_http(addr: SocketAddr, request: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A raw WebSocket upgrade request to `/ws{query}` with `extra` header lines (each ending in
/// CRLF); returns (status, body).
pub fn raw_upgrade(addr: SocketAddr, extra: &str, query: &str) -> (u16, String) {
    raw_http(
        addr,
        format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
        )
        .as_bytes(),
    )
    .unwrap()
}

/// What a client received.
#[derive(Debug)]
pub enum Got {
    Json(Value),
    Media(Value, Vec<u8>),
    Closed(Option<u16>),
}

pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr, ticket: Option<&str>) -> Client {
        Client::try_connect(addr, ticket).expect("upgrade")
    }

    pub fn try_connect(
        addr: SocketAddr,
        ticket: Option<&str>,
    ) -> Result<Client, Box<tungstenite::Error>> {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        if let Some(t) = ticket {
            req.headers_mut()
                .insert("Authorization", format!("Bearer {t}").parse().unwrap());
        }
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let config = tungstenite::protocol::WebSocketConfig {
            max_message_size: Some(256 << 20),
            max_frame_size: Some(256 << 20),
            ..Default::default()
        };
        match tungstenite::client::client_with_config(req, sock, Some(config)) {
            Ok((ws, _)) => Ok(Client { ws }),
            Err(tungstenite::HandshakeError::Failure(e)) => Err(Box::new(e)),
            Err(e) => panic!("handshake: {e}"),
        }
    }

    pub fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string())).unwrap();
    }

    pub fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_string())).unwrap();
    }

    /// Send raw bytes on the socket (for malformed frames).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.ws.get_mut().write_all(bytes).unwrap();
    }

    pub fn set_timeout(&mut self, d: Duration) {
        self.ws.get_mut().set_read_timeout(Some(d)).unwrap();
    }

    /// Next message (pings and pongs skipped).
    pub fn recv(&mut self) -> Got {
        loop {
            match self.ws.read() {
                Ok(Message::Text(t)) => return Got::Json(serde_json::from_str(&t).unwrap()),
                Ok(Message::Binary(b)) => {
                    let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
                    let meta = serde_json::from_slice(&b[4..4 + n]).unwrap();
                    return Got::Media(meta, b[4 + n..].to_vec());
                }
                Ok(Message::Close(c)) => return Got::Closed(c.map(|c| u16::from(c.code))),
                Ok(_) => continue,
                Err(tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed) => {
                    return Got::Closed(None)
                }
                Err(e) => panic!("read: {e}"),
            }
        }
    }

    pub fn json(&mut self) -> Value {
        match self.recv() {
            Got::Json(v) => v,
            other => panic!("expected JSON, got {other:?}"),
        }
    }

    pub fn media(&mut self) -> (Value, Vec<u8>) {
        match self.recv() {
            Got::Media(m, p) => (m, p),
            other => panic!("expected media, got {other:?}"),
        }
    }

    /// Read until a close frame; returns its code (and JSON messages seen on the way).
    pub fn close_code(&mut self) -> (Option<u16>, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.recv() {
                Got::Closed(c) => return (c, seen),
                Got::Json(v) => seen.push(v),
                Got::Media(..) => {}
            }
        }
    }

    pub fn close(mut self) {
        let _ = self.ws.close(Some(tungstenite::protocol::CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        }));
    }
}

/// A masked client frame.
pub fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [9u8, 8, 7, 6];
    let mut v = vec![((fin as u8) << 7) | opcode];
    match payload.len() {
        n if n < 126 => v.push(0x80 | n as u8),
        n if n < 65536 => {
            v.push(0x80 | 126);
            v.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            v.push(0x80 | 127);
            v.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    v.extend_from_slice(&mask);
    v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    v
}

/// MiB that a loopback connection's two sockets can hold at most (the kernel's largest
/// receive and send buffers, `tcp_rmem` and `tcp_wmem`): a client that reads nothing
/// leaves anything beyond that in the relay's own queue.
pub fn socket_buffers_mib() -> u64 {
    let max_buffer = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
            .ok()
            .and_then(|t| t.split_whitespace().nth(2)?.parse::<u64>().ok())
            .unwrap_or(8 << 20)
    };
    (max_buffer("tcp_rmem") + max_buffer("tcp_wmem")) / (1 << 20)
}

pub fn seg_key(stream: &str, seq: u64) -> String {
    mediarelay::protocol::keys::segment_key(stream, seq, "m4s")
}
