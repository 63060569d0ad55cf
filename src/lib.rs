//! # mediarelay
//!
//! A thread-per-core WebSocket relay that pushes media segments from object storage to many
//! viewers. How a segment travels, and which module owns each step:
//!
//! ```text
//!  origin (fs dir / GCS)            control plane (control)
//!        │ one read per segment           │ ticket file → snapshot swap
//!        ▼                                ▼
//!  cache (LRU + single-flight) ◄── hub (one poller per stream) ──► worker inboxes
//!        │  pooled buffer → Bytes           (one Seg, shared)          │
//!        ▼                                                              ▼
//!  conn (per connection: send queue of shared Bytes, writev) ◄── worker (monoio runtime,
//!        │                                                        SO_REUSEPORT listener,
//!        ▼                                                        http front end + tickets)
//!     client
//! ```
//!
//! - [`worker`]: the data plane; one monoio runtime per core, io_uring or epoll.
//! - [`http`], [`ws`]: request heads, routing, the ticket check, the WebSocket handshake
//!   and framing (fastwebsockets parses; the relay lays out outgoing frames).
//! - [`conn`], [`sendq`]: a connection's reading, requests and bounded send queue.
//! - [`protocol`]: the control messages of PROTOCOL.md (pure).
//! - [`hub`]: live streams, discovery, fan-out to workers.
//! - [`cache`], [`pool`], [`origin`]: objects, their buffers, and where they come from.
//! - [`tickets`], [`control`]: ticket stores, the snapshot, background refresh, signals.
//! - [`metrics`], [`config`], [`cli`], [`demo`].
//!
//! The one `unsafe` module is [`sys`].

pub mod cache;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod demo;
pub mod gcp;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod origin;
pub mod pool;
pub mod protocol;
pub mod sendq;
pub mod sys;
pub mod tickets;
pub mod worker;
pub mod ws;

use std::sync::Arc;

use crate::config::Config;

/// Set up logging from the config (`RUST_LOG` wins when set).
pub fn init_logging(level: &str, format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Open the origin the storage setting names: a directory, or `gs://BUCKET[/PREFIX]`
/// (with `STORAGE_EMULATOR_HOST` honoured as Google's client libraries do).
pub fn open_origin(config: &Config) -> anyhow::Result<Arc<dyn origin::Origin>> {
    let url = &config.storage.url;
    if url.starts_with("gs://") {
        let emulator = std::env::var("STORAGE_EMULATOR_HOST").ok();
        let mut settings = origin::gcs::GcsSettings::from_url(url, emulator.as_deref())
            .map_err(|e| anyhow::anyhow!("storage: {e}"))?;
        settings.deadline = config.storage.request_deadline;
        settings.attempt_timeout = config.storage.attempt_timeout;
        settings.max_inflight = config.storage.max_inflight;
        settings.threads = config.storage.fetch_threads;
        settings.page_size = config.storage.list_page_size;
        let gcs = origin::gcs::GcsOrigin::start(settings).map_err(|e| anyhow::anyhow!(e))?;
        return Ok(Arc::new(gcs));
    }
    match config.storage_dir() {
        Some(dir) => {
            Ok(Arc::new(origin::fs::FsOrigin::open(&dir).map_err(|e| {
                anyhow::anyhow!("storage {}: {e}", dir.display())
            })?))
        }
        None => anyhow::bail!("storage `{url}`: expected a directory or gs://BUCKET[/PREFIX]"),
    }
}

/// Run the relay until `shutdown` fires (or a signal, when `signals` is set) and the drain
/// completes.
pub fn serve(
    config: Config,
    shutdown: Option<(flume::Sender<()>, flume::Receiver<()>)>,
    signals: bool,
) -> anyhow::Result<()> {
    let (tx, rx) = shutdown.unwrap_or_else(flume::unbounded);
    let origin = open_origin(&config)?;
    let (cell, lookup) = control::start_tickets(&config)?;
    let cache = Arc::new(cache::Cache::new(
        origin,
        config.storage.cache_size as usize,
        config.storage.max_object_size,
    ));
    let metrics = Arc::new(metrics::Metrics::new(config.worker_count()));
    if signals {
        control::on_shutdown_signal(tx.clone())?;
    }
    worker::run(config, cell, lookup, cache, metrics, rx)
}
