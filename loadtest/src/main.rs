//! mediarelay-load: a load generator for mediarelay's wire contract.
//!
//! Thread per core, one monoio runtime each (io_uring, epoll fallback), many connections
//! per thread. Every scenario is bounded by `--duration` (and `--count` where it applies)
//! and stops by itself. When `--server-pid` is given, the server's own CPU seconds
//! (utime + stime from /proc) and resident memory are reported next to the client's
//! figures, so a run on a machine shared by client and server still says what the server
//! paid.
//!
//! Scenarios:
//! - `idle`: open N authenticated connections (optionally each subscribed to a quiet
//!   stream), hold them, report the server's resident memory per connection.
//! - `fanout`: N subscribers on one stream while a producer writes segments of `--size`
//!   bytes at `--rate` per second into the relay's storage directory; reports delivered
//!   bytes/s, segment delivery lag (from the meta `ts`) and the server's CPU per GB.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

#[derive(Parser)]
#[command(
    name = "mediarelay-load",
    about = "Load generator for mediarelay",
    args_override_self = true
)]
struct Cli {
    /// Relay address (host:port of the public listener).
    #[arg(long, default_value = "127.0.0.1:8080", global = true)]
    addr: String,
    /// Ticket used by every connection.
    #[arg(long, global = true, default_value = "", allow_hyphen_values = true)]
    ticket: String,
    /// Client threads (default: number of CPUs).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// PID of the server, to report its CPU and memory from /proc.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Print the final report as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Clone)]
enum Scenario {
    /// Hold N idle connections and report server memory per connection.
    Idle {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Subscribe each connection to this (quiet) stream.
        #[arg(long)]
        stream: Option<String>,
        /// How long to hold them once all are open (seconds).
        #[arg(long, default_value_t = 5.0)]
        hold: f64,
        /// Connections opened per second (0: as fast as possible).
        #[arg(long, default_value_t = 0)]
        connect_rate: u64,
    },
    /// N subscribers on one stream fed by a producer writing into the storage directory.
    Fanout {
        #[arg(long, default_value_t = 100)]
        subscribers: usize,
        #[arg(long, default_value = "live/load")]
        stream: String,
        /// The relay's storage directory (the producer writes segments there).
        #[arg(long)]
        storage: PathBuf,
        /// Segment size in bytes.
        #[arg(long, default_value_t = 1 << 20)]
        size: usize,
        /// Segments per second written by the producer.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
        /// Segments to write.
        #[arg(long, default_value_t = 100)]
        count: u64,
        /// Upper bound of the whole run (seconds).
        #[arg(long, default_value_t = 120.0)]
        duration: f64,
        /// Extra subscribers that never read (stalled viewers).
        #[arg(long, default_value_t = 0)]
        stalled: usize,
    },
    /// VOD: `connections` clients each keeping `inflight` `get`s of random keys
    /// (PREFIX{0..keys}SUFFIX) outstanding, until `count` replies or `duration` seconds.
    Vod {
        #[arg(long, default_value_t = 100)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        inflight: usize,
        #[arg(long, default_value = "vod/bench/")]
        prefix: String,
        #[arg(long, default_value = ".bin")]
        suffix: String,
        /// Size of the key set.
        #[arg(long, default_value_t = 100)]
        keys: usize,
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Write the latency distribution (HdrHistogram percentiles, ms) here.
        #[arg(long)]
        hgrm: Option<PathBuf>,
    },
    /// Handshakes + ticket checks per second: `count` upgrades over `concurrency` clients, a
    /// share of them with a bad ticket; reports the rate, latency and statuses.
    Connect {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Share of attempts with an unknown ticket (0.0 to 1.0).
        #[arg(long, default_value_t = 0.1)]
        bad_share: f64,
    },
    /// `get`s of the keys PREFIX0 .. PREFIX{count-1}, each key once (cold when nothing
    /// fetched it before), over `connections` connections, one request in flight each;
    /// reports bytes/s and per-get latency.
    Gets {
        #[arg(long, default_value = "vod/bench/")]
        prefix: String,
        /// Key suffix after the number.
        #[arg(long, default_value = ".bin")]
        suffix: String,
        #[arg(long, default_value_t = 100)]
        count: usize,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        /// Write the latency distribution (HdrHistogram percentiles, microseconds) here.
        #[arg(long)]
        hgrm: Option<PathBuf>,
    },
}

/// Counters shared by all client threads.
#[derive(Default)]
struct Totals {
    connected: AtomicU64,
    failed: AtomicU64,
    bytes: AtomicU64,
    segments: AtomicU64,
    skipped: AtomicU64,
    closed: AtomicU64,
    slow_closes: AtomicU64,
    lag: Mutex<Option<Histogram<u64>>>,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Server process figures from /proc.
#[derive(Clone, Copy, Debug)]
struct ProcSample {
    cpu_s: f64,
    rss_kib: u64,
}

fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields after the command: state(0) ... utime(11) stime(12).
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY-free: sysconf through std is not exposed; Linux uses 100 ticks per second.
    let hz = 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(ProcSample {
        cpu_s: ticks / hz,
        rss_kib,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = cli
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    match cli.scenario.clone() {
        Scenario::Idle {
            connections,
            stream,
            hold,
            connect_rate,
        } => idle(&cli, threads, connections, stream, hold, connect_rate),
        Scenario::Fanout {
            subscribers,
            stream,
            storage,
            size,
            rate,
            count,
            duration,
            stalled,
        } => fanout(
            &cli,
            threads,
            subscribers,
            stalled,
            &stream,
            &storage,
            (size, rate, count, duration),
        ),
        Scenario::Connect {
            count,
            concurrency,
            bad_share,
        } => connect(&cli, threads, count, concurrency, bad_share),
        Scenario::Vod {
            connections,
            inflight,
            prefix,
            suffix,
            keys,
            count,
            duration,
            hgrm,
        } => vod(
            &cli,
            threads,
            VodArgs {
                connections,
                inflight,
                prefix,
                suffix,
                keys,
                count,
                duration,
                hgrm,
                sequential: false,
            },
        ),
        // `gets` is `vod` with one request in flight and every key taken once, in order.
        Scenario::Gets {
            prefix,
            suffix,
            count,
            connections,
            hgrm,
        } => vod(
            &cli,
            threads,
            VodArgs {
                connections,
                inflight: 1,
                prefix,
                suffix,
                keys: count,
                count: count as u64,
                duration: 24.0 * 3600.0,
                hgrm,
                sequential: true,
            },
        ),
    }
}

fn handshake_request(addr: &str, ticket: &str) -> Vec<u8> {
    format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: bWVkaWFyZWxheS1sb2FkIQ==\r\nAuthorization: Bearer {ticket}\r\n\r\n"
    )
    .into_bytes()
}

fn masked_text(text: &str) -> Vec<u8> {
    let mask = [0x5au8, 0x17, 0x33, 0x81];
    let mut f = vec![0x81];
    if text.len() < 126 {
        f.push(0x80 | text.len() as u8);
    } else {
        f.push(0x80 | 126);
        f.extend_from_slice(&(text.len() as u16).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Connect and upgrade; returns the stream and any bytes read past the response head.
async fn open(addr: &str, ticket: &str) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let mut s = TcpStream::connect(addr).await?;
    let _ = s.set_nodelay(true);
    let (r, _) = s.write_all(handshake_request(addr, ticket)).await;
    r?;
    let mut head = Vec::with_capacity(512);
    loop {
        let buf = Vec::with_capacity(512);
        let (r, buf) = s.read(buf).await;
        let n = r?;
        if n == 0 {
            anyhow::bail!("closed during handshake");
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&head[..head.len().min(80)]).to_string();
                anyhow::bail!("upgrade refused: {line}");
            }
            return Ok((s, head[p + 4..].to_vec()));
        }
    }
}

/// Incremental reader of server frames that keeps only what it needs: frame heads and
/// the media meta (for `ts`); payload bytes are counted, not stored.
#[derive(Default)]
struct FrameReader {
    head: Vec<u8>,
    /// Payload bytes left in the current frame.
    left: u64,
    opcode: u8,
    /// Start of the current payload (for text and media meta).
    start: Vec<u8>,
    meta_done: bool,
}

enum Seen {
    Media { ts: u64 },
    Text(Vec<u8>),
    Close(u16),
}

impl FrameReader {
    fn feed(&mut self, mut data: &[u8], out: &mut Vec<Seen>) {
        while !data.is_empty() {
            if self.left == 0 && self.head_len().is_none_or(|n| self.head.len() < n) {
                self.head.push(data[0]);
                data = &data[1..];
                if let Some(n) = self.head_len() {
                    if self.head.len() == n {
                        let len = match self.head[1] & 0x7f {
                            126 => u16::from_be_bytes([self.head[2], self.head[3]]) as u64,
                            127 => {
                                u64::from_be_bytes(self.head[2..10].try_into().unwrap_or([0; 8]))
                            }
                            l => l as u64,
                        };
                        self.opcode = self.head[0] & 0x0f;
                        self.left = len;
                        self.start.clear();
                        self.meta_done = false;
                        self.head.clear();
                        if len == 0 {
                            self.finish(out);
                        }
                    }
                }
                continue;
            }
            let avail = (self.left as usize).min(data.len());
            let n = if self.opcode == 2 {
                if self.meta_done {
                    avail
                } else {
                    // Keep the meta length, then the meta; count the payload only.
                    let need = if self.start.len() >= 4 {
                        4 + u32::from_be_bytes(self.start[..4].try_into().unwrap_or([0; 4]))
                            as usize
                    } else {
                        4
                    };
                    let n = need.saturating_sub(self.start.len()).min(avail);
                    self.start.extend_from_slice(&data[..n]);
                    if self.start.len() >= 4 && self.start.len() >= need {
                        self.meta_done = self.start.len() > 4
                            || u32::from_be_bytes(self.start[..4].try_into().unwrap_or([0; 4]))
                                == 0;
                    }
                    n
                }
            } else {
                self.start.extend_from_slice(&data[..avail]);
                avail
            };
            self.left -= n as u64;
            data = &data[n..];
            if self.left == 0 {
                self.finish(out);
            }
        }
    }

    fn head_len(&self) -> Option<usize> {
        if self.head.len() < 2 {
            return None;
        }
        Some(match self.head[1] & 0x7f {
            126 => 4,
            127 => 10,
            _ => 2,
        })
    }

    fn finish(&mut self, out: &mut Vec<Seen>) {
        match self.opcode {
            2 => {
                let ts = (self.start.len() > 4)
                    .then(|| serde_json::from_slice::<serde_json::Value>(&self.start[4..]).ok())
                    .flatten()
                    .and_then(|m| m.get("ts").and_then(|v| v.as_u64()))
                    .unwrap_or(0);
                out.push(Seen::Media { ts });
            }
            1 => out.push(Seen::Text(std::mem::take(&mut self.start))),
            8 => {
                let code = if self.start.len() >= 2 {
                    u16::from_be_bytes([self.start[0], self.start[1]])
                } else {
                    1005
                };
                out.push(Seen::Close(code));
            }
            _ => {}
        }
        self.start.clear();
    }
}

fn run_threads<F, Fut>(threads: usize, f: F) -> Vec<std::thread::JoinHandle<()>>
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    (0..threads)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || {
                let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                    .enable_timer()
                    .build()
                    .expect("runtime");
                rt.block_on(f(i));
            })
        })
        .collect()
}

fn idle(
    cli: &Cli,
    threads: usize,
    connections: usize,
    stream: Option<String>,
    hold: f64,
    connect_rate: u64,
) -> anyhow::Result<()> {
    let before = cli.server_pid.and_then(proc_sample);
    let totals = Arc::new(Totals::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, ticket) = (cli.addr.clone(), cli.ticket.clone());
    let started = Instant::now();
    let per_thread = connections.div_ceil(threads);
    let handles = {
        let (totals, stop) = (totals.clone(), stop.clone());
        run_threads(threads, move |t| {
            let (totals, stop, addr, ticket, stream) = (
                totals.clone(),
                stop.clone(),
                addr.clone(),
                ticket.clone(),
                stream.clone(),
            );
            async move {
                let n = per_thread.min(connections.saturating_sub(t * per_thread));
                let held = Rc::new(RefCell::new(Vec::with_capacity(n)));
                for i in 0..n {
                    if connect_rate > 0 {
                        let due =
                            Duration::from_secs_f64((t + i * threads) as f64 / connect_rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            monoio::time::sleep(wait).await;
                        }
                    }
                    match open(&addr, &ticket).await {
                        Ok((mut s, _)) => {
                            if let Some(st) = &stream {
                                let msg = format!(r#"{{"op":"subscribe","id":1,"stream":"{st}"}}"#);
                                let (r, _) = s.write_all(masked_text(&msg)).await;
                                if r.is_err() {
                                    totals.failed.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                            totals.connected.fetch_add(1, Ordering::Relaxed);
                            held.borrow_mut().push(s);
                        }
                        Err(e) => {
                            if totals.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                                eprintln!("connect: {e}");
                            }
                        }
                    }
                }
                while !stop.load(Ordering::Relaxed) {
                    monoio::time::sleep(Duration::from_millis(50)).await;
                }
                drop(held);
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = 0;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let c = totals.connected.load(Ordering::Relaxed);
        let f = totals.failed.load(Ordering::Relaxed);
        eprintln!(
            "[{:>5.1}s] connected {c} failed {f}",
            started.elapsed().as_secs_f64()
        );
        if c + f >= connections as u64
            || Instant::now() > deadline
            || (c == last && c + f > 0 && started.elapsed() > Duration::from_secs(60))
        {
            break;
        }
        last = c;
    }
    let open_for = started.elapsed();
    // Let the server settle (subscriptions, lazily freed memory), then sample.
    std::thread::sleep(Duration::from_secs_f64(hold));
    let during = cli.server_pid.and_then(proc_sample);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let connected = totals.connected.load(Ordering::Relaxed);
    let mut report = serde_json::json!({
        "scenario": "idle",
        "connections": connected,
        "failed": totals.failed.load(Ordering::Relaxed),
        "open_seconds": open_for.as_secs_f64(),
    });
    if let (Some(b), Some(d)) = (before, during) {
        let per = (d.rss_kib as f64 - b.rss_kib as f64) / connected.max(1) as f64;
        report["server_rss_before_kib"] = b.rss_kib.into();
        report["server_rss_during_kib"] = d.rss_kib.into();
        report["server_kib_per_connection"] = ((per * 1000.0).round() / 1000.0).into();
    }
    print_report(cli.json, &report);
    Ok(())
}

fn fanout(
    cli: &Cli,
    threads: usize,
    subscribers: usize,
    stalled: usize,
    stream: &str,
    storage: &std::path::Path,
    (size, rate, count, duration): (usize, f64, u64, f64),
) -> anyhow::Result<()> {
    let totals = Arc::new(Totals::default());
    *totals.lag.lock().map_err(|_| anyhow::anyhow!("lock"))? =
        Some(Histogram::new_with_bounds(1, 60_000_000, 3)?);
    let stop = Arc::new(AtomicBool::new(false));
    let (addr, ticket, stream_s) = (cli.addr.clone(), cli.ticket.clone(), stream.to_string());
    let per_thread = subscribers.div_ceil(threads);
    let subscribed = Arc::new(AtomicU64::new(0));
    let last_delivery = Arc::new(AtomicU64::new(0));
    let handles = {
        let (totals, stop, subscribed, last_delivery) = (
            totals.clone(),
            stop.clone(),
            subscribed.clone(),
            last_delivery.clone(),
        );
        run_threads(threads, move |t| {
            let (totals, stop, addr, ticket, stream, subscribed, last_delivery) = (
                totals.clone(),
                stop.clone(),
                addr.clone(),
                ticket.clone(),
                stream_s.clone(),
                subscribed.clone(),
                last_delivery.clone(),
            );
            async move {
                let n = per_thread.min(subscribers.saturating_sub(t * per_thread));
                let mut tasks = Vec::new();
                for _ in 0..n {
                    let (totals, stop, addr, ticket, stream, subscribed, last_delivery) = (
                        totals.clone(),
                        stop.clone(),
                        addr.clone(),
                        ticket.clone(),
                        stream.clone(),
                        subscribed.clone(),
                        last_delivery.clone(),
                    );
                    tasks.push(monoio::spawn(async move {
                        let Ok((mut s, rest)) = open(&addr, &ticket).await else {
                            totals.failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        totals.connected.fetch_add(1, Ordering::Relaxed);
                        let msg = format!(r#"{{"op":"subscribe","id":1,"stream":"{stream}"}}"#);
                        let (r, _) = s.write_all(masked_text(&msg)).await;
                        if r.is_err() {
                            return;
                        }
                        let mut fr = FrameReader::default();
                        let mut seen = Vec::new();
                        fr.feed(&rest, &mut seen);
                        let mut lags =
                            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                        let mut buf = Vec::with_capacity(256 * 1024);
                        let mut bytes = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            // Wait for data with a timeout (cancel-safe: nothing is consumed),
                            // then read without one: cancelling an in-flight io_uring read
                            // could lose bytes.
                            let ready = monoio::time::timeout(
                                Duration::from_millis(200),
                                s.readable(false),
                            )
                            .await;
                            if ready.is_err() {
                                continue;
                            }
                            let (r, b) = s.read(buf).await;
                            buf = b;
                            let Ok(n) = r else { break };
                            if n == 0 {
                                break;
                            }
                            bytes += n as u64;
                            fr.feed(&buf[..n], &mut seen);
                            buf.clear();
                            for ev in seen.drain(..) {
                                match ev {
                                    Seen::Media { ts } => {
                                        let lag = now_micros().saturating_sub(ts).max(1);
                                        let _ = lags.record(lag);
                                        totals.segments.fetch_add(1, Ordering::Relaxed);
                                        last_delivery.store(now_micros(), Ordering::Relaxed);
                                    }
                                    Seen::Text(t) => {
                                        if t.windows(10).any(|w| w == b"subscribed") {
                                            subscribed.fetch_add(1, Ordering::Relaxed);
                                        } else if t.windows(7).any(|w| w == b"skipped") {
                                            totals.skipped.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                    Seen::Close(code) => {
                                        if totals.closed.fetch_add(1, Ordering::Relaxed) < 3 {
                                            eprintln!(
                                                "connection closed by the server with {code}"
                                            );
                                        }
                                        if code == 4408 {
                                            totals.slow_closes.fetch_add(1, Ordering::Relaxed);
                                        }
                                    }
                                }
                            }
                        }
                        totals.bytes.fetch_add(bytes, Ordering::Relaxed);
                        if let Ok(mut h) = totals.lag.lock() {
                            if let Some(h) = h.as_mut() {
                                let _ = h.add(&lags);
                            }
                        }
                    }));
                }
                // Stalled viewers: subscribe, then never read.
                let stalled_here = stalled
                    .div_ceil(threads)
                    .min(stalled.saturating_sub(t * stalled.div_ceil(threads)));
                let mut held = Vec::new();
                for _ in 0..stalled_here {
                    if let Ok((mut s, _)) = open(&addr, &ticket).await {
                        let msg = format!(r#"{{"op":"subscribe","id":1,"stream":"{stream}"}}"#);
                        let (r, _) = s.write_all(masked_text(&msg)).await;
                        if r.is_ok() {
                            held.push(s);
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
    while subscribed.load(Ordering::Relaxed) + totals.failed.load(Ordering::Relaxed)
        < subscribers as u64
        && t0.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{} subscribers ready ({} failed) in {:.1}s",
        subscribed.load(Ordering::Relaxed),
        totals.failed.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    let dir = storage.join(stream);
    std::fs::create_dir_all(&dir)?;
    let first = next_seq(&dir);
    let before = cli.server_pid.and_then(proc_sample);
    let start = Instant::now();
    let start_us = now_micros();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let deadline = start + Duration::from_secs_f64(duration);
    let mut payload = vec![0u8; size];
    for i in 0..count {
        if Instant::now() > deadline {
            break;
        }
        let due = start + interval.mul_f64(i as f64);
        if let Some(w) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(w);
        }
        let seq = first + i;
        payload[..8].copy_from_slice(&seq.to_be_bytes());
        let tmp = dir.join(format!(".seg-{seq:010}.tmp"));
        std::fs::write(&tmp, &payload)?;
        std::fs::rename(&tmp, dir.join(format!("seg-{seq:010}.bin")))?;
        if i % rate.max(1.0).round() as u64 == 0 {
            eprintln!(
                "[{:>5.1}s] produced {} delivered segments {}",
                start.elapsed().as_secs_f64(),
                i + 1,
                totals.segments.load(Ordering::Relaxed)
            );
        }
    }
    // Wait until everything produced was delivered (or the deadline).
    let expected = count * subscribed.load(Ordering::Relaxed);
    while totals.segments.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = cli.server_pid.and_then(proc_sample);
    // Throughput over the delivery period: first segment written to last one received.
    let last = last_delivery.load(Ordering::Relaxed);
    let elapsed = if last > start_us {
        (last - start_us) as f64 / 1e6
    } else {
        start.elapsed().as_secs_f64()
    };
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let lag = totals.lag.lock().ok().and_then(|h| h.clone());
    let mut report = serde_json::json!({
        "scenario": "fanout",
        "subscribers": subscribed.load(Ordering::Relaxed),
        "stalled_subscribers": stalled,
        "failed": totals.failed.load(Ordering::Relaxed),
        "segment_size": size,
        "segments_produced": count,
        "segments_delivered": totals.segments.load(Ordering::Relaxed),
        "skipped_messages": totals.skipped.load(Ordering::Relaxed),
        "closes": totals.closed.load(Ordering::Relaxed),
        "slow_consumer_closes": totals.slow_closes.load(Ordering::Relaxed),
        "seconds": elapsed,
        "delivered_bytes": bytes,
        "delivered_bytes_per_s": bytes as f64 / elapsed,
        "delivered_gbit_per_s": bytes as f64 * 8.0 / elapsed / 1e9,
    });
    if let Some(h) = lag {
        report["lag_ms"] = serde_json::json!({
            "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.9) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        });
    }
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu_s - b.cpu_s;
        report["server_cpu_seconds"] = cpu.into();
        report["server_cpu_seconds_per_gb"] = (cpu / (bytes as f64 / 1e9)).into();
        report["server_rss_kib"] = a.rss_kib.into();
    }
    print_report(cli.json, &report);
    Ok(())
}

struct VodArgs {
    connections: usize,
    inflight: usize,
    prefix: String,
    suffix: String,
    keys: usize,
    count: u64,
    duration: f64,
    hgrm: Option<PathBuf>,
    /// Take keys 0, 1, 2, ... (each once over all connections) instead of at random.
    sequential: bool,
}

fn vod(cli: &Cli, threads: usize, a: VodArgs) -> anyhow::Result<()> {
    let a = Arc::new(a);
    let issued = Arc::new(AtomicU64::new(0));
    let totals = Arc::new(Totals::default());
    *totals.lag.lock().map_err(|_| anyhow::anyhow!("lock"))? =
        Some(Histogram::new_with_bounds(1, 60_000_000, 3)?);
    let errors = Arc::new(AtomicU64::new(0));
    let threads = threads.min(a.connections).max(1);
    let per_thread = a.connections.div_ceil(threads);
    let before = cli.server_pid.and_then(proc_sample);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let handles = {
        let (issued, totals, errors, a) =
            (issued.clone(), totals.clone(), errors.clone(), a.clone());
        let (addr, ticket) = (cli.addr.clone(), cli.ticket.clone());
        run_threads(threads, move |t| {
            let (issued, totals, errors, a) =
                (issued.clone(), totals.clone(), errors.clone(), a.clone());
            let (addr, ticket) = (addr.clone(), ticket.clone());
            async move {
                let n = per_thread.min(a.connections.saturating_sub(t * per_thread));
                let mut tasks = Vec::new();
                for c in 0..n {
                    let (issued, totals, errors, a) =
                        (issued.clone(), totals.clone(), errors.clone(), a.clone());
                    let (addr, ticket) = (addr.clone(), ticket.clone());
                    tasks.push(monoio::spawn(async move {
                        let Ok((mut s, rest)) = open(&addr, &ticket).await else {
                            totals.failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        };
                        // xorshift, seeded per connection
                        let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ ((t * 7919 + c) as u64 + 1);
                        let key_count = a.keys.max(1) as u64;
                        let mut key = move || {
                            rng ^= rng << 13;
                            rng ^= rng >> 7;
                            rng ^= rng << 17;
                            (rng % key_count) as usize
                        };
                        let mut sent: std::collections::VecDeque<Instant> = Default::default();
                        let mut fr = FrameReader::default();
                        let mut seen = Vec::new();
                        fr.feed(&rest, &mut seen);
                        seen.clear();
                        let mut hist =
                            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                        let mut buf = Vec::with_capacity(256 * 1024);
                        let mut id = 0u64;
                        loop {
                            // Top up to `inflight` outstanding requests.
                            let mut out = Vec::new();
                            while sent.len() < a.inflight && Instant::now() < deadline {
                                let i = issued.fetch_add(1, Ordering::Relaxed);
                                if i >= a.count {
                                    break;
                                }
                                let k = if a.sequential { i as usize } else { key() };
                                let msg = format!(
                                    r#"{{"op":"get","id":{id},"key":"{}{k}{}"}}"#,
                                    a.prefix, a.suffix
                                );
                                id += 1;
                                out.extend_from_slice(&masked_text(&msg));
                                sent.push_back(Instant::now());
                            }
                            if !out.is_empty() {
                                let (r, _) = s.write_all(out).await;
                                if r.is_err() {
                                    break;
                                }
                            }
                            if sent.is_empty() {
                                break;
                            }
                            let (r, b) = s.read(buf).await;
                            buf = b;
                            let Ok(n) = r else { break };
                            if n == 0 {
                                break;
                            }
                            totals.bytes.fetch_add(n as u64, Ordering::Relaxed);
                            fr.feed(&buf[..n], &mut seen);
                            buf.clear();
                            for ev in seen.drain(..) {
                                let done = match ev {
                                    Seen::Media { .. } => {
                                        totals.segments.fetch_add(1, Ordering::Relaxed);
                                        true
                                    }
                                    Seen::Text(t) => {
                                        if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                                            eprintln!(
                                                "error reply: {}",
                                                String::from_utf8_lossy(&t)
                                            );
                                        }
                                        true
                                    }
                                    Seen::Close(_) => false,
                                };
                                if done {
                                    if let Some(t0) = sent.pop_front() {
                                        let _ = hist.record(t0.elapsed().as_micros().max(1) as u64);
                                    }
                                }
                            }
                        }
                        if let Ok(mut h) = totals.lag.lock() {
                            if let Some(h) = h.as_mut() {
                                let _ = h.add(&hist);
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
    for h in handles {
        let _ = h.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = cli.server_pid.and_then(proc_sample);
    let bytes = totals.bytes.load(Ordering::Relaxed);
    let hist = totals.lag.lock().ok().and_then(|h| h.clone());
    let replies = totals.segments.load(Ordering::Relaxed);
    let mut report = serde_json::json!({
        "scenario": if a.sequential { "gets" } else { "vod" },
        "connections": a.connections,
        "inflight": a.inflight,
        "gets": replies,
        "errors": errors.load(Ordering::Relaxed),
        "failed_connections": totals.failed.load(Ordering::Relaxed),
        "seconds": elapsed,
        "received_bytes": bytes,
        "bytes_per_s": bytes as f64 / elapsed,
        "gets_per_s": replies as f64 / elapsed,
    });
    if let Some(h) = &hist {
        report["latency_ms"] = serde_json::json!({
            "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p90": h.value_at_quantile(0.9) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": h.value_at_quantile(0.999) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        });
        if let Some(path) = &a.hgrm {
            write_hgrm(h, path)?;
        }
    }
    if let (Some(b), Some(af)) = (before, after) {
        let cpu = af.cpu_s - b.cpu_s;
        report["server_cpu_seconds"] = cpu.into();
        report["server_cpu_seconds_per_gb"] = (cpu / (bytes as f64 / 1e9)).into();
    }
    print_report(cli.json, &report);
    Ok(())
}

fn connect(
    cli: &Cli,
    threads: usize,
    count: usize,
    concurrency: usize,
    bad_share: f64,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let statuses: Arc<Mutex<std::collections::BTreeMap<String, u64>>> = Arc::default();
    let hist: Arc<Mutex<Histogram<u64>>> =
        Arc::new(Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?));
    let before = cli.server_pid.and_then(proc_sample);
    let start = Instant::now();
    let threads = threads.min(concurrency).max(1);
    let per_thread = concurrency.div_ceil(threads);
    let bad_every = if bad_share > 0.0 {
        (1.0 / bad_share).round().max(1.0) as u64
    } else {
        0
    };
    let handles = {
        let (next, statuses, hist) = (next.clone(), statuses.clone(), hist.clone());
        let (addr, ticket) = (cli.addr.clone(), cli.ticket.clone());
        run_threads(threads, move |t| {
            let (next, statuses, hist) = (next.clone(), statuses.clone(), hist.clone());
            let (addr, ticket) = (addr.clone(), ticket.clone());
            async move {
                let n = per_thread.min(concurrency.saturating_sub(t * per_thread));
                let mut tasks = Vec::new();
                for _ in 0..n {
                    let (next, statuses, hist) = (next.clone(), statuses.clone(), hist.clone());
                    let (addr, ticket) = (addr.clone(), ticket.clone());
                    tasks.push(monoio::spawn(async move {
                        let mut local =
                            Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("hist");
                        let mut seen: std::collections::BTreeMap<String, u64> = Default::default();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count as u64 {
                                break;
                            }
                            let bad = bad_every > 0 && i % bad_every == 0;
                            let t = if bad {
                                format!("unknown-{i}")
                            } else {
                                ticket.clone()
                            };
                            let began = Instant::now();
                            let status = match open(&addr, &t).await {
                                Ok((s, _)) => {
                                    drop(s);
                                    "101".to_string()
                                }
                                Err(e) => {
                                    let e = e.to_string();
                                    e.split_whitespace()
                                        .find(|w| {
                                            w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit())
                                        })
                                        .map_or_else(|| "error".to_string(), str::to_string)
                                }
                            };
                            let _ = local.record(began.elapsed().as_micros().max(1) as u64);
                            *seen.entry(status).or_default() += 1;
                        }
                        if let Ok(mut h) = hist.lock() {
                            let _ = h.add(&local);
                        }
                        if let Ok(mut s) = statuses.lock() {
                            for (k, v) in seen {
                                *s.entry(k).or_default() += v;
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
    for h in handles {
        let _ = h.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = cli.server_pid.and_then(proc_sample);
    let h = hist.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let statuses = statuses
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    let mut report = serde_json::json!({
        "scenario": "connect",
        "attempts": h.len(),
        "seconds": elapsed,
        "handshakes_per_s": h.len() as f64 / elapsed,
        "statuses": statuses,
        "handshake_ms": {
            "p50": h.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
            "max": h.max() as f64 / 1000.0,
        },
    });
    if let (Some(b), Some(a)) = (before, after) {
        let cpu = a.cpu_s - b.cpu_s;
        report["server_cpu_seconds"] = cpu.into();
        report["server_cpu_us_per_handshake"] = (cpu * 1e6 / h.len().max(1) as f64).into();
    }
    print_report(cli.json, &report);
    Ok(())
}

/// Percentile distribution in HdrHistogram's text format (values in milliseconds).
fn write_hgrm(h: &Histogram<u64>, path: &std::path::Path) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::from("       Value     Percentile TotalCount 1/(1-Percentile)\n\n");
    let mut total = 0u64;
    for v in h.iter_quantiles(1) {
        let q = v.quantile_iterated_to();
        total += v.count_since_last_iteration();
        let inv = if q < 1.0 {
            1.0 / (1.0 - q)
        } else {
            f64::INFINITY
        };
        let _ = writeln!(
            out,
            "{:12.3} {:14.12} {:10} {:14.2}",
            v.value_iterated_to() as f64 / 1000.0,
            q,
            total,
            inv
        );
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]\n#[Max     = {:12.3}, Total count    = {:12}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0,
        h.max() as f64 / 1000.0,
        h.len()
    );
    std::fs::write(path, out)?;
    Ok(())
}

fn next_seq(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            n.strip_prefix("seg-")?.get(..10)?.parse::<u64>().ok()
        })
        .max()
        .unwrap_or(0)
        + 1
}

fn print_report(json: bool, report: &serde_json::Value) {
    if json {
        println!("{report}");
        return;
    }
    if let Some(obj) = report.as_object() {
        for (k, v) in obj {
            println!("{k:<28} {v}");
        }
    }
}
