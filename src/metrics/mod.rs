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

pub mod render;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::protocol::{CloseCode, ErrorCode, Op};

pub use render::{CacheFigures, Figures, TicketFigures};

/// A counter with a single writer (its worker) and any number of readers.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.add(1);
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

/// Upgrade results.
pub const UPGRADES: &[&str] = &[
    "ok",
    "ticket_missing",
    "ticket_invalid",
    "ticket_expired",
    "ticket_revoked",
    "too_many_connections",
    "rate_limited",
    "tickets_unavailable",
    "overloaded",
    "bad_handshake",
];

/// Ingest request results (PROTOCOL.md v1.1 "Ingest").
pub const INGEST_RESULTS: &[&str] = &[
    "created",
    "replaced",
    "deleted",
    "not_found",
    "bad_request",
    "forbidden",
    "too_large",
    "unavailable",
    "aborted",
    "ticket_missing",
    "ticket_invalid",
    "ticket_expired",
    "ticket_revoked",
    "rate_limited",
    "tickets_unavailable",
];

/// TLS handshake outcomes: by negotiated version when done, else why not.
pub const TLS_HANDSHAKES: &[(&str, &str)] = &[
    ("ok", "TLSv1.3"),
    ("ok", "TLSv1.2"),
    ("ok", "other"),
    ("failed", ""),
    ("timeout", ""),
];

/// One worker's counters.
#[derive(Default)]
pub struct WorkerStats {
    /// Open connections (gauge).
    pub connections: Counter,
    pub accepted: Counter,
    pub bytes_sent: Counter,
    /// Of `bytes_sent`, payload bytes that left by `sendfile` (no copy).
    pub bytes_sendfile: Counter,
    pub frames_sent: Counter,
    pub skipped: Counter,
    pub slow_closes: Counter,
    pub revocation_closes: Counter,
    /// Subscriptions refused for too many different streams from one connection a minute.
    pub stream_rate_refusals: Counter,
    /// Keepalive pings sent.
    pub pings: Counter,
    /// Bytes waiting in this worker's send queues (sampled by its ticket sweep).
    pub queued_bytes: Counter,
    /// Per op, per result: `ok` first, then each [`ErrorCode`].
    requests: [[Counter; 1 + ErrorCode::ALL.len()]; Op::ALL.len()],
    upgrades: [Counter; UPGRADES.len()],
    ingests: [Counter; INGEST_RESULTS.len()],
    tls_handshakes: [Counter; TLS_HANDSHAKES.len()],
    /// Body bytes stored through ingest.
    pub ingest_bytes: Counter,
    closes: [Counter; CloseCode::SENT.len()],
}

impl WorkerStats {
    /// Count a request outcome.
    pub fn request(&self, op: Op, result: Result<(), ErrorCode>) {
        let r = result.map_or_else(|code| 1 + code.index(), |()| 0);
        self.requests[op.index()][r].inc();
    }

    /// How many requests of `op` ended with `result` on this worker.
    pub fn requests(&self, op: Op, result: Result<(), ErrorCode>) -> u64 {
        let r = result.map_or_else(|code| 1 + code.index(), |()| 0);
        self.requests[op.index()][r].get()
    }

    /// Count an upgrade outcome.
    pub fn upgrade(&self, result: &str) {
        if let Some(i) = UPGRADES.iter().position(|x| *x == result) {
            self.upgrades[i].inc();
        }
    }

    /// Count an ingest request's result (one of [`INGEST_RESULTS`]).
    pub fn ingest(&self, result: &str) {
        if let Some(i) = INGEST_RESULTS.iter().position(|x| *x == result) {
            self.ingests[i].inc();
        }
    }

    /// How many ingest requests ended with `result` on this worker.
    pub fn ingests(&self, result: &str) -> u64 {
        INGEST_RESULTS
            .iter()
            .position(|x| *x == result)
            .map_or(0, |i| self.ingests[i].get())
    }

    /// Count a TLS handshake: `Ok(version label)` or `Err("failed" | "timeout")`.
    pub fn tls_handshake(&self, outcome: Result<&str, &str>) {
        let at = TLS_HANDSHAKES.iter().position(|(r, v)| match outcome {
            Ok(version) => *r == "ok" && *v == version,
            Err(why) => *r == why,
        });
        if let Some(i) = at {
            self.tls_handshakes[i].inc();
        }
    }

    /// TLS handshakes counted under entry `i` of [`TLS_HANDSHAKES`].
    pub fn tls_handshakes(&self, i: usize) -> u64 {
        self.tls_handshakes.get(i).map_or(0, Counter::get)
    }

    /// Count a close the relay initiated or answered (a client code outside
    /// [`CloseCode::SENT`] that is echoed back is not counted).
    pub fn count_close(&self, code: CloseCode) {
        if let Some(i) = CloseCode::SENT.iter().position(|c| *c == code) {
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

    pub(crate) fn sum(&self, f: impl Fn(&WorkerStats) -> u64) -> u64 {
        self.workers.iter().map(|w| f(w)).sum()
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
        w.request(Op::Get, Ok(()));
        w.request(Op::Subscribe, Err(ErrorCode::RateLimited));
        w.upgrade("ticket_invalid");
        w.upgrade("nope");
        w.count_close(CloseCode::SlowConsumer);
        w.count_close(CloseCode::Echo(3000));
        assert_eq!(w.bytes_sent.get(), 15);
        assert_eq!(w.connections.get(), 0);
        assert_eq!(w.requests[0][0].get(), 1);
        assert_eq!(w.requests[1][7].get(), 1);
        assert_eq!(w.upgrades[2].get(), 1);
        assert_eq!(w.closes[9].get(), 1);
    }
}
