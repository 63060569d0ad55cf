//! State every worker shares, read-mostly: the running configuration (SIGHUP swaps it),
//! the ticket gate, the cache, the hub, the metrics, and the relay's readiness and drain
//! flags. Also what `/readyz` and `/metrics` report from it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::config::Config;
use crate::fanout::Hub;
use crate::metrics::{CacheFigures, Figures, Metrics, TicketFigures};
use crate::origin::cache::{Cache, FETCH_BUCKETS};
use crate::origin::OriginError;
use crate::tickets::admission::Gate;

/// State shared by every worker.
pub struct Shared {
    config: arc_swap::ArcSwap<Config>,
    /// The upgrade rule and the ticket snapshot.
    pub gate: Gate,
    /// Objects and their single-flight fetches.
    pub cache: Arc<Cache>,
    /// Live streams.
    pub hub: Arc<Hub>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Set when the drain starts.
    pub draining: AtomicBool,
    /// Workers whose listeners are bound (ready when all are).
    pub listening: AtomicUsize,
    /// Workers that still have connections to drain.
    pub draining_workers: AtomicUsize,
    /// Number of workers.
    pub workers: usize,
    /// WebSocket connections open on all workers.
    pub connections: AtomicUsize,
    /// What the connections do.
    pub mode: super::Mode,
    /// The public listener's TLS configuration, when it speaks TLS.
    pub tls: Option<super::tls::Tls>,
}

/// Why the relay is not ready (`/readyz`).
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// Draining.
    #[error("draining")]
    Draining,
    /// Not every listener is up yet.
    #[error("starting")]
    Starting,
    /// No ticket snapshot yet.
    #[error("ticket snapshot not loaded")]
    Tickets,
    /// The origin is not usable.
    #[error("storage: {0}")]
    Storage(String),
}

impl Shared {
    pub(super) fn new(
        config: Config,
        gate: Gate,
        cache: Arc<Cache>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        workers: usize,
        mode: super::Mode,
    ) -> Shared {
        Shared {
            config: arc_swap::ArcSwap::from_pointee(config),
            gate,
            cache,
            hub,
            metrics,
            draining: AtomicBool::new(false),
            listening: AtomicUsize::new(0),
            draining_workers: AtomicUsize::new(workers),
            workers,
            connections: AtomicUsize::new(0),
            mode,
            tls: None,
        }
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Put a new configuration in force.
    pub fn set_config(&self, config: Config) {
        self.config.store(Arc::new(config));
    }

    /// The connection limit in force: `server.max_connections`, or (0) the process's
    /// open-file limit less 256 for listeners, origin files and the like, and less the
    /// payload files' bound.
    pub fn max_connections(&self) -> usize {
        match self.config().server.max_connections {
            0 => crate::sys::open_file_limit().map_or(usize::MAX, |n| {
                (n as usize)
                    .saturating_sub(256 + crate::origin::files::limit())
                    .max(64)
            }),
            n => n,
        }
    }

    /// Whether the drain has started.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Take a connection slot of the relay; false when it holds its limit or is draining.
    pub fn admit_connection(&self) -> bool {
        // A draining relay takes no new connection: it is about to close them all, and the
        // client should go elsewhere (through the balancer) or come back.
        if self.is_draining() {
            return false;
        }
        let max = self.max_connections();
        self.connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Give a connection slot back.
    pub fn release_connection(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// `/readyz`: storage usable, ticket snapshot loaded, listeners up, not draining.
    pub fn readiness(&self) -> Result<(), NotReady> {
        if self.is_draining() {
            return Err(NotReady::Draining);
        }
        if self.listening.load(Ordering::Acquire) < self.workers {
            return Err(NotReady::Starting);
        }
        if !self.gate.tickets.is_ready() {
            return Err(NotReady::Tickets);
        }
        self.cache.origin().check_ready().map_err(|e| match e {
            OriginError::Unavailable(why) => NotReady::Storage(why),
            other => NotReady::Storage(other.to_string()),
        })
    }

    /// The figures `/metrics` reports besides the workers' counters.
    pub fn figures(&self) -> Figures {
        let l = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let cs = &self.cache.stats;
        let fl = &cs.fetch_latency;
        let tickets = &self.gate.tickets;
        Figures {
            backend: self.cache.origin().backend(),
            origin_results: ["ok", "not_found", "too_large", "unavailable"]
                .into_iter()
                .zip(cs.origin_results.iter().map(l))
                .collect(),
            origin_calls: self.cache.origin().calls(),
            notifications: self
                .cache
                .origin()
                .wakers()
                .filter(|w| w.enabled.load(Ordering::Relaxed))
                .map(|w| crate::metrics::render::NotificationFigures {
                    received: l(&w.received),
                    woke: l(&w.woke),
                    duplicates: l(&w.duplicates),
                    errors: l(&w.errors),
                    up: w.up.load(Ordering::Relaxed),
                }),
            fetch_buckets: fl
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| (FETCH_BUCKETS.get(i).copied(), l(n)))
                .collect(),
            fetch_sum_seconds: l(&fl.sum_micros) as f64 / 1e6,
            fetch_count: l(&fl.count),
            cache: CacheFigures {
                hits: l(&cs.hits),
                misses: l(&cs.misses),
                coalesced: l(&cs.coalesced),
                evictions: l(&cs.evictions),
                bytes: l(&cs.bytes),
                entries: l(&cs.entries),
            },
            live_subscribers: self.hub.subscriber_count() as u64,
            payload_files: crate::origin::files::open() as u64,
            live_streams: self.hub.stream_count() as u64,
            segments_published: l(&self.hub.published),
            stream_limit_refusals: l(&self.hub.refused),
            max_connections: self.max_connections().min(u64::MAX as usize) as u64,
            queue_budget: self.config().connection.queue_budget,
            tickets: TicketFigures {
                snapshot_entries: tickets.load().len() as u64,
                snapshot_age_seconds: tickets.age().map(|d| d.as_secs_f64()),
                sync_errors: l(&tickets.sync_errors),
                lookups: ["found", "missing", "rate_limited", "failed"]
                    .into_iter()
                    .zip(tickets.lookups.iter().map(l))
                    .collect(),
            },
            pool_idle_bytes: crate::origin::pool::stats().0 as u64,
        }
    }
}
