//! The data plane: one thread per worker, each running its own monoio runtime (io_uring,
//! or epoll where io_uring cannot be set up) with its own `SO_REUSEPORT` listener, so the
//! kernel spreads connections across workers and a connection never leaves its worker.
//!
//! - [`runtime`]: the io driver choice; [`listener`]: the listeners and accept loops;
//! - [`http`]: the HTTP/1.1 front end (health, readiness, metrics, the ticket check and the
//!   WebSocket upgrade), with the request head rules in [`head`];
//! - [`core`]: one worker's state, the narrow context its connections run against;
//! - [`session`]: one connection after the upgrade;
//! - [`shared`]: what all workers read.
//!
//! Workers hear from the hub (new segments) and from the control plane (drain) through
//! their inbox channel; [`Relay`] is the control plane's handle on the running workers.
//! Nothing here calls back into the control plane.

pub mod core;
pub mod head;
pub mod http;
pub mod ingest;
pub mod listener;
pub mod notify;
pub mod runtime;
pub mod session;
pub mod shared;
pub mod socket;
pub mod tls;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use self::core::Core;
use self::listener::{
    accept_admin, accept_public, ensure_unshared, listen, stop_listening, ListenError,
};
use self::runtime::{block_on, yield_once, RuntimeError};
use self::shared::Shared;
use crate::config::Config;
use crate::fanout::{Hub, WorkerMsg};
use crate::metrics::Metrics;
use crate::origin::cache::Cache;
use crate::tickets::admission::Gate;

/// How often each worker passes over its connections (tickets, keepalive, queue sizes).
const SWEEP: Duration = Duration::from_millis(250);

/// Why the data plane did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// A listener could not be set up.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A runtime could not be built.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// A worker failed.
    #[error("worker {0}: {1}")]
    Worker(usize, String),
    /// The TLS certificate or key did not load.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// A worker ended without saying why.
    #[error("a worker exited during start")]
    WorkerExited,
}

/// What the data plane serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The relay: tickets, `get`, `subscribe` (docs/protocol.md).
    Relay,
    /// The conformance server: any path upgrades without a ticket and every message is
    /// echoed (the Autobahn TestSuite's fuzzingclient drives it).
    Echo,
}

/// What a worker reports once: its listeners' addresses, or why it failed.
/// A worker's bound addresses: public, plain public (beside TLS), admin (worker 0).
type Ready = Result<(SocketAddr, Option<SocketAddr>, Option<SocketAddr>), DataPlaneError>;

/// The running workers.
pub struct Relay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    hub_thread: JoinHandle<()>,
    reports: flume::Receiver<Ready>,
    /// The public listeners' address (the port resolved when 0 was asked for).
    pub listen: SocketAddr,
    /// The plain-text public listeners' address beside TLS ones, if any.
    pub listen_plain: Option<SocketAddr>,
    /// The admin listener's address.
    pub admin: SocketAddr,
}

impl Relay {
    /// Start the hub's thread and the workers; returns once every listener is bound.
    pub fn start(
        config: Config,
        gate: Gate,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        mode: Mode,
    ) -> Result<Relay, DataPlaneError> {
        let n = config.worker_count();
        ensure_unshared(config.server.listen)?;
        if let Some(plain) = config.server.listen_plain {
            ensure_unshared(plain)?;
        }
        let tls = match mode {
            Mode::Relay => tls::Tls::load(&config.tls)?,
            Mode::Echo => None,
        };
        let (inboxes, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| flume::unbounded()).unzip();
        let hub = Arc::new(Hub::new(
            inboxes,
            cache.clone(),
            config.storage.poll_interval,
            config.storage.stream_linger,
            config.storage.max_streams,
        ));
        hub.set_list_interval(config.storage.list_interval);
        let driver = config.server.driver;
        let mut shared = Shared::new(config, gate, cache, hub.clone(), metrics, n, mode);
        shared.tls = tls;
        let shared = Arc::new(shared);
        let pool = monoio::blocking::DefaultThreadPool::new(2);
        // The live streams' pollers get a runtime of their own, so discovery and origin
        // fetches keep up with the live edge however busy the workers are with sending.
        let hub_thread = {
            let (hub, streams, pool) = (hub.clone(), hub.route_pollers(), pool.clone());
            std::thread::Builder::new()
                .name("hub".into())
                .spawn(move || {
                    let main = crate::fanout::hub::run_pollers(hub.clone(), streams);
                    if let Err(e) = block_on(driver, &pool, false, |_| {}, main) {
                        tracing::error!("live streams' thread: {e}");
                        hub.stop_pollers();
                    }
                })
                .map_err(DataPlaneError::Thread)?
        };
        let (report_tx, reports) = flume::unbounded::<Ready>();
        let mut relay = Relay {
            shared: shared.clone(),
            threads: Vec::new(),
            hub_thread,
            reports,
            listen: shared.config().server.listen,
            listen_plain: shared.config().server.listen_plain,
            admin: shared.config().server.admin,
        };
        // Worker 0 binds first, so that a port 0 is resolved once and the others join it.
        for (index, inbox) in receivers.into_iter().enumerate() {
            let (shared, report, pool) = (shared.clone(), report_tx.clone(), pool.clone());
            let addrs = (relay.listen, relay.listen_plain, relay.admin);
            let t = std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || {
                    let driver = shared.config().server.driver;
                    let metrics = shared.metrics.clone();
                    let on_driver = |name: &'static str| {
                        let _ = metrics.drivers[index].set(name);
                        if index == 0 {
                            tracing::info!("io driver: {name}");
                        }
                    };
                    let main = worker(index, shared, inbox, addrs, &report);
                    let ran = block_on(driver, &pool, index == 0, on_driver, main);
                    if let Err(e) = ran.map_err(DataPlaneError::from).and_then(|r| r) {
                        let _ = report.send(Err(DataPlaneError::Worker(index, e.to_string())));
                    }
                });
            relay.threads.push(t.map_err(DataPlaneError::Thread)?);
            // The worker reports once bound; one that ends without a word failed too.
            let reported = loop {
                match relay.reports.recv_timeout(Duration::from_millis(50)) {
                    Ok(r) => break r,
                    Err(_) if relay.threads.last().is_some_and(JoinHandle::is_finished) => {
                        break relay
                            .reports
                            .try_recv()
                            .unwrap_or(Err(DataPlaneError::WorkerExited));
                    }
                    Err(_) => {}
                }
            };
            match reported {
                Ok((public, plain, admin)) => {
                    relay.listen = public;
                    relay.listen_plain = plain;
                    if let Some(admin) = admin {
                        relay.admin = admin;
                    }
                }
                Err(e) => return Err(relay.abort(e)),
            }
        }
        Ok(relay)
    }

    /// Stop what started and return `e`.
    fn abort(self, e: DataPlaneError) -> DataPlaneError {
        let _ = self.stop();
        e
    }

    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    /// Whether the public listener speaks TLS.
    pub fn has_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// Read the certificate and key of `config` again for new TLS connections (open ones
    /// keep theirs); on error the running ones stay.
    pub fn reload_tls(&self, config: &crate::config::TlsConfig) -> Result<(), tls::TlsError> {
        match &self.shared.tls {
            Some(t) => t.reload(config),
            None => Ok(()),
        }
    }

    /// Put a new configuration in force: settings read per use apply at once, and the live
    /// poll interval from the next poll.
    pub fn apply_config(&self, config: Config) {
        self.shared
            .hub
            .set_poll_interval(config.storage.poll_interval);
        self.shared
            .hub
            .set_list_interval(config.storage.list_interval);
        self.shared.set_config(config);
    }

    /// A worker's failure since the start, if one was reported.
    pub fn failure(&self) -> Option<DataPlaneError> {
        match self.reports.try_recv() {
            Ok(Err(e)) => Some(e),
            _ => None,
        }
    }

    /// Drain: admit no new connection (503; `/readyz` says "draining"), close every
    /// connection (1001) within the drain timeout, and wait for the workers and the hub's
    /// thread to end.
    pub fn stop(self) -> Result<(), DataPlaneError> {
        self.shared.draining.store(true, Ordering::Release);
        self.shared.hub.broadcast(|| WorkerMsg::Drain);
        for t in self.threads {
            let _ = t.join();
        }
        self.shared.hub.stop_pollers();
        let _ = self.hub_thread.join();
        Ok(())
    }
}

/// One worker: bind, report, serve until the drain, drain.
async fn worker(
    index: usize,
    shared: Arc<Shared>,
    inbox: flume::Receiver<WorkerMsg>,
    (listen_at, plain_at, admin_at): (SocketAddr, Option<SocketAddr>, SocketAddr),
    report: &flume::Sender<Ready>,
) -> Result<(), DataPlaneError> {
    let backlog = shared.config().server.backlog;
    let public = listen(listen_at, backlog, true)?;
    let public_addr = public.local_addr().unwrap_or(listen_at);
    let plain = match plain_at {
        Some(at) => Some(listen(at, backlog, true)?),
        None => None,
    };
    let plain_addr = plain
        .as_ref()
        .zip(plain_at)
        .map(|(l, at)| l.local_addr().unwrap_or(at));
    let admin = if index == 0 {
        Some(listen(admin_at, 128, false)?)
    } else {
        None
    };
    let admin_addr = admin.as_ref().map(|a| a.local_addr().unwrap_or(admin_at));
    let core = Core::new(index, shared.clone());
    shared.listening.fetch_add(1, Ordering::AcqRel);
    let _ = report.send(Ok((public_addr, plain_addr, admin_addr)));

    // Every listener is served for as long as the worker runs, through the drain (whose
    // `/readyz` says 503 "draining" and whose upgrades get 503), and stopped at its end.
    let mut listening = vec![public.as_raw_fd()];
    monoio::spawn(accept_public(core.clone(), public, shared.tls.is_some()));
    if let Some(plain) = plain {
        listening.push(plain.as_raw_fd());
        monoio::spawn(accept_public(core.clone(), plain, false));
    }
    // The admin task owns its listener for as long as the worker runs: the descriptor stays
    // valid for the shutdown below.
    let admin_fd = admin.as_ref().map(|a| a.as_raw_fd());
    if let Some(admin) = admin {
        monoio::spawn(accept_admin(core.clone(), admin));
    }
    let sweeper = core.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(SWEEP).await;
            sweeper.sweep();
        }
    });
    while let Ok(msg) = inbox.recv_async().await {
        match msg {
            WorkerMsg::Segment(stream, seg) => {
                core.deliver(&stream, &seg);
                // With more segments waiting (a listing found several at once), let the
                // connections start writing this one first: queued behind the next, it
                // could be dropped for room even for viewers that keep up.
                if !inbox.is_empty() {
                    yield_once().await;
                }
            }
            WorkerMsg::Init(stream, seg) => core.deliver_init(&stream, &seg),
            WorkerMsg::Drain => break,
        }
    }
    drain(&core, index).await;
    for fd in listening.into_iter().chain(admin_fd) {
        stop_listening(fd);
    }
    Ok(())
}

/// Graceful drain: ask every connection to close with 1001 after the frame it is writing,
/// and give them until the drain timeout (the listeners answer, with 503s, until the
/// worker ends).
async fn drain(core: &Rc<Core>, index: usize) {
    let shared = &core.shared;
    core.start_drain();
    let deadline = Instant::now() + shared.config().server.drain_timeout;
    while core.conn_count() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    shared.draining_workers.fetch_sub(1, Ordering::AcqRel);
    // Worker 0 serves the admin listener: keep it (and `/readyz` saying "draining") up
    // until every worker is done.
    if index == 0 {
        while shared.draining_workers.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            monoio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
