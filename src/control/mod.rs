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
use crate::dataplane::{Mode, Relay};
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
    crate::origin::files::enable(config.server.send_path == crate::config::SendPath::Sendfile);
    let origin = crate::origin::open(&config)?;
    let _notifications = match &config.storage.notifications {
        Some(url) => Some(start_notifications(&config, url, origin.clone())?),
        None => None,
    };
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
    if config.server.ping_after() < config.server.ping_interval {
        tracing::warn!(
            ping_interval = ?config.server.ping_interval,
            idle_timeout = ?config.server.idle_timeout,
            "server.ping_interval is not under half of server.idle_timeout: pinging at half of it, so clients that answer pings stay"
        );
    }
    let relay = Relay::start(config, gate, cache, metrics, Mode::Relay)?;
    let plain = relay.listen_plain.map(|a| a.to_string());
    tracing::info!(
        workers,
        listen = %relay.listen,
        admin = %relay.admin,
        tls = relay.has_tls(),
        listen_plain = %plain.as_deref().unwrap_or("none"),
        "mediarelay serving"
    );
    run_until_stopped(relay, &rx, Some(&reload_rx), reloader.as_ref())
}

/// Pub/Sub notifications for the bucket of `config`, waking the pollers of `origin`.
fn start_notifications(
    config: &Config,
    url: &str,
    origin: Arc<dyn crate::origin::Origin>,
) -> anyhow::Result<crate::origin::pubsub::Notifications> {
    use crate::origin::{gcs::GcsSettings, pubsub};
    let source = pubsub::Source::parse(url).map_err(anyhow::Error::msg)?;
    let gcs = GcsSettings::from_url(&config.storage.url, None).map_err(anyhow::Error::msg)?;
    tracing::info!(source = url, "Cloud Storage notifications");
    pubsub::start(source, gcs.bucket, gcs.prefix, origin).map_err(anyhow::Error::msg)
}

/// Whether `[tls]` loads (a certificate chain and key that go together), for a one-line
/// error at start.
pub fn check_tls(config: &Config) -> Result<(), crate::dataplane::tls::TlsError> {
    crate::dataplane::tls::Tls::load(&config.tls).map(|_| ())
}

/// Wait for a shutdown request or a worker failure, reload on SIGHUP, then drain.
fn run_until_stopped(
    relay: Relay,
    shutdown: &flume::Receiver<()>,
    reload_rx: Option<&flume::Receiver<()>>,
    reloader: Option<&Reloader>,
) -> anyhow::Result<()> {
    let failed = loop {
        if shutdown.recv_timeout(Duration::from_millis(100)).is_ok() {
            break None;
        }
        if let Some(e) = relay.failure() {
            break Some(e);
        }
        if let (Some(rx), Some(r)) = (reload_rx, reloader) {
            if rx.try_recv().is_ok() {
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

/// `mediarelay echo`: the relay's data plane (listener, HTTP front end, handshake, frame
/// reader, writer, connection handling) sending every message back, with no tickets and
/// no storage: the server the Autobahn TestSuite checks against RFC 6455. Runs until
/// SIGTERM or SIGINT.
pub fn echo(listen: std::net::SocketAddr, max_message: u64) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.server.listen = listen;
    config.server.admin = "127.0.0.1:0".parse().expect("literal address");
    config.connection.max_message = max_message;
    // Echoes of 16 MiB messages are queued whole.
    config.connection.send_queue = config.connection.send_queue.max(2 * max_message);
    let (tx, rx) = flume::unbounded();
    let (reload_tx, _) = flume::unbounded();
    on_signals(tx, reload_tx)?;
    let cell = Arc::new(crate::tickets::snapshot::TicketCell::default());
    cell.publish(Vec::new());
    let gate = Gate::new(cell, None, 0, Duration::from_secs(60));
    let cache = Arc::new(Cache::new(
        Arc::new(crate::origin::empty::Empty),
        1 << 20,
        1 << 20,
    ));
    let metrics = Arc::new(Metrics::new(config.worker_count()));
    let relay = Relay::start(config, gate, cache, metrics, Mode::Echo)?;
    tracing::info!(listen = %relay.listen, "mediarelay echo serving");
    run_until_stopped(relay, &rx, None, None)
}
