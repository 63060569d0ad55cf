//! The control plane: the process around the data plane, off the data path. It opens the
//! origin and the ticket store, keeps the ticket snapshot current ([`tickets`]), starts
//! the workers, turns signals into a drain or a reload ([`signals`], [`reload`]), and
//! sets up logging ([`logging`]). It uses the data plane through its [`Relay`] handle;
//! nothing below calls back up here.

pub mod logging;
pub mod reload;
pub mod signals;
pub mod tickets;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::dataplane::Relay;
use crate::metrics::Metrics;
use crate::origin::cache::Cache;
use crate::tickets::admission::Gate;

pub use logging::{init_logging, SetLogLevel};
pub use reload::Reloader;
pub use signals::on_signals;

/// Run the relay until `shutdown` fires (or a signal, when `signals` is set) and the drain
/// completes.
pub fn serve(
    config: Config,
    shutdown: Option<(flume::Sender<()>, flume::Receiver<()>)>,
    signals: bool,
    reloader: Option<Reloader>,
) -> anyhow::Result<()> {
    let (tx, rx) = shutdown.unwrap_or_else(flume::unbounded);
    let origin = crate::origin::open(&config)?;
    let (cell, lookup) = tickets::start_tickets(&config)?;
    let cache = Arc::new(Cache::new(
        origin,
        config.storage.cache_size as usize,
        config.storage.max_object_size,
    ));
    let metrics = Arc::new(Metrics::new(config.worker_count()));
    let (reload_tx, reload_rx) = flume::unbounded();
    if signals {
        on_signals(tx.clone(), reload_tx)?;
    }
    let gate = Gate::new(
        cell,
        lookup,
        config.tickets.auth_failure_limit,
        config.tickets.auth_failure_window,
    );
    let workers = config.worker_count();
    let relay = Relay::start(config, gate, cache, metrics)?;
    tracing::info!(
        workers,
        listen = %relay.listen,
        admin = %relay.admin,
        "mediarelay serving"
    );
    // Wait for a shutdown request or a worker failure; reload on SIGHUP.
    let failed = loop {
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            break None;
        }
        if let Some(e) = relay.failure() {
            break Some(e);
        }
        if let Some(r) = &reloader {
            if reload_rx.try_recv().is_ok() {
                reload::apply(&relay, r);
            }
        }
    };
    relay.stop()?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
