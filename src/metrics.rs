//! Metrics: per-worker counters written only by their own worker (a plain load and store,
//! no locked instruction on the hot path) and summed when `/metrics` is scraped, plus the
//! shared cache, hub and ticket figures. Rendered in the Prometheus text format 0.0.4,
//! which PROTOCOL.md fixes for `/metrics`.
//!
//! The exposition is written here rather than by `prometheus-client`: that crate encodes
//! OpenMetrics (counter families named without `_total`, a `# EOF` trailer), not 0.0.4, and
//! its metric types own their values, so each scrape would first copy every per-worker
//! figure into them. The output is checked by `promtool check metrics` and scraped by a
//! real Prometheus in `tests/ops.rs`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A counter with a single writer (its worker) and any number of readers.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1)
    }

    /// Add `n`. Only the owning worker writes, so load + store cannot lose updates.
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Subtract `n` (gauges).
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }

    /// Set (gauges sampled by their worker).
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Request outcomes counted per op.
pub const OPS: &[&str] = &["get", "subscribe", "unsubscribe", "bad"];
/// Request results.
pub const RESULTS: &[&str] = &[
    "ok",
    "bad_request",
    "forbidden",
    "not_found",
    "too_large",
    "unavailable",
    "too_many_subscriptions",
    "rate_limited",
];
/// Upgrade results.
pub const UPGRADES: &[&str] = &[
    "ok",
    "ticket_missing",
    "ticket_invalid",
    "ticket_expired",
    "ticket_revoked",
    "too_many_connections",
    "rate_limited",
    "bad_handshake",
];
/// Close codes counted.
pub const CLOSE_CODES: &[u16] = &[1000, 1001, 1002, 1003, 1007, 1008, 1009, 4401, 4408];

/// One worker's counters.
#[derive(Default)]
pub struct WorkerStats {
    pub connections: Counter,
    pub accepted: Counter,
    pub bytes_sent: Counter,
    pub frames_sent: Counter,
    pub skipped: Counter,
    pub slow_closes: Counter,
    pub revocation_closes: Counter,
    /// Bytes waiting in this worker's send queues (sampled by its ticket sweep).
    pub queued_bytes: Counter,
    requests: [[Counter; 8]; 4],
    upgrades: [Counter; 8],
    closes: [Counter; 9],
}

impl WorkerStats {
    /// Count a request outcome.
    pub fn request(&self, op: &str, result: &str) {
        if let (Some(o), Some(r)) = (
            OPS.iter().position(|x| *x == op),
            RESULTS.iter().position(|x| *x == result),
        ) {
            self.requests[o][r].inc();
        }
    }

    /// Count an upgrade outcome.
    pub fn upgrade(&self, result: &str) {
        if let Some(i) = UPGRADES.iter().position(|x| *x == result) {
            self.upgrades[i].inc();
        }
    }

    /// Count a close the relay initiated or answered.
    pub fn count_close(&self, code: u16) {
        if let Some(i) = CLOSE_CODES.iter().position(|c| *c == code) {
            self.closes[i].inc();
        }
    }
}

/// Everything `/metrics` reports.
pub struct Metrics {
    pub workers: Vec<Arc<WorkerStats>>,
    pub drivers: Vec<std::sync::OnceLock<&'static str>>,
}

impl Metrics {
    /// Counters for `n` workers.
    pub fn new(n: usize) -> Metrics {
        Metrics {
            workers: (0..n).map(|_| Arc::new(WorkerStats::default())).collect(),
            drivers: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }

    fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
    }

    /// Render the exposition text.
    pub fn render(&self, shared: &crate::worker::Shared) -> String {
        let mut o = String::with_capacity(8192);
        let one = |v: u64| vec![(String::new(), v.to_string())];
        family(
            &mut o,
            "mediarelay_build_info",
            "gauge",
            "Build information.",
            vec![(
                format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
                "1".into(),
            )],
        );
        let drivers = self.drivers.iter().enumerate().map(|(i, d)| {
            let d = d.get().copied().unwrap_or("starting");
            (format!("worker=\"{i}\",driver=\"{d}\""), "1".to_string())
        });
        family(
            &mut o,
            "mediarelay_io_driver_info",
            "gauge",
            "The io driver each worker runs.",
            drivers.collect(),
        );
        let conns = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("worker=\"{i}\""), w.connections.get().to_string()));
        family(
            &mut o,
            "mediarelay_connections",
            "gauge",
            "Open WebSocket connections.",
            conns.collect(),
        );
        let counters: [(&str, &str, Reader); 6] = [
            (
                "mediarelay_accepted_connections_total",
                "TCP connections accepted on the public listener.",
                |w| w.accepted.get(),
            ),
            (
                "mediarelay_sent_bytes_total",
                "Bytes written to WebSocket clients.",
                |w| w.bytes_sent.get(),
            ),
            (
                "mediarelay_sent_frames_total",
                "WebSocket frames written to clients.",
                |w| w.frames_sent.get(),
            ),
            (
                "mediarelay_skipped_total",
                "skipped messages sent to slow subscribers.",
                |w| w.skipped.get(),
            ),
            (
                "mediarelay_slow_consumer_closes_total",
                "Connections closed with 4408.",
                |w| w.slow_closes.get(),
            ),
            (
                "mediarelay_revocation_closes_total",
                "Connections closed with 4401.",
                |w| w.revocation_closes.get(),
            ),
        ];
        for (name, help, get) in counters {
            family(&mut o, name, "counter", help, one(self.sum(get)));
        }
        let upgrades = UPGRADES.iter().enumerate().map(|(i, r)| {
            (
                format!("result=\"{r}\""),
                self.sum(|w| w.upgrades[i].get()).to_string(),
            )
        });
        family(
            &mut o,
            "mediarelay_upgrades_total",
            "counter",
            "WebSocket upgrade attempts by result.",
            upgrades.collect(),
        );
        let mut requests = Vec::new();
        for (oi, op) in OPS.iter().enumerate() {
            for (ri, r) in RESULTS.iter().enumerate() {
                let v = self.sum(|w| w.requests[oi][ri].get());
                if v > 0 {
                    requests.push((format!("op=\"{op}\",result=\"{r}\""), v.to_string()));
                }
            }
        }
        family(
            &mut o,
            "mediarelay_requests_total",
            "counter",
            "Client requests by op and result.",
            requests,
        );
        let closes = CLOSE_CODES.iter().enumerate().map(|(i, c)| {
            (
                format!("code=\"{c}\""),
                self.sum(|w| w.closes[i].get()).to_string(),
            )
        });
        family(
            &mut o,
            "mediarelay_closes_total",
            "counter",
            "Close frames sent by code.",
            closes.collect(),
        );
        let cs = &shared.cache.stats;
        let backend = format!("backend=\"{}\"", shared.cache.origin().backend());
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let results = ["ok", "not_found", "too_large", "unavailable"]
            .iter()
            .zip(&cs.origin_results)
            .map(|(r, n)| (format!("{backend},result=\"{r}\""), l(n).to_string()));
        family(
            &mut o,
            "mediarelay_origin_requests_total",
            "counter",
            "Origin object reads by result (retries inside one read are not counted).",
            results.collect(),
        );
        let fl = &cs.fetch_latency;
        let mut cumulative = 0u64;
        let mut samples = Vec::new();
        for (i, b) in fl.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            let le = crate::cache::FETCH_BUCKETS
                .get(i)
                .map_or("+Inf".to_string(), |v| v.to_string());
            samples.push((format!("{backend},le=\"{le}\""), cumulative.to_string()));
        }
        let _ = writeln!(
            o,
            "# HELP mediarelay_origin_fetch_seconds Latency of origin object reads.\n# TYPE mediarelay_origin_fetch_seconds histogram"
        );
        for (labels, v) in samples {
            let _ = writeln!(o, "mediarelay_origin_fetch_seconds_bucket{{{labels}}} {v}");
        }
        let _ = writeln!(
            o,
            "mediarelay_origin_fetch_seconds_sum{{{backend}}} {}\nmediarelay_origin_fetch_seconds_count{{{backend}}} {}",
            fl.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            fl.count.load(Ordering::Relaxed)
        );
        let snap = shared.tickets.load();
        let age = shared.tickets.age().map_or(f64::NAN, |d| d.as_secs_f64());
        let lookups = ["found", "missing", "rate_limited", "failed"]
            .iter()
            .zip(&shared.tickets.lookups)
            .map(|(r, n)| {
                (
                    format!("result=\"{r}\""),
                    n.load(Ordering::Relaxed).to_string(),
                )
            });
        family(
            &mut o,
            "mediarelay_ticket_lookups_total",
            "counter",
            "Point lookups of tickets missing from the snapshot, by result.",
            lookups.collect(),
        );
        let plain: [(&str, &str, &str, String); 13] = [
            (
                "mediarelay_cache_hits_total",
                "counter",
                "gets answered from the segment cache.",
                l(&cs.hits).to_string(),
            ),
            (
                "mediarelay_cache_misses_total",
                "counter",
                "gets that started an origin read.",
                l(&cs.misses).to_string(),
            ),
            (
                "mediarelay_cache_coalesced_total",
                "counter",
                "gets that joined an origin read already under way.",
                l(&cs.coalesced).to_string(),
            ),
            (
                "mediarelay_cache_evictions_total",
                "counter",
                "Objects evicted from the segment cache.",
                l(&cs.evictions).to_string(),
            ),
            (
                "mediarelay_cache_bytes",
                "gauge",
                "Bytes held by the segment cache.",
                l(&cs.bytes).to_string(),
            ),
            (
                "mediarelay_cache_entries",
                "gauge",
                "Objects held by the segment cache.",
                l(&cs.entries).to_string(),
            ),
            (
                "mediarelay_live_subscribers",
                "gauge",
                "Subscriptions to live streams.",
                shared.hub.subscriber_count().to_string(),
            ),
            (
                "mediarelay_live_streams",
                "gauge",
                "Live streams being followed.",
                shared.hub.stream_count().to_string(),
            ),
            (
                "mediarelay_segments_published_total",
                "counter",
                "Live segments fetched and fanned out.",
                shared.hub.published.load(Ordering::Relaxed).to_string(),
            ),
            (
                "mediarelay_ticket_snapshot_entries",
                "gauge",
                "Tickets in the current snapshot.",
                snap.len().to_string(),
            ),
            (
                "mediarelay_ticket_snapshot_age_seconds",
                "gauge",
                "Time since the ticket store was last read successfully (NaN: never).",
                format!("{age:.3}"),
            ),
            (
                "mediarelay_ticket_sync_errors_total",
                "counter",
                "Failed reads of the ticket store.",
                shared
                    .tickets
                    .sync_errors
                    .load(Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "mediarelay_buffer_pool_idle_bytes",
                "gauge",
                "Idle bytes held by the payload buffer pool.",
                crate::pool::stats().0.to_string(),
            ),
        ];
        for (name, kind, help, v) in plain {
            family(&mut o, name, kind, help, vec![(String::new(), v)]);
        }
        o
    }
}

/// Reads one counter of a worker.
type Reader = fn(&WorkerStats) -> u64;

/// Write one metric family: HELP, TYPE and its samples (`labels` without braces).
fn family(o: &mut String, name: &str, kind: &str, help: &str, samples: Vec<(String, String)>) {
    let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(o, "{name} {value}");
        } else {
            let _ = writeln!(o, "{name}{{{labels}}} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters() {
        let w = WorkerStats::default();
        w.bytes_sent.add(10);
        w.bytes_sent.add(5);
        w.connections.inc();
        w.connections.sub(1);
        w.request("get", "ok");
        w.request("nope", "ok");
        w.upgrade("ticket_invalid");
        w.count_close(4408);
        assert_eq!(w.bytes_sent.get(), 15);
        assert_eq!(w.connections.get(), 0);
        assert_eq!(w.requests[0][0].get(), 1);
        assert_eq!(w.upgrades[2].get(), 1);
        assert_eq!(w.closes[8].get(), 1);
    }
}
