//! The data plane: one thread per worker, each running its own monoio runtime (io_uring,
//! or epoll where io_uring cannot be set up) with its own `SO_REUSEPORT` listener, so the
//! kernel spreads connections across workers and a connection never leaves its worker.
//!
//! Per-worker state ([`Worker`]) is plain `Rc`/`RefCell`: connections, subscribers per
//! stream, the scratch read buffer and the frame parser. Cross-worker state ([`Shared`]) is
//! read-mostly: the config, the ticket snapshot, the cache (one lock per lookup), the hub.
//! Workers hear from the hub and the control plane through their inbox channel.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use monoio::net::{ListenerOpts, TcpListener};
use slab::Slab;

use crate::cache::Cache;
use crate::config::{Config, DriverChoice};
use crate::conn::{CloseReq, Conn, Sub};
use crate::http::{self, Listener};
use crate::hub::{Hub, Seg, Stream, WorkerMsg};
use crate::metrics::{Metrics, WorkerStats};
use crate::notify::Notify;
use crate::tickets::limits::{ConnCounts, FailureLimiter};
use crate::tickets::snapshot::TicketCell;
use crate::tickets::{Lookup, Refusal, TicketId, TicketRecord};
use crate::ws::frame::{close, Parser};

/// Size of each worker's scratch read buffer.
const SCRATCH: usize = 64 * 1024;
/// How often each worker re-checks its connections' tickets (revocation, expiry).
const TICKET_SWEEP: Duration = Duration::from_millis(250);

/// State shared by every worker.
pub struct Shared {
    /// The running configuration; SIGHUP swaps in a new one (see [`apply_reload`]).
    config: arc_swap::ArcSwap<Config>,
    pub tickets: Arc<TicketCell>,
    /// Point lookups of tickets missing from the snapshot (stores that have them).
    pub lookup: Option<Arc<dyn Lookup>>,
    pub cache: Arc<Cache>,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub conn_counts: ConnCounts,
    pub failures: FailureLimiter,
    pub draining: AtomicBool,
    /// Workers whose listeners are bound (ready when all are).
    pub listening: AtomicUsize,
    /// Workers that still have connections to drain.
    pub draining_workers: AtomicUsize,
    pub workers: usize,
}

impl Shared {
    /// The running configuration.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// `/readyz`: storage usable, ticket snapshot loaded, listeners up, not draining.
    pub fn readiness(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Acquire) {
            return Err("draining".into());
        }
        if self.listening.load(Ordering::Acquire) < self.workers {
            return Err("starting".into());
        }
        if !self.tickets.is_ready() {
            return Err("ticket snapshot not loaded".into());
        }
        self.cache
            .origin()
            .check_ready()
            .map_err(|e| format!("storage: {e}"))
    }
}

/// One worker's state, owned by its thread.
pub struct Worker {
    pub index: usize,
    pub shared: Arc<Shared>,
    pub stats: Arc<WorkerStats>,
    pub scratch: RefCell<Vec<u8>>,
    pub parser: RefCell<Parser>,
    conns: RefCell<Slab<Rc<Conn>>>,
    slots: RefCell<HashMap<u64, usize>>,
    next_conn: Cell<u64>,
    streams: RefCell<HashMap<Arc<str>, Vec<Rc<Sub>>>>,
    me: RefCell<std::rc::Weak<Worker>>,
    stop_accepting: Notify,
}

impl Worker {
    /// This worker as an `Rc` (for spawning tasks that hold it).
    pub fn me(&self) -> Rc<Worker> {
        self.me
            .borrow()
            .upgrade()
            .expect("worker outlives its tasks")
    }

    /// Register an upgraded connection.
    pub fn admit(&self, id: TicketId, record: Arc<TicketRecord>) -> Rc<Conn> {
        let n = self.next_conn.get();
        self.next_conn.set(n + 1);
        let conn_id = (n << 8) | self.index as u64;
        let conn = Rc::new(Conn::new(
            conn_id,
            id,
            record,
            self.shared.config().connection.send_queue as usize,
        ));
        let slot = self.conns.borrow_mut().insert(conn.clone());
        self.slots.borrow_mut().insert(conn_id, slot);
        self.stats.connections.inc();
        conn
    }

    /// Unregister a closed connection.
    pub fn forget_conn(&self, conn: &Conn) {
        if let Some(slot) = self.slots.borrow_mut().remove(&conn.id) {
            self.conns.borrow_mut().remove(slot);
            self.stats.connections.sub(1);
        }
    }

    /// Add a subscriber to this worker's delivery list.
    pub fn add_sub(&self, sub: Rc<Sub>) {
        self.streams
            .borrow_mut()
            .entry(sub.stream.name.clone())
            .or_default()
            .push(sub);
    }

    /// Remove a subscriber (unsubscribe or close).
    pub fn remove_sub(&self, sub: &Rc<Sub>) {
        if !sub.active.replace(false) {
            return;
        }
        let mut streams = self.streams.borrow_mut();
        if let Some(list) = streams.get_mut(&sub.stream.name) {
            list.retain(|s| !Rc::ptr_eq(s, sub));
            if list.is_empty() {
                streams.remove(&sub.stream.name);
            }
        }
        self.shared.hub.unsubscribe(&sub.stream, self.index);
    }

    /// Hand a new segment to every caught-up local subscriber. Hot path: per subscriber,
    /// two `Bytes` clones and a queue push.
    fn deliver(&self, stream: &Stream, seg: &Seg) {
        let streams = self.streams.borrow();
        let Some(list) = streams.get(&stream.name) else {
            return;
        };
        for sub in list {
            if !sub.live.get() || !sub.active.get() || seg.seq < sub.next_seq.get() {
                continue;
            }
            if let Some(conn) = sub.conn.upgrade() {
                conn.push_segment(sub, seg, self);
                sub.next_seq.set(seg.seq + 1);
            }
        }
    }

    /// Close connections whose ticket was revoked, deleted or has expired; sample the bytes
    /// waiting in send queues on the way.
    fn sweep_tickets(&self) {
        let now = SystemTime::now();
        let mut queued = 0u64;
        for (_, conn) in self.conns.borrow().iter() {
            queued += conn.queue.borrow().bytes() as u64;
            let verdict = match self.shared.tickets.get(&conn.ticket_id) {
                None => Err(Refusal::Revoked),
                Some(r) => {
                    if !Arc::ptr_eq(&r, &conn.ticket.borrow()) {
                        *conn.ticket.borrow_mut() = r.clone();
                    }
                    r.validity(now)
                }
            };
            if let Err(r) = verdict {
                if conn.close_req.get().is_none() {
                    let reason = if r == Refusal::Expired {
                        "ticket_expired"
                    } else {
                        "ticket_revoked"
                    };
                    tracing::info!(conn = conn.id, uid = %conn.ticket.borrow().uid, reason, "closing connection");
                    self.stats.revocation_closes.inc();
                    conn.request_close(CloseReq {
                        code: close::TICKET,
                        reason: Some(reason),
                    });
                }
            }
        }
        self.stats.queued_bytes.set(queued);
    }

    /// Stop accepting; stop every live subscription; close each connection with 1001 after
    /// the frame it is writing, or, when `get`s are in flight, after their replies.
    fn start_drain(&self) {
        self.stop_accepting.notify();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for conn in conns {
            conn.draining.set(true);
            let subs: Vec<Rc<Sub>> = conn.subs.borrow_mut().drain().map(|(_, s)| s).collect();
            for sub in subs {
                self.remove_sub(&sub);
            }
            if !conn.get_task_running() {
                conn.request_close(CloseReq {
                    code: close::GOING_AWAY,
                    reason: Some("shutting_down"),
                });
            }
        }
    }

    fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }
}

/// Build the shared state and run the workers until a drain completes.
pub fn run(
    config: Config,
    tickets: Arc<TicketCell>,
    lookup: Option<Arc<dyn Lookup>>,
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    shutdown: flume::Receiver<()>,
    reload: Option<(flume::Receiver<()>, crate::Reloader)>,
) -> anyhow::Result<()> {
    let n = config.worker_count();
    ensure_unshared(config.server.listen)?;
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    for _ in 0..n {
        let (tx, rx) = flume::unbounded();
        inboxes.push(tx);
        receivers.push(rx);
    }
    let hub = Arc::new(Hub::new(
        inboxes,
        cache.clone(),
        config.storage.poll_interval,
        config.storage.stream_linger,
    ));
    let shared = Arc::new(Shared {
        failures: FailureLimiter::new(
            config.tickets.auth_failure_limit,
            config.tickets.auth_failure_window,
        ),
        config: arc_swap::ArcSwap::from_pointee(config),
        tickets,
        lookup,
        cache,
        hub: hub.clone(),
        metrics,
        conn_counts: ConnCounts::default(),
        draining: AtomicBool::new(false),
        listening: AtomicUsize::new(0),
        draining_workers: AtomicUsize::new(n),
        workers: n,
    });
    let pool = monoio::blocking::DefaultThreadPool::new(2);
    // The live streams' pollers get a runtime of their own, so discovery and origin fetches
    // keep up with the live edge however busy the workers are with sending.
    let hub_thread = {
        let (hub, streams, pool) = (hub.clone(), hub.route_pollers(), pool.clone());
        let driver = shared.config().server.driver;
        std::thread::Builder::new()
            .name("hub".into())
            .spawn(move || {
                let main = crate::hub::run_pollers(hub.clone(), streams);
                if let Err(e) = block_on(driver, &pool, false, |_| {}, main) {
                    tracing::error!("live streams' thread: {e}");
                    hub.stop_pollers();
                }
            })?
    };
    let (ready_tx, ready_rx) = flume::unbounded::<Result<(), String>>();
    let mut threads = Vec::new();
    for (index, inbox) in receivers.into_iter().enumerate() {
        let shared = shared.clone();
        let ready_tx = ready_tx.clone();
        let pool = pool.clone();
        let t = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .spawn(move || {
                if let Err(e) = worker_thread(index, shared, inbox, pool, &ready_tx) {
                    let _ = ready_tx.send(Err(format!("worker {index}: {e}")));
                }
            })?;
        threads.push(t);
    }
    drop(ready_tx);
    // Every worker reports its listeners bound (or why not) before we say we serve.
    let mut failed = None;
    for _ in 0..n {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failed = Some(e);
                break;
            }
            Err(_) => {
                failed = Some("a worker exited during start".to_string());
                break;
            }
        }
    }
    if failed.is_none() {
        tracing::info!(
            workers = n,
            listen = %shared.config().server.listen,
            admin = %shared.config().server.admin,
            "mediarelay serving"
        );
        // Wait for a shutdown request or a worker failure.
        failed = loop {
            if shutdown.recv_timeout(Duration::from_millis(100)).is_ok() {
                break None;
            }
            if let Ok(Err(e)) = ready_rx.try_recv() {
                break Some(e);
            }
            if let Some((rx, reloader)) = &reload {
                if rx.try_recv().is_ok() {
                    apply_reload(&shared, &hub, reloader);
                }
            }
        };
    }
    shared.draining.store(true, Ordering::Release);
    hub.broadcast(|| WorkerMsg::Drain);
    for t in threads {
        let _ = t.join();
    }
    hub.stop_pollers();
    let _ = hub_thread.join();
    match failed {
        Some(e) => Err(anyhow::anyhow!(e)),
        None => Ok(()),
    }
}

/// SIGHUP: read the configuration again; apply what can change while running (log level,
/// connection limits, timeouts, the live poll interval), keep the running value of
/// everything else and say that it needs a restart. A configuration that does not load
/// leaves the running one untouched.
pub fn apply_reload(shared: &Shared, hub: &Hub, reloader: &crate::Reloader) {
    let new = match (reloader.read)() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("SIGHUP: configuration not reloaded, keeping the running one: {e}");
            return;
        }
    };
    let old = shared.config();
    let mut merged = new.clone();
    let mut applied: Vec<&str> = Vec::new();
    let mut restart: Vec<&str> = Vec::new();
    macro_rules! diff {
        ($($s:ident . $f:ident => $live:expr),* $(,)?) => {$(
            if old.$s.$f != new.$s.$f {
                let name = concat!(stringify!($s), ".", stringify!($f));
                if $live {
                    applied.push(name);
                } else {
                    restart.push(name);
                    merged.$s.$f = old.$s.$f.clone();
                }
            }
        )*};
    }
    diff!(
        server.listen => false, server.admin => false, server.workers => false,
        server.driver => false, server.handshake_timeout => true,
        server.drain_timeout => true, server.backlog => false,
        storage.url => false, storage.poll_interval => true, storage.cache_size => false,
        storage.max_object_size => false, storage.stream_linger => false,
        storage.request_deadline => false, storage.attempt_timeout => false,
        storage.max_inflight => false, storage.fetch_threads => false,
        storage.list_page_size => false,
        tickets.url => false, tickets.reload_interval => false,
        tickets.auth_failure_limit => false, tickets.auth_failure_window => false,
        tickets.sync_interval => false, tickets.full_resync_interval => false,
        tickets.snapshot_file => false, tickets.page_size => false,
        tickets.lookup_timeout => true, tickets.lookup_negative_ttl => false,
        tickets.lookup_rate => false,
        connection.send_queue => true, connection.stall_timeout => true,
        connection.max_message => true, connection.max_subscriptions => true,
        connection.max_pending_gets => true,
        log.level => true, log.format => false,
    );
    if applied.contains(&"log.level") {
        if let Err(e) = (reloader.set_log_level)(&merged.log.level) {
            tracing::error!("SIGHUP: log.level `{}` not applied: {e}", merged.log.level);
            merged.log.level = old.log.level.clone();
            applied.retain(|n| *n != "log.level");
        }
    }
    hub.set_poll_interval(merged.storage.poll_interval);
    shared.config.store(Arc::new(merged));
    tracing::info!(
        applied = ?applied,
        needs_restart = ?restart,
        "SIGHUP: configuration reloaded"
    );
}

/// Build this worker's runtime (io_uring, or epoll where allowed) and run it.
fn worker_thread(
    index: usize,
    shared: Arc<Shared>,
    inbox: flume::Receiver<WorkerMsg>,
    pool: monoio::blocking::DefaultThreadPool,
    ready: &flume::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    let driver = shared.config().server.driver;
    let metrics = shared.metrics.clone();
    let main = worker_main(index, shared, inbox, ready);
    let on_driver = |name: &'static str| {
        let _ = metrics.drivers[index].set(name);
        if index == 0 {
            tracing::info!("io driver: {name}");
        }
    };
    block_on(driver, &pool, index == 0, on_driver, main)?
}

/// Run `main` to completion on a new monoio runtime of the configured driver: io_uring, or
/// epoll where io_uring cannot be set up and the configuration allows it. `on_driver` hears
/// which one before `main` starts; `loud` logs the fallback.
fn block_on<F: std::future::Future>(
    choice: DriverChoice,
    pool: &monoio::blocking::DefaultThreadPool,
    loud: bool,
    on_driver: impl FnOnce(&'static str),
    main: F,
) -> anyhow::Result<F::Output> {
    if choice != DriverChoice::Epoll {
        let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(1024)
            .attach_thread_pool(Box::new(pool.clone()))
            .build();
        match built {
            Ok(mut rt) => {
                on_driver("io_uring");
                return Ok(rt.block_on(main));
            }
            Err(e) if choice == DriverChoice::Auto => {
                if loud {
                    tracing::warn!("io_uring unavailable ({e}); falling back to epoll");
                }
            }
            Err(e) => anyhow::bail!("io_uring unavailable: {e}"),
        }
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .attach_thread_pool(Box::new(pool.clone()))
        .build()?;
    on_driver("epoll");
    Ok(rt.block_on(main))
}

/// The workers' public listeners share one address through `SO_REUSEPORT`, which would also
/// let a second relay process (a stale one, a typo in a unit file) join the group and
/// silently take a share of the connections. Binding once without `SO_REUSEPORT` first
/// fails with "address in use" exactly when any other socket holds the address.
fn ensure_unshared(addr: SocketAddr) -> anyhow::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    match std::net::TcpListener::bind(addr) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(anyhow::anyhow!(
            "cannot listen on {addr}: the address is in use (is another relay running?)"
        )),
        Err(e) => Err(anyhow::anyhow!("cannot listen on {addr}: {e}")),
    }
}

/// A worker's public listener: one per worker on the same address (`SO_REUSEPORT`), the
/// kernel spreading connections over them; or, `shared == false`, the admin listener, which
/// no other socket may share.
fn listen(addr: SocketAddr, backlog: u32, shared: bool) -> std::io::Result<TcpListener> {
    let opts = ListenerOpts::new()
        .reuse_port(shared)
        .reuse_addr(true)
        .backlog(backlog.min(i32::MAX as u32) as i32);
    TcpListener::bind_with_config(addr, &opts)
}

async fn worker_main(
    index: usize,
    shared: Arc<Shared>,
    inbox: flume::Receiver<WorkerMsg>,
    ready: &flume::Sender<Result<(), String>>,
) -> anyhow::Result<()> {
    let config = shared.config();
    let cfg = &config.server;
    let public = listen(cfg.listen, cfg.backlog, true)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let admin = if index == 0 {
        Some(
            listen(cfg.admin, 128, false)
                .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.admin))?,
        )
    } else {
        None
    };
    let worker = Rc::new(Worker {
        index,
        stats: shared.metrics.workers[index].clone(),
        shared: shared.clone(),
        scratch: RefCell::new(vec![0u8; SCRATCH]),
        parser: RefCell::new(Parser::default()),
        conns: RefCell::new(Slab::new()),
        slots: RefCell::new(HashMap::new()),
        next_conn: Cell::new(1),
        streams: RefCell::new(HashMap::new()),
        me: RefCell::new(std::rc::Weak::new()),
        stop_accepting: Notify::default(),
    });
    *worker.me.borrow_mut() = Rc::downgrade(&worker);
    shared.listening.fetch_add(1, Ordering::AcqRel);
    let _ = ready.send(Ok(()));

    monoio::spawn(accept_public(worker.clone(), public));
    if let Some(admin) = admin {
        monoio::spawn(accept_admin(worker.clone(), admin));
    }
    let sweeper = worker.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(TICKET_SWEEP).await;
            sweeper.sweep_tickets();
        }
    });
    while let Ok(msg) = inbox.recv_async().await {
        match msg {
            WorkerMsg::Segment(stream, seg) => {
                worker.deliver(&stream, &seg);
                // With more segments waiting (a listing found several at once), let the
                // connections start writing this one first: queued behind the next, it
                // could be dropped for room even for viewers that keep up.
                if !inbox.is_empty() {
                    yield_once().await;
                }
            }
            WorkerMsg::Drain => break,
        }
    }
    // Graceful drain: stop accepting, ask every connection to close with 1001 after the
    // frame it is writing, and give them until the drain timeout.
    worker.start_drain();
    let deadline = Instant::now() + shared.config().server.drain_timeout;
    while worker.conn_count() > 0 && Instant::now() < deadline {
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
    Ok(())
}

async fn accept_public(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => Some(r),
            _ = worker.stop_accepting.wait() => None,
        };
        match accepted {
            None => return,
            Some(Ok((stream, peer))) => {
                worker.stats.accepted.inc();
                monoio::spawn(http::serve(worker.clone(), stream, peer, Listener::Public));
            }
            Some(Err(e)) => accept_error(e).await,
        }
    }
}

async fn accept_admin(worker: Rc<Worker>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                monoio::spawn(http::serve(worker.clone(), stream, peer, Listener::Admin));
            }
            Err(e) => accept_error(e).await,
        }
    }
}

async fn accept_error(e: std::io::Error) {
    // Out of descriptors or memory: back off instead of spinning.
    tracing::warn!("accept failed: {e}");
    monoio::time::sleep(Duration::from_millis(50)).await;
}

/// Let every other ready task run once before this one goes on (monoio 0.2 has no public
/// `yield_now`): wake ourselves and return `Pending` once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}
