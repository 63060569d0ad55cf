//! `fanout`, `mixed` and `ingest`: subscribers on live streams while a producer writes
//! segments into the server's storage directory (temporary name, then rename: what an
//! uploader does), or, for `ingest`, pushes them to the relay with `PUT /ingest/<key>` (one
//! keep-alive connection per stream: what an encoder does).
//!
//! `fanout`: N subscribers on S streams; segments of `--size` bytes at `--rate` per second
//! (`--rate 0`: the next segment as soon as every subscriber has the previous one).
//! `mixed`: the same with slow readers (each reading at most `--slow-rate` bytes/s) and
//! stalled ones (never reading) beside the normal ones; the report says whether the normal
//! ones got every segment, nothing skipped, nothing closed.
//!
//! Reports delivered bytes/s and messages/s, the delivery lag from each segment's meta `ts`
//! (p50 .. max; the server's clock starts when it has the segment ready to send), the
//! end-to-end lag from the moment the producer renamed the segment into place (what a viewer
//! sees: it includes the server's discovery and fetch, and any backlog it holds before it
//! stamps `ts`; for `ingest`, from the moment the PUT's last byte is written), handshake latency, `skipped` messages, errors and close codes by kind, and
//! with `--server-pid` the server's CPU seconds per GB delivered.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use mediarelay::protocol::keys::{segment_name, segment_name_seq};
use serde_json::{json, Value};

use super::{run_threads, share, Kinds};
use crate::report::{add_server_cpu, histogram, percentiles_ms, round, write_hgrm, Progress};
use crate::wire::{classify, masked_text, Msg, Seen, Target};
use crate::Common;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Stream name (with --streams S > 1: NAME-0 .. NAME-{S-1}).
    #[arg(long, default_value = "live/load")]
    pub stream: String,
    /// Number of live streams; subscriber i follows stream i % S.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
    /// The server's storage directory (the producer writes segments there).
    #[arg(long)]
    pub storage: PathBuf,
    /// Segment size in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub size: usize,
    /// Segments per second per stream (0: each as soon as every normal subscriber has the
    /// previous one).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Segments to write per stream.
    #[arg(long, default_value_t = 100)]
    pub count: u64,
    /// Upper bound of the whole run (seconds).
    #[arg(long, default_value_t = 120.0)]
    pub duration: f64,
    /// Extra subscribers that never read (stalled viewers).
    #[arg(long, default_value_t = 0)]
    pub stalled: usize,
    /// Write the lag distribution (HdrHistogram percentiles, ms) here.
    #[arg(long)]
    pub hgrm: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct IngestArgs {
    #[command(flatten)]
    pub live: Args,
    /// Ticket with `publish` rights over the streams (default: the viewers' ticket).
    #[arg(long, allow_hyphen_values = true)]
    pub publish_ticket: Option<String>,
}

/// How segments reach the server.
pub enum Producer {
    /// Written into its storage directory.
    Files,
    /// Pushed with `PUT /ingest/<key>`, with this ticket.
    Ingest(String),
}

#[derive(clap::Args, Clone)]
pub struct MixedArgs {
    #[command(flatten)]
    pub live: Args,
    /// Slow readers among the subscribers.
    #[arg(long, default_value_t = 10)]
    pub slow: usize,
    /// Bytes per second each slow reader takes.
    #[arg(long, default_value_t = 256 << 10)]
    pub slow_rate: u64,
}

/// What one class of subscribers (normal or slow) saw.
struct Class {
    connected: AtomicU64,
    failed: AtomicU64,
    subscribed: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
    skipped: AtomicU64,
    closes: Kinds,
    errors: Kinds,
    lag: Mutex<Histogram<u64>>,
    /// Lag from the producer's rename to the last byte received.
    e2e: Mutex<Histogram<u64>>,
}

impl Class {
    fn new() -> Class {
        Class {
            connected: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            segments: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            closes: Kinds::default(),
            errors: Kinds::default(),
            lag: Mutex::new(histogram()),
            e2e: Mutex::new(histogram()),
        }
    }

    /// Adds a subscriber's local histograms to the class's, and empties them.
    fn merge(&self, lag: &mut Histogram<u64>, e2e: &mut Histogram<u64>) {
        for (mine, local) in [(&self.lag, lag), (&self.e2e, e2e)] {
            if let Ok(mut h) = mine.lock() {
                let _ = h.add(&*local);
            }
            local.reset();
        }
    }

    fn json(&self, expected: u64) -> Value {
        let pct =
            |h: &Mutex<Histogram<u64>>| h.lock().map(|h| percentiles_ms(&h)).unwrap_or_default();
        json!({
            "subscribers": self.subscribed.load(Ordering::Relaxed),
            "failed_connections": self.failed.load(Ordering::Relaxed),
            "segments_delivered": self.segments.load(Ordering::Relaxed),
            "segments_expected": expected,
            "received_bytes": self.bytes.load(Ordering::Relaxed),
            "skipped_messages": self.skipped.load(Ordering::Relaxed),
            "errors": self.errors.json(),
            "closes": self.closes.json(),
            "lag_ms": pct(&self.lag),
            "e2e_lag_ms": pct(&self.e2e),
        })
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn stream_name(a: &Args, i: usize) -> String {
    if a.streams <= 1 {
        a.stream.clone()
    } else {
        format!("{}-{i}", a.stream)
    }
}

struct Shared {
    target: Target,
    args: Args,
    normal: Class,
    slow: Class,
    handshakes: Mutex<Histogram<u64>>,
    stop: AtomicBool,
    last_delivery: AtomicU64,
    slow_rate: u64,
    /// Per stream, the first sequence number the producer writes.
    firsts: OnceLock<Vec<u64>>,
    /// Unix microseconds at which segment `firsts[s] + i` of stream `s` was renamed into
    /// place (0 until then); see [`Shared::written`].
    written_us: Vec<AtomicU64>,
}

impl Shared {
    /// The rename time slot of the `i`-th segment the producer writes to stream `s`.
    fn written(&self, s: usize, i: u64) -> Option<&AtomicU64> {
        if i >= self.args.count {
            return None;
        }
        self.written_us
            .get(s * self.args.count as usize + i as usize)
    }

    /// When the producer renamed segment `seq` of stream `s` into place (None for a segment
    /// it did not write in this run).
    fn written_at(&self, s: usize, seq: u64) -> Option<u64> {
        let first = self.firsts.get()?.get(s)?;
        let at = self.written(s, seq.checked_sub(*first)?)?;
        Some(at.load(Ordering::Relaxed)).filter(|&w| w > 0)
    }
}

/// One publisher's keep-alive HTTP connection to the relay.
struct Publisher {
    addr: String,
    ticket: String,
    conn: Option<std::net::TcpStream>,
}

impl Publisher {
    /// PUT `body` as `key`; `sent` is called just before the last byte is written. Returns the
    /// status. One reconnect when the kept-alive connection was closed.
    fn put(&mut self, key: &str, body: &[u8], sent: impl Fn()) -> anyhow::Result<u16> {
        use std::io::{BufRead, Read, Write};
        for attempt in 0..2 {
            if self.conn.is_none() {
                let s = std::net::TcpStream::connect(&self.addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(Duration::from_secs(30)))?;
                self.conn = Some(s);
            }
            let Some(s) = self.conn.as_mut() else {
                continue;
            };
            let head = format!(
                "PUT /ingest/{key} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n",
                self.addr,
                self.ticket,
                body.len()
            );
            // The clock starts just before the last byte is handed to the kernel: the relay
            // cannot have the whole body before then. (Stamped after the write instead, a
            // segment the relay fanned out while the write call was still returning had no
            // stamp yet, and its fastest deliveries fell out of the histogram.)
            let (most, last) = body.split_at(body.len().saturating_sub(1));
            let wrote = s
                .write_all(head.as_bytes())
                .and_then(|()| s.write_all(most))
                .and_then(|()| {
                    sent();
                    s.write_all(last)
                });
            if let Err(e) = wrote {
                self.conn = None;
                if attempt == 0 {
                    continue;
                }
                return Err(e.into());
            }
            let mut r = std::io::BufReader::new(&*s);
            let mut line = String::new();
            let mut status = 0u16;
            let mut length = 0usize;
            let mut close = false;
            loop {
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    anyhow::bail!("connection closed");
                }
                let l = line.trim_end();
                if l.is_empty() {
                    break;
                }
                if status == 0 {
                    status = l.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
                } else if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        length = v.trim().parse().unwrap_or(0);
                    } else if k.eq_ignore_ascii_case("connection") && v.trim() == "close" {
                        close = true;
                    }
                }
            }
            let mut rest = vec![0u8; length];
            r.read_exact(&mut rest)?;
            if close {
                self.conn = None;
            }
            return Ok(status);
        }
        anyhow::bail!("no connection")
    }
}

pub fn run(c: &Common, a: Args, mixed: Option<MixedArgs>) -> anyhow::Result<Value> {
    run_with(c, a, mixed, Producer::Files)
}

pub fn run_with(
    c: &Common,
    a: Args,
    mixed: Option<MixedArgs>,
    producer: Producer,
) -> anyhow::Result<Value> {
    let (slow, slow_rate) = mixed.as_ref().map_or((0, 0), |m| (m.slow, m.slow_rate));
    let normal_n = a.subscribers;
    let sh = Arc::new(Shared {
        target: c.target.clone(),
        args: a.clone(),
        normal: Class::new(),
        slow: Class::new(),
        handshakes: Mutex::new(histogram()),
        stop: AtomicBool::new(false),
        last_delivery: AtomicU64::new(0),
        slow_rate,
        firsts: OnceLock::new(),
        written_us: (0..a.streams.max(1) as u64 * a.count)
            .map(|_| AtomicU64::new(0))
            .collect(),
    });
    let threads = c.threads;
    let handles = {
        let sh = sh.clone();
        run_threads(threads, move |t| {
            let sh = sh.clone();
            async move {
                let a = &sh.args;
                let mut tasks = Vec::new();
                let (n, first) = share(normal_n, threads, t);
                for i in first..first + n {
                    tasks.push(monoio::spawn(subscriber(sh.clone(), i, false)));
                }
                let (n, first) = share(slow, threads, t);
                for i in first..first + n {
                    tasks.push(monoio::spawn(subscriber(sh.clone(), normal_n + i, true)));
                }
                // Stalled viewers: subscribe, then never read.
                let mut held = Vec::new();
                let (n, first) = share(a.stalled, threads, t);
                for i in first..first + n {
                    if let Ok(mut ws) = sh.target.open().await {
                        let sub = sh
                            .target
                            .subscribe(1, &stream_name(a, i % a.streams.max(1)));
                        let (r, _) = ws.s.write_all(sub).await;
                        if r.is_ok() {
                            held.push(ws);
                        }
                    }
                }
                for t in tasks {
                    t.await;
                }
                drop(held);
            }
        })
    };

    // Wait for every subscriber (bounded), then produce.
    let t0 = Instant::now();
    let ready =
        |cl: &Class| cl.subscribed.load(Ordering::Relaxed) + cl.failed.load(Ordering::Relaxed);
    while (ready(&sh.normal) < normal_n as u64 || ready(&sh.slow) < slow as u64)
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let normal_subs = sh.normal.subscribed.load(Ordering::Relaxed);
    eprintln!(
        "{} subscribers ready ({} slow, {} failed) in {:.1}s",
        normal_subs + sh.slow.subscribed.load(Ordering::Relaxed),
        sh.slow.subscribed.load(Ordering::Relaxed),
        sh.normal.failed.load(Ordering::Relaxed) + sh.slow.failed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    let streams = a.streams.max(1);
    let dirs: Vec<PathBuf> = (0..streams)
        .map(|i| a.storage.join(stream_name(&a, i)))
        .collect();
    let mut firsts = Vec::new();
    for d in &dirs {
        std::fs::create_dir_all(d)?;
        firsts.push(next_seq(d));
    }
    let _ = sh.firsts.set(firsts.clone());
    let before = c.server.sample();
    let start = Instant::now();
    let start_us = now_micros();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let produced = Arc::new(AtomicU64::new(0));
    let progress = {
        let (sh, produced) = (sh.clone(), produced.clone());
        let total = a.count;
        Progress::start(move || {
            let p = produced.load(Ordering::Relaxed);
            let got = sh.normal.segments.load(Ordering::Relaxed);
            let bytes =
                sh.normal.bytes.load(Ordering::Relaxed) + sh.slow.bytes.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            let p99 = sh
                .normal
                .lag
                .lock()
                .map(|h| h.value_at_quantile(0.99) as f64 / 1000.0)
                .unwrap_or(0.0);
            (
                Some(p as f64 / total.max(1) as f64),
                format!(
                    "produced {p}/{total}  delivered {got}  {}  skipped {}  lag p99 {p99:.1} ms",
                    crate::report::si(bytes as f64 / secs, "B/s"),
                    sh.normal.skipped.load(Ordering::Relaxed)
                        + sh.slow.skipped.load(Ordering::Relaxed),
                ),
            )
        })
    };
    let interval = Duration::from_secs_f64(1.0 / a.rate.max(0.001));
    let mut publishers: Vec<Publisher> = match &producer {
        Producer::Files => Vec::new(),
        Producer::Ingest(ticket) => (0..streams)
            .map(|_| Publisher {
                addr: c.target.addr.clone(),
                ticket: ticket.clone(),
                conn: None,
            })
            .collect(),
    };
    let mut ingest_failures: BTreeMap<String, u64> = BTreeMap::new();
    let mut ingested = 0u64;
    let mut payload = vec![0u8; a.size.max(8)];
    payload.truncate(a.size);
    for i in 0..a.count {
        if Instant::now() > deadline {
            break;
        }
        if a.rate > 0.0 {
            let due = start + interval.mul_f64(i as f64);
            if let Some(w) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(w);
            }
        } else {
            // As fast as the normal subscribers take them.
            let want = i * normal_subs;
            while sh.normal.segments.load(Ordering::Relaxed) < want && Instant::now() < deadline {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        for (s, (d, first)) in dirs.iter().zip(&firsts).enumerate() {
            let seq = first + i;
            if payload.len() >= 8 {
                payload[..8].copy_from_slice(&seq.to_be_bytes());
            }
            let name = segment_name(seq, "bin");
            if let Some(p) = publishers.get_mut(s) {
                let key = format!("{}/{name}", stream_name(&a, s));
                // Stamped as the last byte is written: ingest-to-viewer latency.
                let stamp = || {
                    if let Some(at) = sh.written(s, i) {
                        at.store(now_micros(), Ordering::Relaxed);
                    }
                };
                match p.put(&key, &payload, stamp) {
                    Ok(201 | 204) => ingested += payload.len() as u64,
                    Ok(status) => *ingest_failures.entry(status.to_string()).or_default() += 1,
                    Err(e) => *ingest_failures.entry(e.to_string()).or_default() += 1,
                }
                continue;
            }
            let tmp = d.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &payload)?;
            // Stamped just before the segment becomes visible, so no delivery precedes it.
            if let Some(at) = sh.written(s, i) {
                at.store(now_micros(), Ordering::Relaxed);
            }
            std::fs::rename(&tmp, d.join(name))?;
        }
        produced.fetch_add(1, Ordering::Relaxed);
    }
    let count = produced.load(Ordering::Relaxed);
    // Wait until the normal subscribers have everything produced, or nothing more has
    // arrived for a second (segments were skipped), or the deadline.
    let expected = count * normal_subs;
    let mut last_seen = (sh.normal.segments.load(Ordering::Relaxed), Instant::now());
    while sh.normal.segments.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        let n = sh.normal.segments.load(Ordering::Relaxed);
        if n != last_seen.0 {
            last_seen = (n, Instant::now());
        } else if last_seen.1.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
    let after = c.server.sample();
    // Throughput over the delivery period: first segment written to last one received.
    let last = sh.last_delivery.load(Ordering::Relaxed);
    let elapsed = if last > start_us {
        (last - start_us) as f64 / 1e6
    } else {
        start.elapsed().as_secs_f64()
    };
    sh.stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    drop(progress);

    let bytes = sh.normal.bytes.load(Ordering::Relaxed) + sh.slow.bytes.load(Ordering::Relaxed);
    let messages =
        sh.normal.segments.load(Ordering::Relaxed) + sh.slow.segments.load(Ordering::Relaxed);
    let normal = sh.normal.json(expected);
    let scenario = match (&producer, &mixed) {
        (Producer::Ingest(_), _) => "ingest",
        (_, Some(_)) => "mixed",
        _ => "fanout",
    };
    let mut report = json!({
        "scenario": scenario,
        "streams": streams,
        "subscribers": normal_subs,
        "segment_size": a.size,
        "rate_per_s": a.rate,
        "segments_produced": count,
        "seconds": round(elapsed, 3),
        "received_bytes": bytes,
        "received_bytes_per_s": round(bytes as f64 / elapsed, 0),
        "received_gbit_per_s": round(bytes as f64 * 8.0 / elapsed / 1e9, 3),
        "segments_per_s": round(messages as f64 / elapsed, 1),
    });
    for k in [
        "segments_delivered",
        "segments_expected",
        "skipped_messages",
        "errors",
        "closes",
        "lag_ms",
        "e2e_lag_ms",
    ] {
        report[k] = normal[k].clone();
    }
    if let Ok(h) = sh.handshakes.lock() {
        report["handshake_ms"] = percentiles_ms(&h);
    }
    if let Some(m) = &mixed {
        let slow_json = sh.slow.json(0);
        report["slow"] = json!({
            "subscribers": slow_json["subscribers"],
            "read_bytes_per_s_each": m.slow_rate,
            "segments_delivered": slow_json["segments_delivered"],
            "skipped_messages": slow_json["skipped_messages"],
            "closes": slow_json["closes"],
            "errors": slow_json["errors"],
        });
        report["stalled_subscribers"] = a.stalled.into();
        let unaffected = sh.normal.segments.load(Ordering::Relaxed) == expected
            && sh.normal.skipped.load(Ordering::Relaxed) == 0
            && sh.normal.closes.total() == 0
            && sh.normal.errors.total() == 0;
        report["normal_unaffected"] = unaffected.into();
    } else if a.stalled > 0 {
        report["stalled_subscribers"] = a.stalled.into();
    }
    add_server_cpu(&mut report, before, after, bytes);
    if let Producer::Ingest(_) = producer {
        report["ingested_bytes"] = ingested.into();
        report["ingest_failures"] = json!(ingest_failures);
        // The server's work in and out: bytes received through ingest plus bytes sent.
        if let (Some(cpu), true) = (report["server_cpu_seconds"].as_f64(), ingested + bytes > 0) {
            report["server_cpu_seconds_per_gb_in_and_out"] =
                round(cpu / ((ingested + bytes) as f64 / 1e9), 4).into();
        }
    }
    if let Some(path) = &a.hgrm {
        if let Ok(h) = sh.normal.lag.lock() {
            write_hgrm(&h, path)?;
        }
    }
    Ok(report)
}

/// One subscriber: open, subscribe, read until told to stop; a slow one reads at most
/// `slow_rate` bytes per second.
async fn subscriber(sh: Arc<Shared>, i: usize, slow: bool) {
    let class = if slow { &sh.slow } else { &sh.normal };
    let began = Instant::now();
    let mut ws = match sh.target.open().await {
        Ok(ws) => ws,
        Err(e) => {
            if class.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                eprintln!("subscriber: {e}");
            }
            return;
        }
    };
    if let Ok(mut h) = sh.handshakes.lock() {
        let _ = h.record(began.elapsed().as_micros().max(1) as u64);
    }
    class.connected.fetch_add(1, Ordering::Relaxed);
    let a = &sh.args;
    let sub = sh
        .target
        .subscribe(1, &stream_name(a, i % a.streams.max(1)));
    let (r, _) = ws.s.write_all(sub).await;
    if r.is_err() {
        class.failed.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut lags = histogram();
    let mut e2e = histogram();
    let stream_ix = i % a.streams.max(1);
    let mut closes: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    class.bytes.fetch_add(ws.received, Ordering::Relaxed);
    // A slow reader takes `slow_rate / 20` bytes every 50 ms.
    let chunk = if slow {
        (sh.slow_rate / 20).max(1) as usize
    } else {
        256 << 10
    };
    let mut buf = Vec::with_capacity(chunk);
    let mut events = std::mem::take(&mut ws.pending);
    'read: loop {
        for ev in events.drain(..) {
            match ev {
                Seen::Media { ts, seq } => {
                    let now = now_micros();
                    let _ = lags.record(now.saturating_sub(ts).max(1));
                    if let Some(w) = sh.written_at(stream_ix, seq) {
                        let _ = e2e.record(now.saturating_sub(w).max(1));
                    }
                    // Merge now and then, so the progress line sees the lag as it goes.
                    if lags.len() >= 32 {
                        class.merge(&mut lags, &mut e2e);
                    }
                    class.segments.fetch_add(1, Ordering::Relaxed);
                    if !slow {
                        sh.last_delivery.store(now, Ordering::Relaxed);
                    }
                }
                Seen::Text(t) => match classify(&t) {
                    Msg::Subscribed => {
                        class.subscribed.fetch_add(1, Ordering::Relaxed);
                    }
                    Msg::Skipped => {
                        class.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                    Msg::Error(code) => *errors.entry(code).or_default() += 1,
                    Msg::Ping => {
                        let (r, _) = ws.s.write_all(masked_text("3")).await;
                        if r.is_err() {
                            break 'read;
                        }
                    }
                    Msg::Closing | Msg::Other => {}
                },
                Seen::Close(code) => *closes.entry(code.to_string()).or_default() += 1,
            }
        }
        if sh.stop.load(Ordering::Relaxed) {
            break;
        }
        if slow {
            monoio::time::sleep(Duration::from_millis(50)).await;
        }
        // Wait for data with a timeout (cancel-safe: nothing is consumed), then read
        // without one: cancelling an in-flight io_uring read could lose bytes.
        let ready = monoio::time::timeout(Duration::from_millis(200), ws.s.readable(false)).await;
        if ready.is_err() {
            continue;
        }
        let (r, b) = ws.s.read(buf).await;
        buf = b;
        let Ok(n) = r else { break };
        if n == 0 {
            break;
        }
        class.bytes.fetch_add(n as u64, Ordering::Relaxed);
        ws.fr.feed(&buf[..n], &mut events);
        buf.clear();
    }
    class.merge(&mut lags, &mut e2e);
    class.closes.add_all(closes);
    class.errors.add_all(errors);
}

/// The next free sequence number in a stream directory.
fn next_seq(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            segment_name_seq(&n)
        })
        .max()
        .unwrap_or(0)
        + 1
}
