//! The Prometheus text exposition (format 0.0.4, which docs/protocol.md fixes for
//! `/metrics`), rendered from the workers' counters and a plain [`Figures`] struct the
//! caller fills from the cache, hub and ticket snapshot: this module reads no other
//! module's internals.

use std::fmt::Write;

use super::{Metrics, WorkerStats, INGEST_RESULTS, TLS_HANDSHAKES, UPGRADES};
use crate::protocol::{CloseCode, ErrorCode, Op};

/// The segment cache's figures at scrape time.
#[derive(Debug, Default, Clone)]
pub struct CacheFigures {
    /// gets answered from the cache.
    pub hits: u64,
    /// gets that started an origin read.
    pub misses: u64,
    /// gets that joined a read under way.
    pub coalesced: u64,
    /// Objects evicted.
    pub evictions: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Objects held.
    pub entries: u64,
}

/// The ticket snapshot's figures at scrape time.
#[derive(Debug, Default, Clone)]
pub struct TicketFigures {
    /// Tickets in the snapshot.
    pub snapshot_entries: u64,
    /// Seconds since the store was last read successfully (`None`: never).
    pub snapshot_age_seconds: Option<f64>,
    /// Failed reads of the store.
    pub sync_errors: u64,
    /// Point lookups by result label.
    pub lookups: Vec<(&'static str, u64)>,
}

/// Pub/Sub notifications: received, that woke a poller, redelivered, pull failures, and
/// whether the last pull worked.
#[derive(Debug, Default, Clone)]
pub struct NotificationFigures {
    pub received: u64,
    pub woke: u64,
    pub duplicates: u64,
    pub errors: u64,
    pub up: bool,
}

/// Everything `/metrics` reports besides the workers' own counters.
#[derive(Debug, Default, Clone)]
pub struct Figures {
    /// The origin backend (`fs`, `gcs`).
    pub backend: &'static str,
    /// Origin reads by result label.
    pub origin_results: Vec<(&'static str, u64)>,
    /// Requests sent to the storage service, by kind (Cloud Storage only).
    pub origin_calls: Vec<(&'static str, u64)>,
    /// Cloud Storage notifications, when configured.
    pub notifications: Option<NotificationFigures>,
    /// Origin fetch latency: (upper bound in seconds, `None` for +Inf; count in bucket).
    pub fetch_buckets: Vec<(Option<f64>, u64)>,
    /// Sum of fetch latencies, seconds.
    pub fetch_sum_seconds: f64,
    /// Number of fetches timed.
    pub fetch_count: u64,
    /// The segment cache.
    pub cache: CacheFigures,
    /// Subscriptions to live streams.
    pub live_subscribers: u64,
    /// Payload files open (sealed memfds and kept object files).
    pub payload_files: u64,
    /// Live streams followed.
    pub live_streams: u64,
    /// Live segments fetched and fanned out.
    pub segments_published: u64,
    /// Subscriptions refused because the relay followed `max_streams` streams.
    pub stream_limit_refusals: u64,
    /// The connection limit in force.
    pub max_connections: u64,
    /// The relay-wide send queue budget.
    pub queue_budget: u64,
    /// The ticket snapshot.
    pub tickets: TicketFigures,
    /// Idle bytes in the payload buffer pool.
    pub pool_idle_bytes: u64,
}

impl Metrics {
    /// Render the exposition text: the workers' counters and `figures`, the shared parts
    /// sampled by the caller.
    pub fn render(&self, figures: &Figures) -> String {
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
        let queued = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (format!("worker=\"{i}\""), w.queued_bytes.get().to_string()));
        family(
            &mut o,
            "mediarelay_send_queue_bytes",
            "gauge",
            "Bytes waiting in connections' send queues (sampled every 250 ms).",
            queued.collect(),
        );
        family(
            &mut o,
            "mediarelay_queue_budget_bytes",
            "gauge",
            "Bytes all send queues may hold together before the largest are trimmed.",
            vec![(String::new(), figures.queue_budget.to_string())],
        );
        family(
            &mut o,
            "mediarelay_max_connections",
            "gauge",
            "The relay's connection limit (upgrades above it get 503 overloaded).",
            vec![(String::new(), figures.max_connections.to_string())],
        );
        let counters: [(&str, &str, Reader); 8] = [
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
                "mediarelay_sent_file_bytes_total",
                "Of the bytes written, payload bytes sent with sendfile from payload files (no copy).",
                |w| w.bytes_sendfile.get(),
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
                "mediarelay_pings_total",
                "Keepalive pings sent to silent connections.",
                |w| w.pings.get(),
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
        let ingests = INGEST_RESULTS.iter().map(|r| {
            (
                format!("result=\"{r}\""),
                self.sum(|w| w.ingests(r)).to_string(),
            )
        });
        family(
            &mut o,
            "mediarelay_ingest_requests_total",
            "counter",
            "Ingest PUT and DELETE requests by result.",
            ingests.collect(),
        );
        family(
            &mut o,
            "mediarelay_ingest_bytes_total",
            "counter",
            "Object bytes stored through ingest.",
            one(self.sum(|w| w.ingest_bytes.get())),
        );
        let handshakes = TLS_HANDSHAKES.iter().enumerate().map(|(i, (r, v))| {
            let labels = if v.is_empty() {
                format!("result=\"{r}\"")
            } else {
                format!("result=\"{r}\",version=\"{v}\"")
            };
            (labels, self.sum(|w| w.tls_handshakes(i)).to_string())
        });
        family(
            &mut o,
            "mediarelay_tls_handshakes_total",
            "counter",
            "TLS handshakes on the public listener: done (by negotiated version), failed, or timed out.",
            handshakes.collect(),
        );
        let mut requests = Vec::new();
        let results = std::iter::once("ok").chain(ErrorCode::ALL.iter().map(|c| c.as_str()));
        for (oi, op) in Op::ALL.iter().map(|o| o.as_str()).enumerate() {
            for (ri, r) in results.clone().enumerate() {
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
        let closes = CloseCode::SENT.iter().enumerate().map(|(i, c)| {
            (
                format!("code=\"{}\"", c.code()),
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
        family(
            &mut o,
            "mediarelay_subscribe_refusals_total",
            "counter",
            "Subscriptions refused by a stream limit: the relay follows max_streams, or one connection asked for more than max_streams_per_minute different streams.",
            vec![
                (
                    "limit=\"relay_streams\"".to_string(),
                    figures.stream_limit_refusals.to_string(),
                ),
                (
                    "limit=\"connection_rate\"".to_string(),
                    self.sum(|w| w.stream_rate_refusals.get()).to_string(),
                ),
            ],
        );
        let cs = &figures.cache;
        let backend = format!("backend=\"{}\"", figures.backend);
        let results = figures
            .origin_results
            .iter()
            .map(|(r, n)| (format!("{backend},result=\"{r}\""), n.to_string()));
        if let Some(n) = &figures.notifications {
            family(
                &mut o,
                "mediarelay_notifications_total",
                "counter",
                "Cloud Storage notifications pulled from Pub/Sub: received, that woke a stream's poller, redelivered.",
                vec![
                    ("result=\"received\"".into(), n.received.to_string()),
                    ("result=\"woke\"".into(), n.woke.to_string()),
                    ("result=\"duplicate\"".into(), n.duplicates.to_string()),
                ],
            );
            family(
                &mut o,
                "mediarelay_notification_errors_total",
                "counter",
                "Failed Pub/Sub pulls (discovery keeps polling meanwhile).",
                one(n.errors),
            );
            family(
                &mut o,
                "mediarelay_notifications_up",
                "gauge",
                "1 while the last Pub/Sub pull worked.",
                one(u64::from(n.up)),
            );
        }
        let calls = figures.origin_calls.iter().map(|(k, n)| {
            (
                format!("backend=\"{}\",kind=\"{k}\"", figures.backend),
                n.to_string(),
            )
        });
        family(
            &mut o,
            "mediarelay_origin_calls_total",
            "counter",
            "Requests sent to the storage service by kind (list, get, get_not_found, metadata, upload, delete), retries included: what Cloud Storage bills.",
            calls.collect(),
        );
        family(
            &mut o,
            "mediarelay_origin_requests_total",
            "counter",
            "Origin object reads by result (retries inside one read are not counted).",
            results.collect(),
        );
        let mut cumulative = 0u64;
        let mut samples = Vec::new();
        for (bound, n) in &figures.fetch_buckets {
            cumulative += n;
            let le = bound.map_or("+Inf".to_string(), |v| v.to_string());
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
            figures.fetch_sum_seconds,
            figures.fetch_count
        );
        let t = &figures.tickets;
        let age = t.snapshot_age_seconds.unwrap_or(f64::NAN);
        let lookups = t
            .lookups
            .iter()
            .map(|(r, n)| (format!("result=\"{r}\""), n.to_string()));
        family(
            &mut o,
            "mediarelay_ticket_lookups_total",
            "counter",
            "Point lookups of tickets missing from the snapshot, by result.",
            lookups.collect(),
        );
        let plain: [(&str, &str, &str, String); 14] = [
            (
                "mediarelay_cache_hits_total",
                "counter",
                "gets answered from the segment cache.",
                cs.hits.to_string(),
            ),
            (
                "mediarelay_cache_misses_total",
                "counter",
                "gets that started an origin read.",
                cs.misses.to_string(),
            ),
            (
                "mediarelay_cache_coalesced_total",
                "counter",
                "gets that joined an origin read already under way.",
                cs.coalesced.to_string(),
            ),
            (
                "mediarelay_cache_evictions_total",
                "counter",
                "Objects evicted from the segment cache.",
                cs.evictions.to_string(),
            ),
            (
                "mediarelay_cache_bytes",
                "gauge",
                "Bytes held by the segment cache.",
                cs.bytes.to_string(),
            ),
            (
                "mediarelay_cache_entries",
                "gauge",
                "Objects held by the segment cache.",
                cs.entries.to_string(),
            ),
            (
                "mediarelay_payload_files",
                "gauge",
                "Payload files open for sendfile (sealed memfds and objects' own files).",
                figures.payload_files.to_string(),
            ),
            (
                "mediarelay_live_subscribers",
                "gauge",
                "Subscriptions to live streams.",
                figures.live_subscribers.to_string(),
            ),
            (
                "mediarelay_live_streams",
                "gauge",
                "Live streams being followed.",
                figures.live_streams.to_string(),
            ),
            (
                "mediarelay_segments_published_total",
                "counter",
                "Live segments fetched and fanned out.",
                figures.segments_published.to_string(),
            ),
            (
                "mediarelay_ticket_snapshot_entries",
                "gauge",
                "Tickets in the current snapshot.",
                t.snapshot_entries.to_string(),
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
                t.sync_errors.to_string(),
            ),
            (
                "mediarelay_buffer_pool_idle_bytes",
                "gauge",
                "Idle bytes held by the payload buffer pool.",
                figures.pool_idle_bytes.to_string(),
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
