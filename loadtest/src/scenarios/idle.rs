//! `idle`: open N authenticated connections (optionally each subscribed to a quiet
//! stream), hold them, and report the server's resident memory per connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{run_threads, share};
use crate::report::{round, Progress};
use crate::Common;

#[derive(clap::Args, Clone)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Subscribe each connection to this (quiet) stream.
    #[arg(long)]
    pub stream: Option<String>,
    /// How long to hold them once all are open (seconds).
    #[arg(long, default_value_t = 5.0)]
    pub hold: f64,
    /// Connections opened per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    pub connect_rate: u64,
    /// Give up opening after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    pub duration: f64,
}

pub fn run(c: &Common, a: Args) -> anyhow::Result<Value> {
    let before = c.server.sample();
    let connected = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(a.duration);
    let threads = c.threads;
    let handles = {
        let (connected, failed, stop, target, a) = (
            connected.clone(),
            failed.clone(),
            stop.clone(),
            c.target.clone(),
            a.clone(),
        );
        run_threads(threads, move |t| {
            let (connected, failed, stop, target, a) = (
                connected.clone(),
                failed.clone(),
                stop.clone(),
                target.clone(),
                a.clone(),
            );
            async move {
                let (n, first) = share(a.connections, threads, t);
                let mut held = Vec::with_capacity(n);
                for i in first..first + n {
                    if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                        break;
                    }
                    if a.connect_rate > 0 {
                        let due = Duration::from_secs_f64(i as f64 / a.connect_rate as f64);
                        if let Some(wait) = due.checked_sub(started.elapsed()) {
                            monoio::time::sleep(wait).await;
                        }
                    }
                    match target.open().await {
                        Ok(mut ws) => {
                            if let Some(st) = &a.stream {
                                let (r, _) = ws.s.write_all(target.subscribe(1, st)).await;
                                if r.is_err() {
                                    failed.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                            }
                            connected.fetch_add(1, Ordering::Relaxed);
                            held.push(ws);
                        }
                        Err(e) => {
                            if failed.fetch_add(1, Ordering::Relaxed) < 3 {
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
    {
        let (pc, pf) = (connected.clone(), failed.clone());
        let total = a.connections as f64;
        let _progress = Progress::start(move || {
            let (c, f) = (pc.load(Ordering::Relaxed), pf.load(Ordering::Relaxed));
            (
                Some((c + f) as f64 / total),
                format!("connected {c} failed {f}"),
            )
        });
        while connected.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed)
            < a.connections as u64
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let open_for = started.elapsed();
    // Let the server settle (subscriptions, lazily freed memory), then sample.
    std::thread::sleep(Duration::from_secs_f64(a.hold));
    let during = c.server.sample();
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let n = connected.load(Ordering::Relaxed);
    let mut report = json!({
        "scenario": "idle",
        "connections": n,
        "failed": failed.load(Ordering::Relaxed),
        "open_seconds": round(open_for.as_secs_f64(), 3),
        "connections_per_s": round(n as f64 / open_for.as_secs_f64(), 1),
    });
    if let (Some(b), Some(d)) = (before, during) {
        let per = (d.rss_kib as f64 - b.rss_kib as f64) / n.max(1) as f64;
        report["server_rss_before_kib"] = b.rss_kib.into();
        report["server_rss_during_kib"] = d.rss_kib.into();
        report["server_kib_per_connection"] = round(per, 3).into();
    }
    Ok(report)
}
