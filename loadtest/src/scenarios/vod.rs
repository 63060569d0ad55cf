//! `vod` and `gets`: on-demand fetches.
//!
//! `vod`: N connections each keeping `--inflight` requests for random keys from
//! `PREFIX{0..keys}SUFFIX` outstanding, until `--count` replies or `--duration` seconds.
//! Over WebSocket `get`s (either dialect) or, with `--http`, HTTP/1.1 keep-alive `GET
//! /PREFIX{k}SUFFIX` pipelined `--inflight` deep (for web servers such as nginx).
//! `gets`: keys 0, 1, 2, ... each once, one request in flight per connection (cold fetches
//! when nothing asked for them before).
//!
//! Reports bytes/s, replies/s, request latency percentiles (`--hgrm` writes the
//! distribution), handshake latency, errors by kind and the server's CPU seconds per GB.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{run_threads, share, Kinds};
use crate::report::{add_server_cpu, histogram, percentiles_ms, round, write_hgrm, Progress};
use crate::wire::{classify, masked_text, HttpReader, Msg, Seen, Target};
use crate::Common;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 100)]
    pub connections: usize,
    #[arg(long, default_value_t = 1)]
    pub inflight: usize,
    #[arg(long, default_value = "vod/bench/")]
    pub prefix: String,
    #[arg(long, default_value = ".bin")]
    pub suffix: String,
    /// Size of the key set.
    #[arg(long, default_value_t = 100)]
    pub keys: usize,
    #[arg(long, default_value_t = 100_000)]
    pub count: u64,
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Plain HTTP/1.1 GETs instead of WebSocket `get`s.
    #[arg(long)]
    pub http: bool,
    /// Write the latency distribution (HdrHistogram percentiles, ms) here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
    /// Take keys 0, 1, 2, ... (each once) instead of at random.
    #[arg(skip)]
    pub sequential: bool,
}

#[derive(clap::Args, Clone)]
pub struct GetsArgs {
    #[arg(long, default_value = "vod/bench/")]
    pub prefix: String,
    #[arg(long, default_value = ".bin")]
    pub suffix: String,
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Write the latency distribution (HdrHistogram percentiles, ms) here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
}

impl From<GetsArgs> for Args {
    fn from(g: GetsArgs) -> Args {
        Args {
            connections: g.connections,
            inflight: 1,
            prefix: g.prefix,
            suffix: g.suffix,
            keys: g.count,
            count: g.count as u64,
            duration: 24.0 * 3600.0,
            http: false,
            hgrm: g.hgrm,
            sequential: true,
        }
    }
}

struct Shared {
    a: Args,
    issued: AtomicU64,
    replies: AtomicU64,
    bytes: AtomicU64,
    failed: AtomicU64,
    errors: Kinds,
    latency: Mutex<Histogram<u64>>,
    handshakes: Mutex<Histogram<u64>>,
    deadline: Instant,
}

impl Shared {
    /// The next request's key index, or None when the run is over.
    fn next_key(&self, rng: &mut u64) -> Option<usize> {
        if Instant::now() >= self.deadline {
            return None;
        }
        let i = self.issued.fetch_add(1, Ordering::Relaxed);
        if i >= self.a.count {
            return None;
        }
        if self.a.sequential {
            return Some(i as usize);
        }
        // xorshift64
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        Some((*rng % self.a.keys.max(1) as u64) as usize)
    }
}

pub fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    let threads = c.threads.min(a.connections).max(1);
    let start = Instant::now();
    let sh = Arc::new(Shared {
        a: a.clone(),
        issued: AtomicU64::new(0),
        replies: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        errors: Kinds::default(),
        latency: Mutex::new(histogram()),
        handshakes: Mutex::new(histogram()),
        deadline: start + Duration::from_secs_f64(a.duration),
    });
    let before = c.server.sample();
    let handles = {
        let (sh, target) = (sh.clone(), c.target.clone());
        run_threads(threads, move |t| {
            let (sh, target) = (sh.clone(), target.clone());
            async move {
                let (n, first) = share(sh.a.connections, threads, t);
                let mut tasks = Vec::new();
                for conn in first..first + n {
                    let (sh, target) = (sh.clone(), target.clone());
                    tasks.push(monoio::spawn(async move {
                        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ (conn as u64 + 1);
                        let r = if sh.a.http {
                            http_client(&sh, &target, seed).await
                        } else {
                            ws_client(&sh, &target, seed).await
                        };
                        if let Err(e) = r {
                            if sh.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("connection {conn}: {e}");
                            }
                        }
                    }));
                }
                for t in tasks {
                    t.await;
                }
            }
        })
    };
    {
        let sh = sh.clone();
        let _progress = Progress::start(move || {
            let r = sh.replies.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            let by_count = r as f64 / sh.a.count.max(1) as f64;
            let by_time = secs / sh.a.duration;
            (
                Some(by_count.max(by_time)),
                format!(
                    "replies {r}  {:.0}/s  {}  errors {}",
                    r as f64 / secs,
                    crate::report::si(sh.bytes.load(Ordering::Relaxed) as f64 / secs, "B/s"),
                    sh.errors.total()
                ),
            )
        });
        for h in handles {
            let _ = h.join();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = c.server.sample();
    let bytes = sh.bytes.load(Ordering::Relaxed);
    let replies = sh.replies.load(Ordering::Relaxed);
    let mut report = json!({
        "scenario": if a.sequential { "gets" } else { "vod" },
        "transport": if a.http { "http" } else { "websocket" },
        "connections": a.connections,
        "inflight": a.inflight,
        "replies": replies,
        "errors": sh.errors.json(),
        "failed_connections": sh.failed.load(Ordering::Relaxed),
        "seconds": round(elapsed, 3),
        "received_bytes": bytes,
        "received_bytes_per_s": round(bytes as f64 / elapsed, 0),
        "replies_per_s": round(replies as f64 / elapsed, 1),
    });
    if let Ok(h) = sh.latency.lock() {
        report["latency_ms"] = percentiles_ms(&h);
        if let Some(path) = &a.hgrm {
            write_hgrm(&h, path)?;
        }
    }
    if let Ok(h) = sh.handshakes.lock() {
        report["handshake_ms"] = percentiles_ms(&h);
    }
    add_server_cpu(&mut report, before, after, bytes);
    Ok(report)
}

/// One WebSocket connection keeping `inflight` `get`s outstanding.
async fn ws_client(sh: &Shared, target: &crate::wire::Target, seed: u64) -> anyhow::Result<()> {
    let began = Instant::now();
    let mut ws = target.open().await?;
    if let Ok(mut h) = sh.handshakes.lock() {
        let _ = h.record(began.elapsed().as_micros().max(1) as u64);
    }
    let mut rng = seed;
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let mut lat = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut events = std::mem::take(&mut ws.pending);
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut id = 0u64;
    let result = loop {
        let mut out = Vec::new();
        for ev in events.drain(..) {
            let done = match ev {
                Seen::Media { .. } => true,
                Seen::Text(t) => match classify(&t) {
                    Msg::Error(code) => {
                        *errors.entry(code).or_default() += 1;
                        true
                    }
                    Msg::Ping => {
                        out.extend_from_slice(&masked_text("3"));
                        false
                    }
                    _ => false,
                },
                Seen::Close(code) => {
                    *errors.entry(format!("close {code}")).or_default() += 1;
                    false
                }
            };
            if done {
                if let Some(t0) = sent.pop_front() {
                    let _ = lat.record(t0.elapsed().as_micros().max(1) as u64);
                    sh.replies.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Top up to `inflight` outstanding requests.
        while sent.len() < sh.a.inflight {
            let Some(k) = sh.next_key(&mut rng) else {
                break;
            };
            out.extend_from_slice(&target.get(id, &format!("{}{k}{}", sh.a.prefix, sh.a.suffix)));
            id += 1;
            sent.push_back(Instant::now());
        }
        if !out.is_empty() {
            let (r, _) = ws.s.write_all(out).await;
            if let Err(e) = r {
                break Err(e.into());
            }
        }
        if sent.is_empty() {
            break Ok(());
        }
        let (r, b) = ws.s.read(buf).await;
        buf = b;
        let n = match r {
            Ok(0) => break Err(anyhow::anyhow!("closed by the server")),
            Ok(n) => n,
            Err(e) => break Err(e.into()),
        };
        sh.bytes.fetch_add(n as u64, Ordering::Relaxed);
        ws.fr.feed(&buf[..n], &mut events);
        buf.clear();
    };
    // Bytes before the first read (past the upgrade response) count too.
    sh.bytes.fetch_add(ws.received, Ordering::Relaxed);
    finish(sh, &lat, errors);
    result
}

/// One HTTP/1.1 keep-alive connection with `inflight` pipelined GETs outstanding.
async fn http_client(sh: &Shared, target: &Target, seed: u64) -> anyhow::Result<()> {
    let addr = target.addr.as_str();
    let began = Instant::now();
    let mut s = crate::stream::Stream::connect(addr, target.tls.as_ref()).await?;
    if let Ok(mut h) = sh.handshakes.lock() {
        let _ = h.record(began.elapsed().as_micros().max(1) as u64);
    }
    let mut rng = seed;
    let mut sent: VecDeque<Instant> = VecDeque::new();
    let mut lat = histogram();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut reader = HttpReader::default();
    let mut done = Vec::new();
    let mut buf = Vec::with_capacity(256 * 1024);
    let result = loop {
        for status in done.drain(..) {
            if status != 200 {
                *errors.entry(format!("http {status}")).or_default() += 1;
            }
            if let Some(t0) = sent.pop_front() {
                let _ = lat.record(t0.elapsed().as_micros().max(1) as u64);
                sh.replies.fetch_add(1, Ordering::Relaxed);
            }
        }
        let mut out = Vec::new();
        while sent.len() < sh.a.inflight {
            let Some(k) = sh.next_key(&mut rng) else {
                break;
            };
            out.extend_from_slice(
                format!(
                    "GET /{}{k}{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
                    sh.a.prefix, sh.a.suffix
                )
                .as_bytes(),
            );
            sent.push_back(Instant::now());
        }
        if !out.is_empty() {
            let (r, _) = s.write_all(out).await;
            if let Err(e) = r {
                break Err(e.into());
            }
        }
        if sent.is_empty() {
            break Ok(());
        }
        let (r, b) = s.read(buf).await;
        buf = b;
        let n = match r {
            Ok(0) => break Err(anyhow::anyhow!("closed by the server")),
            Ok(n) => n,
            Err(e) => break Err(e.into()),
        };
        sh.bytes.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = reader.feed(&buf[..n], &mut done) {
            break Err(e);
        }
        buf.clear();
    };
    finish(sh, &lat, errors);
    result
}

fn finish(sh: &Shared, lat: &Histogram<u64>, errors: BTreeMap<String, u64>) {
    if let Ok(mut h) = sh.latency.lock() {
        let _ = h.add(lat);
    }
    sh.errors.add_all(errors);
}
