//! Metrics: per-worker counters written only by their own worker (a plain load and store,
//! no locked instruction on the hot path) and summed when `/metrics` is scraped, plus the
//! shared cache, hub and ticket figures. Rendered in the Prometheus text format 0.0.4.

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
        let _ = writeln!(
            o,
            "# HELP mediarelay_build_info Build information.\n# TYPE mediarelay_build_info gauge\nmediarelay_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let push = |o: &mut String, s: String| o.push_str(&s);
        push(
            &mut o,
            "# HELP mediarelay_io_driver_info The io driver each worker runs.\n# TYPE mediarelay_io_driver_info gauge\n".into(),
        );
        for (i, d) in self.drivers.iter().enumerate() {
            push(
                &mut o,
                format!(
                    "mediarelay_io_driver_info{{worker=\"{i}\",driver=\"{}\"}} 1\n",
                    d.get().copied().unwrap_or("starting")
                ),
            );
        }
        push(&mut o, "# HELP mediarelay_connections Open WebSocket connections.\n# TYPE mediarelay_connections gauge\n".into());
        for (i, w) in self.workers.iter().enumerate() {
            push(
                &mut o,
                format!(
                    "mediarelay_connections{{worker=\"{i}\"}} {}\n",
                    w.connections.get()
                ),
            );
        }
        let counters: [(&str, &str, u64); 6] = [
            (
                "mediarelay_accepted_connections_total",
                "TCP connections accepted on the public listener.",
                self.sum(|w| w.accepted.get()),
            ),
            (
                "mediarelay_sent_bytes_total",
                "Bytes written to WebSocket clients.",
                self.sum(|w| w.bytes_sent.get()),
            ),
            (
                "mediarelay_sent_frames_total",
                "WebSocket frames written to clients.",
                self.sum(|w| w.frames_sent.get()),
            ),
            (
                "mediarelay_skipped_total",
                "skipped messages sent to slow subscribers.",
                self.sum(|w| w.skipped.get()),
            ),
            (
                "mediarelay_slow_consumer_closes_total",
                "Connections closed with 4408.",
                self.sum(|w| w.slow_closes.get()),
            ),
            (
                "mediarelay_revocation_closes_total",
                "Connections closed with 4401.",
                self.sum(|w| w.revocation_closes.get()),
            ),
        ];
        for (name, help, v) in counters {
            push(
                &mut o,
                format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"),
            );
        }
        push(&mut o, "# HELP mediarelay_upgrades_total WebSocket upgrade attempts by result.\n# TYPE mediarelay_upgrades_total counter\n".into());
        for (i, r) in UPGRADES.iter().enumerate() {
            let v = self.sum(|w| w.upgrades[i].get());
            push(
                &mut o,
                format!("mediarelay_upgrades_total{{result=\"{r}\"}} {v}\n"),
            );
        }
        push(&mut o, "# HELP mediarelay_requests_total Client requests by op and result.\n# TYPE mediarelay_requests_total counter\n".into());
        for (oi, op) in OPS.iter().enumerate() {
            for (ri, r) in RESULTS.iter().enumerate() {
                let v = self.sum(|w| w.requests[oi][ri].get());
                if v > 0 {
                    push(
                        &mut o,
                        format!("mediarelay_requests_total{{op=\"{op}\",result=\"{r}\"}} {v}\n"),
                    );
                }
            }
        }
        push(&mut o, "# HELP mediarelay_closes_total Close frames sent by code.\n# TYPE mediarelay_closes_total counter\n".into());
        for (i, c) in CLOSE_CODES.iter().enumerate() {
            let v = self.sum(|w| w.closes[i].get());
            push(
                &mut o,
                format!("mediarelay_closes_total{{code=\"{c}\"}} {v}\n"),
            );
        }
        let cs = &shared.cache.stats;
        let backend = shared.cache.origin().backend();
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let cache: [(&str, &str, &str, u64); 8] = [
            (
                "mediarelay_origin_requests_total",
                "counter",
                "Origin object reads.",
                l(&cs.origin_gets),
            ),
            (
                "mediarelay_origin_errors_total",
                "counter",
                "Origin object reads that failed.",
                l(&cs.origin_errors),
            ),
            (
                "mediarelay_cache_hits_total",
                "counter",
                "gets answered from the segment cache.",
                l(&cs.hits),
            ),
            (
                "mediarelay_cache_misses_total",
                "counter",
                "gets that started an origin read.",
                l(&cs.misses),
            ),
            (
                "mediarelay_cache_coalesced_total",
                "counter",
                "gets that joined an origin read already under way.",
                l(&cs.coalesced),
            ),
            (
                "mediarelay_cache_evictions_total",
                "counter",
                "Objects evicted from the segment cache.",
                l(&cs.evictions),
            ),
            (
                "mediarelay_cache_bytes",
                "gauge",
                "Bytes held by the segment cache.",
                l(&cs.bytes),
            ),
            (
                "mediarelay_cache_entries",
                "gauge",
                "Objects held by the segment cache.",
                l(&cs.entries),
            ),
        ];
        for (name, kind, help, v) in cache {
            let labels = if name.starts_with("mediarelay_origin") {
                format!("{{backend=\"{backend}\"}}")
            } else {
                String::new()
            };
            push(
                &mut o,
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{labels} {v}\n"),
            );
        }
        let snap = shared.tickets.load();
        let age = snap
            .built_at
            .and_then(|t| t.elapsed().ok())
            .map_or(0.0, |d| d.as_secs_f64());
        let pool = crate::pool::stats();
        let gauges: [(&str, &str, String); 5] = [
            (
                "mediarelay_live_streams",
                "Live streams being followed.",
                shared.hub.stream_count().to_string(),
            ),
            (
                "mediarelay_segments_published_total",
                "Live segments fetched and fanned out.",
                shared.hub.published.load(Ordering::Relaxed).to_string(),
            ),
            (
                "mediarelay_ticket_snapshot_entries",
                "Tickets in the current snapshot.",
                snap.len().to_string(),
            ),
            (
                "mediarelay_ticket_snapshot_age_seconds",
                "Age of the current ticket snapshot.",
                format!("{age:.3}"),
            ),
            (
                "mediarelay_buffer_pool_idle_bytes",
                "Idle bytes held by the payload buffer pool.",
                pool.0.to_string(),
            ),
        ];
        for (name, help, v) in gauges {
            let kind = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            push(
                &mut o,
                format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}\n"),
            );
        }
        o
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
