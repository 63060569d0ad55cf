//! The payload is never copied in user space: a counting global allocator watches the whole
//! process (relay and clients) while one 1 MiB object goes to 100 connections, as `get`
//! replies from the cache and as a live segment.
//!
//! The relay runs in-process here (the library's `serve`) so its allocations are counted;
//! the clients are raw sockets reading into one preallocated buffer each. On the default
//! send path the payloads also leave without the kernel copying them (`sendfile`), which the
//! relay's own metric confirms.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

struct Counting;

static BYTES: AtomicU64 = AtomicU64::new(0);
static LARGE: AtomicU64 = AtomicU64::new(0);
const LARGE_AT: usize = 64 * 1024;

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        if l.size() >= LARGE_AT {
            LARGE.fetch_add(1, Ordering::Relaxed);
        }
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        if new > l.size() {
            BYTES.fetch_add((new - l.size()) as u64, Ordering::Relaxed);
            if new >= LARGE_AT {
                LARGE.fetch_add(1, Ordering::Relaxed);
            }
        }
        System.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const MIB: usize = 1 << 20;
const N: usize = 100;

/// Whether `/readyz` on the admin listener answers 200.
fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(admin) else {
        return false;
    };
    let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out.starts_with(b"HTTP/1.1 200")
}

/// The value of the unlabelled metric `name` on the admin listener.
fn metric(admin: SocketAddr, name: &str) -> f64 {
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw WebSocket client: handshake, masked text frames out, frames counted in.
struct Raw {
    s: TcpStream,
}

impl Raw {
    fn connect(addr: SocketAddr, ticket: &str) -> Raw {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {ticket}\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        Raw { s }
    }

    fn send(&mut self, text: &str) {
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x81, 0x80 | text.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).unwrap();
    }

    /// Read frames into `buf` until a binary frame of at least `min` bytes has been read
    /// completely; returns its length.
    fn read_binary(&mut self, buf: &mut [u8], min: usize) -> usize {
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).unwrap();
            let len = match h[1] & 0x7f {
                126 => {
                    let mut e = [0u8; 2];
                    self.s.read_exact(&mut e).unwrap();
                    u16::from_be_bytes(e) as usize
                }
                127 => {
                    let mut e = [0u8; 8];
                    self.s.read_exact(&mut e).unwrap();
                    u64::from_be_bytes(e) as usize
                }
                n => n as usize,
            };
            let mut left = len;
            while left > 0 {
                let n = left.min(buf.len());
                self.s.read_exact(&mut buf[..n]).unwrap();
                left -= n;
            }
            if h[0] & 0x0f == 2 && len >= min {
                return len;
            }
        }
    }

    /// Read frames until a text frame containing `needle`.
    fn read_text_until(&mut self, buf: &mut [u8], needle: &[u8]) {
        loop {
            let mut h = [0u8; 2];
            self.s.read_exact(&mut h).unwrap();
            let len = (h[1] & 0x7f) as usize;
            assert!(len < 126);
            self.s.read_exact(&mut buf[..len]).unwrap();
            if buf[..len].windows(needle.len()).any(|w| w == needle) {
                return;
            }
        }
    }
}

#[test]
fn one_buffer_for_a_hundred_viewers() {
    let dir = tempfile::tempdir().unwrap();
    let media = dir.path().join("media");
    std::fs::create_dir_all(media.join("vod")).unwrap();
    std::fs::create_dir_all(media.join("live/zc")).unwrap();
    std::fs::write(media.join("vod/one.bin"), vec![5u8; MIB]).unwrap();
    let tickets = dir.path().join("tickets.json");
    let ticket = mediarelay::tickets::new_ticket().unwrap();
    let store = mediarelay::tickets::open_store(tickets.to_str().unwrap()).unwrap();
    store
        .insert(
            mediarelay::tickets::ticket_id(&ticket),
            mediarelay::tickets::TicketRecord {
                uid: "zc".into(),
                streams: vec!["*".into()],
                expires_at: SystemTime::now() + Duration::from_secs(600),
                revoked: false,
                max_connections: None,
                publish: Vec::new(),
                updated_at: SystemTime::now(),
            },
        )
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", port()).parse().unwrap();
    let overrides = [
        ("server.listen", addr.to_string()),
        ("server.admin", admin.to_string()),
        ("storage.url", media.display().to_string()),
        ("tickets.url", tickets.display().to_string()),
        ("server.workers", "2".to_string()),
        ("storage.poll_interval", "20ms".to_string()),
        ("log.level", "warn".to_string()),
    ];
    let config = mediarelay::config::Config::load(None, Vec::new(), &overrides).unwrap();
    let (tx, rx) = flume::unbounded();
    let stop = tx.clone();
    let relay =
        std::thread::spawn(move || mediarelay::control::serve(config, Some((tx, rx)), false, None));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready(admin) {
        assert!(Instant::now() < deadline, "relay not ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut clients: Vec<Raw> = (0..N).map(|_| Raw::connect(addr, &ticket)).collect();
    let mut bufs: Vec<Vec<u8>> = (0..N).map(|_| vec![0u8; 16 * 1024]).collect();

    // Warm the cache with one get and wake every connection (each starts parked: its first
    // request starts its task), then measure 100 gets of the cached object.
    for (c, b) in clients.iter_mut().zip(bufs.iter_mut()) {
        c.send(r#"{"op":"get","id":0,"key":"vod/one.bin"}"#);
        c.read_binary(b, MIB);
    }
    let (b0, l0) = (BYTES.load(Ordering::SeqCst), LARGE.load(Ordering::SeqCst));
    for c in clients.iter_mut() {
        c.send(r#"{"op":"get","id":1,"key":"vod/one.bin"}"#);
    }
    for (c, b) in clients.iter_mut().zip(bufs.iter_mut()) {
        assert!(c.read_binary(b, MIB) > MIB);
    }
    let get_bytes = BYTES.load(Ordering::SeqCst) - b0;
    let get_large = LARGE.load(Ordering::SeqCst) - l0;

    // Live: 100 subscribers, one 1 MiB segment.
    for c in clients.iter_mut() {
        c.send(r#"{"op":"subscribe","id":2,"stream":"live/zc"}"#);
    }
    for (c, b) in clients.iter_mut().zip(bufs.iter_mut()) {
        c.read_text_until(b, b"subscribed");
    }
    let segment = vec![6u8; MIB];
    let (b1, l1) = (BYTES.load(Ordering::SeqCst), LARGE.load(Ordering::SeqCst));
    std::fs::write(media.join("live/zc/.tmp"), &segment).unwrap();
    std::fs::rename(
        media.join("live/zc/.tmp"),
        media.join("live/zc/seg-0000000001.m4s"),
    )
    .unwrap();
    for (c, b) in clients.iter_mut().zip(bufs.iter_mut()) {
        assert!(c.read_binary(b, MIB) > MIB);
    }
    let live_bytes = BYTES.load(Ordering::SeqCst) - b1;
    let live_large = LARGE.load(Ordering::SeqCst) - l1;
    let by_sendfile = metric(admin, "mediarelay_sent_file_bytes_total");

    let _ = stop.send(());
    drop(clients);
    relay.join().unwrap().unwrap();

    eprintln!(
        "100 cached gets of 1 MiB: {get_bytes} bytes allocated, {get_large} large allocations"
    );
    eprintln!("1 MiB live segment to 100 subscribers: {live_bytes} bytes allocated, {live_large} large allocations");
    // Per viewer: a small frame prefix at most, never the payload.
    assert_eq!(get_large, 0, "a payload-sized buffer was allocated per get");
    assert!(
        get_bytes < (MIB / 4) as u64,
        "{get_bytes} bytes for 100 gets"
    );
    // The segment's one origin read (a 1 MiB pooled buffer) and nothing payload-sized per
    // subscriber.
    assert!(live_large <= 1, "{live_large} large allocations");
    let origin_buffer = mediarelay::origin::pool::class_of(MIB + 4096).unwrap() as u64;
    let per_viewer = live_bytes.saturating_sub(origin_buffer);
    eprintln!("  of which {per_viewer} bytes are not the origin buffer");
    // 100 warm-up gets, 100 gets and 100 live deliveries, all from payload files.
    assert_eq!(
        by_sendfile as usize,
        300 * MIB,
        "payload bytes sent by sendfile"
    );
    assert!(
        per_viewer < (MIB / 4) as u64,
        "{per_viewer} bytes besides the origin buffer"
    );
}
