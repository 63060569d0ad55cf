//! # mediarelay
//!
//! A thread-per-core WebSocket relay that pushes media segments from object storage to many
//! viewers. How a segment travels, and which module owns each step:
//!
//! ```text
//!  origin (fs dir / GCS)            control plane (control)
//!        │ one read per segment           │ ticket file → snapshot swap
//!        ▼                                ▼
//!  cache (LRU + single-flight) ◄── hub (a poller per stream, own thread) ──► worker inboxes
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

/// Changes the log filter of a running process.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// Set up logging from the config (`RUST_LOG` wins when set). Returns the setter SIGHUP uses
/// to apply a new `log.level` (a no-op when `RUST_LOG` is set).
pub fn init_logging(level: &str, format: &str) -> SetLogLevel {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let from_env = EnvFilter::try_from_default_env().ok();
    let env_set = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if format == "json" {
        registry
            .with(fmt::layer().json().with_writer(std::io::stderr))
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init()
    };
    Box::new(move |level: &str| {
        if env_set {
            return Ok(());
        }
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    })
}

/// What SIGHUP does: read the configuration again, and apply a new log level.
pub struct Reloader {
    pub read: Box<dyn Fn() -> Result<Config, String> + Send>,
    pub set_log_level: SetLogLevel,
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
    reloader: Option<Reloader>,
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
    let (reload_tx, reload_rx) = flume::unbounded();
    if signals {
        control::on_signals(tx.clone(), reload_tx)?;
    }
    let reload = reloader.map(|r| (reload_rx, r));
    worker::run(config, cell, lookup, cache, metrics, rx, reload)
}
