//! `connect`: upgrades + ticket checks per second. `count` attempts over `concurrency`
//! clients, a share with an unknown ticket; reports the rate, handshake latency, statuses
//! and the server's CPU per handshake.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{run_threads, share, Kinds};
use crate::report::{histogram, own_cpu_s, percentiles_ms, round, Progress};
use crate::Common;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 10_000)]
    pub count: usize,
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Share of attempts with an unknown ticket (0.0 to 1.0).
    #[arg(long, default_value_t = 0.1)]
    pub bad_share: f64,
    /// Upper bound of the run (seconds).
    #[arg(long, default_value_t = 120.0)]
    pub duration: f64,
}

pub fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let statuses = Arc::new(Kinds::default());
    let hist: Arc<Mutex<Histogram<u64>>> = Arc::new(Mutex::new(histogram()));
    let before = c.server.sample();
    let client_before = own_cpu_s();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(a.duration);
    let threads = c.threads.min(a.concurrency).max(1);
    let bad_every = if a.bad_share > 0.0 {
        (1.0 / a.bad_share).round().max(1.0) as u64
    } else {
        0
    };
    let handles = {
        let (next, done, statuses, hist, target) = (
            next.clone(),
            done.clone(),
            statuses.clone(),
            hist.clone(),
            c.target.clone(),
        );
        let (count, concurrency) = (a.count as u64, a.concurrency);
        run_threads(threads, move |t| {
            let (next, done, statuses, hist, target) = (
                next.clone(),
                done.clone(),
                statuses.clone(),
                hist.clone(),
                target.clone(),
            );
            async move {
                let (n, _) = share(concurrency, threads, t);
                let mut tasks = Vec::new();
                for _ in 0..n {
                    let (next, done, statuses, hist, target) = (
                        next.clone(),
                        done.clone(),
                        statuses.clone(),
                        hist.clone(),
                        target.clone(),
                    );
                    tasks.push(monoio::spawn(async move {
                        let mut local = histogram();
                        let mut seen: BTreeMap<String, u64> = BTreeMap::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= count || Instant::now() > deadline {
                                break;
                            }
                            let bad = bad_every > 0 && i % bad_every == 0;
                            let ticket = if bad {
                                format!("unknown-{i}")
                            } else {
                                target.ticket.clone()
                            };
                            let began = Instant::now();
                            let status = match target.open_with(&ticket).await {
                                Ok(ws) => {
                                    ws.reset();
                                    "101".to_string()
                                }
                                Err(e) => status_of(&e.to_string()),
                            };
                            let _ = local.record(began.elapsed().as_micros().max(1) as u64);
                            *seen.entry(status).or_default() += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        if let Ok(mut h) = hist.lock() {
                            let _ = h.add(&local);
                        }
                        statuses.add_all(seen);
                    }));
                }
                for t in tasks {
                    t.await;
                }
            }
        })
    };
    {
        let done = done.clone();
        let total = a.count as f64;
        let _progress = Progress::start(move || {
            let d = done.load(Ordering::Relaxed);
            (
                Some(d as f64 / total),
                format!(
                    "{d} handshakes, {:.0}/s",
                    d as f64 / start.elapsed().as_secs_f64()
                ),
            )
        });
        for h in handles {
            let _ = h.join();
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let after = c.server.sample();
    let client_after = own_cpu_s();
    let h = hist.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let mut report = json!({
        "scenario": "connect",
        "attempts": h.len(),
        "seconds": round(elapsed, 3),
        "handshakes_per_s": round(h.len() as f64 / elapsed, 1),
        "statuses": statuses.json(),
        "handshake_ms": percentiles_ms(&h),
    });
    if let (Some(b), Some(af)) = (before, after) {
        let cpu = af.cpu_s - b.cpu_s;
        report["server_cpu_seconds"] = round(cpu, 3).into();
        report["server_cpu_us_per_handshake"] = round(cpu * 1e6 / h.len().max(1) as f64, 2).into();
    }
    // On loopback the client's connect() also runs the server side's SYN processing, and
    // the client shares the CPU: its own cost per handshake says how much of the machine
    // the server could have had.
    if let (Some(b), Some(af)) = (client_before, client_after) {
        report["client_cpu_us_per_handshake"] =
            round((af - b) * 1e6 / h.len().max(1) as f64, 2).into();
    }
    Ok(report)
}

/// The HTTP status in an "upgrade refused: HTTP/1.1 401 ..." error, or "error".
fn status_of(e: &str) -> String {
    e.split_whitespace()
        .find(|w| w.len() == 3 && w.bytes().all(|b| b.is_ascii_digit()))
        .map_or_else(|| "error".to_string(), str::to_string)
}
