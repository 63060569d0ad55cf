//! One worker's state, owned by its thread: its connections, its subscription registry,
//! the scratch read buffer and the frame parser. [`Core`] is the per-core context a
//! connection runs against ([`Context`]): it may subscribe, unsubscribe, count and start
//! its tasks, and never reaches further into the worker. Also the worker's periodic
//! ticket sweep, delivery of the hub's segments, and the drain of its connections.

use std::cell::{Cell, RefCell, RefMut};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;

use slab::Slab;

use super::runtime::contained;
use super::session::{self, CloseReq, Conn, Context};
use super::shared::Shared;
use crate::config::Config;
use crate::fanout::{Seg, Stream, Subscriptions};
use crate::metrics::WorkerStats;
use crate::protocol::{ErrorCode, From, Op, Reason, Reply, RequestError};
use crate::sys;
use crate::tickets::{Refusal, TicketId, TicketRecord};
use crate::ws::frame::{self, Parser};

/// An instant as RFC 3339 (UTC, milliseconds), as the wire carries `expiresAt`.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Size of each worker's scratch read buffer.
const SCRATCH: usize = 64 * 1024;

/// One worker's state.
pub struct Core {
    /// The worker's index (0 serves the admin listener).
    pub index: usize,
    /// What all workers share.
    pub shared: Arc<Shared>,
    /// This worker's counters.
    pub stats: Arc<WorkerStats>,
    scratch: RefCell<Vec<u8>>,
    parser: RefCell<Parser>,
    conns: RefCell<Slab<Rc<Conn>>>,
    next_conn: Cell<u64>,
    subs: Subscriptions<Conn>,
    me: Weak<Core>,
    /// Connections coming and going, to give memory back once that settles.
    churn: Settling,
}

/// Changes counted between periodic checks: [`Settling::settled`] is true once, at the
/// first check that finds no change since the previous one after some change.
#[derive(Default)]
struct Settling {
    changes: Cell<u64>,
    seen: Cell<u64>,
    pending: Cell<bool>,
}

impl Settling {
    fn changed(&self) {
        self.changes.set(self.changes.get() + 1);
    }

    fn settled(&self) -> bool {
        let now = self.changes.get();
        if now != self.seen.get() {
            self.seen.set(now);
            self.pending.set(true);
            false
        } else {
            self.pending.replace(false)
        }
    }
}

impl Core {
    /// Worker `index`'s state.
    pub fn new(index: usize, shared: Arc<Shared>) -> Rc<Core> {
        Rc::new_cyclic(|me| Core {
            index,
            stats: shared.metrics.workers[index].clone(),
            subs: Subscriptions::new(shared.hub.clone(), index),
            shared,
            scratch: RefCell::new(vec![0u8; SCRATCH]),
            parser: RefCell::new(Parser::default()),
            conns: RefCell::new(Slab::new()),
            next_conn: Cell::new(1),
            me: me.clone(),
            churn: Settling::default(),
        })
    }

    /// This core as an `Rc` (for spawning tasks that hold it).
    fn me(&self) -> Rc<Core> {
        self.me.upgrade().expect("the core outlives its tasks")
    }

    /// Register an upgraded connection.
    pub fn admit(&self, id: TicketId, record: Arc<TicketRecord>) -> Rc<Conn> {
        let n = self.next_conn.get();
        self.next_conn.set(n + 1);
        let conn_id = (n << 8) | self.index as u64;
        let config = self.shared.config();
        let conn = Rc::new(Conn::new(
            conn_id,
            id,
            record,
            config.connection.send_queue as usize,
            config.connection.max_live_lag,
        ));
        let slot = self.conns.borrow_mut().insert(conn.clone());
        conn.worker_slot.set(slot);
        self.stats.connections.inc();
        self.churn.changed();
        conn
    }

    /// Hand a new segment of `stream` to this worker's caught-up subscribers.
    pub fn deliver(&self, stream: &Stream, seg: &Seg) {
        let skips = self.subs.deliver(stream, seg);
        if skips > 0 {
            self.stats.skipped.add(skips);
        }
    }

    /// After connections came or went (a burst of handshakes, a reconnect storm), and then
    /// none for a whole sweep period, give the memory the allocator holds free on this
    /// thread back to the system. The allocator does that by itself only when the thread
    /// allocates again later, which a worker holding idle connections does not: 256
    /// handshakes in flight at once left 0.09 KiB per idle connection behind at 15,000
    /// (tuning.md, "Allocator").
    fn return_memory_when_settled(&self) {
        if self.churn.settled() {
            let started = Instant::now();
            sys::return_free_memory();
            tracing::debug!(
                worker = self.index,
                took_us = started.elapsed().as_micros() as u64,
                "returned free memory to the system"
            );
        }
    }

    /// Hand a new or replaced init segment of `stream` to this worker's live subscribers.
    pub fn deliver_init(&self, stream: &Stream, seg: &Seg) {
        let skips = self.subs.deliver_init(stream, seg);
        if skips > 0 {
            self.stats.skipped.add(skips);
        }
    }

    /// The worker's periodic pass over its connections: close those whose ticket was
    /// revoked, deleted or has expired, send `expiring` notices, ask quiet ones to park, ping
    /// silent connections and close those silent for `idle_timeout` (4402), sample the
    /// bytes waiting in send queues, and give freed memory back to the system once a change
    /// in the worker's connections has settled.
    pub fn sweep(&self) {
        self.return_memory_when_settled();
        let now = SystemTime::now();
        let instant = Instant::now();
        let config = self.shared.config();
        let notice = config.tickets.expiring_notice;
        let (ping_after, idle_after) = (config.server.ping_after(), config.server.idle_timeout);
        let mut queued = 0u64;
        for (_, conn) in self.conns.borrow().iter() {
            queued += conn.queue.borrow().bytes() as u64;
            // Keepalive: one pass over the worker's connections, no timer per connection.
            let silent = instant.saturating_duration_since(conn.last_rx.get());
            if silent >= idle_after {
                if conn.close_req.get().is_none() {
                    tracing::debug!(conn = conn.id, "closing a silent connection");
                    conn.request_close(CloseReq::because(Reason::IdleTimeout));
                }
                continue;
            }
            if silent >= session::PARK_AFTER && !conn.park_asked.get() && !conn.is_closing() {
                // Quiet: the connection parks as soon as it has nothing to do.
                conn.park_asked.set(true);
                conn.wake.notify();
            }
            // A ping every `ping_after` of silence.
            let pings = conn.pings.get();
            let due = ping_after.saturating_mul(u32::from(pings) + 1);
            if silent >= due && pings < u8::MAX && !conn.is_closing() {
                conn.pings.set(pings.saturating_add(1));
                conn.queue
                    .borrow_mut()
                    .push_keep(frame::ping(b""), Bytes::new());
                conn.wake.notify();
                self.stats.pings.inc();
            }
            if self.shared.mode == super::Mode::Echo {
                continue; // no tickets there
            }
            let verdict = match self.shared.gate.tickets.get(&conn.ticket_id.get()) {
                None => Err(Refusal::Revoked),
                Some(r) => {
                    if !Arc::ptr_eq(&r, &conn.ticket.borrow()) {
                        *conn.ticket.borrow_mut() = r.clone();
                    }
                    r.validity(now)
                }
            };
            if verdict.is_ok() && !conn.expiring_sent.get() && !notice.is_zero() {
                let expires_at = conn.ticket.borrow().expires_at;
                if expires_at.duration_since(now).unwrap_or_default() <= notice {
                    conn.expiring_sent.set(true);
                    conn.push_reply(&Reply::Expiring {
                        expires_at: rfc3339(expires_at),
                    });
                }
            }
            if let Err(r) = verdict {
                if conn.close_req.get().is_none() {
                    let reason = if r == Refusal::Expired {
                        Reason::TicketExpired
                    } else {
                        Reason::TicketRevoked
                    };
                    tracing::info!(conn = conn.id, uid = %conn.ticket.borrow().uid, reason = reason.as_str(), "closing connection");
                    self.stats.revocation_closes.inc();
                    conn.request_close(CloseReq::because(reason));
                }
            }
        }
        let budget = (config.connection.queue_budget / self.shared.workers.max(1) as u64) as usize;
        if queued as usize > budget {
            queued = self.trim_queues(queued as usize, budget) as u64;
        }
        self.stats.queued_bytes.set(queued);
    }

    /// The worker's send queues hold `queued` bytes, over its share `budget` of the
    /// relay's queue budget: halve the largest queues' live segments, largest first, until
    /// under it. Each subscription that lost segments gets its `skipped`. Returns the
    /// bytes queued after.
    fn trim_queues(&self, mut queued: usize, budget: usize) -> usize {
        let mut conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        conns.sort_by_key(|c| std::cmp::Reverse(c.queue.borrow().bytes()));
        for conn in conns {
            if queued <= budget || conn.is_closing() {
                break;
            }
            let mut q = conn.queue.borrow_mut();
            let before = q.bytes();
            let messages = q.trim_segments(before / 2, |sub, from, to| {
                let stream = self.subs.stream_of(conn.id, sub)?;
                Some(frame::text(
                    &Reply::Skipped {
                        stream: &stream,
                        from,
                        to,
                    }
                    .to_json(),
                ))
            });
            self.stats.skipped.add(messages as u64);
            let trimmed = q.bytes() != before;
            queued = queued - before + q.bytes();
            drop(q);
            if trimmed {
                conn.wake.notify();
            }
        }
        queued
    }

    /// `refresh`: check `ticket` and make it `conn`'s ticket (same user, a free connection
    /// slot), end the streams it no longer covers, and answer request `id`.
    async fn refresh_ticket(self: Rc<Self>, conn: Rc<Conn>, id: u32, ticket: String) {
        let wait = self.shared.config().tickets.lookup_timeout;
        let checked = self.shared.gate.verify(&ticket, wait).await;
        drop(ticket);
        if conn.is_closing() {
            return;
        }
        let outcome = checked
            .map_err(|r| match r {
                Refusal::Expired => {
                    RequestError::new(ErrorCode::TicketExpired, "the ticket has expired")
                }
                Refusal::Revoked => {
                    RequestError::new(ErrorCode::TicketRevoked, "the ticket was revoked")
                }
                Refusal::Unavailable => RequestError::new(
                    ErrorCode::TicketsUnavailable,
                    "the ticket store cannot be asked now: retry",
                ),
                _ => RequestError::new(ErrorCode::TicketInvalid, "the ticket is not valid"),
            })
            .and_then(|(new_id, record)| {
                if record.uid != conn.ticket.borrow().uid {
                    return Err(RequestError::new(
                        ErrorCode::Forbidden,
                        "the ticket belongs to another user",
                    ));
                }
                let old_id = conn.ticket_id.get();
                if new_id != old_id {
                    // The connection's slot moves to the new ticket.
                    self.shared.gate.acquire(&new_id, &record).map_err(|_| {
                        RequestError::new(
                            ErrorCode::Forbidden,
                            "the ticket has no free connection slot",
                        )
                    })?;
                    self.shared.gate.release(&old_id);
                    conn.ticket_id.set(new_id);
                }
                *conn.ticket.borrow_mut() = record.clone();
                conn.expiring_sent.set(false);
                Ok(record)
            });
        self.stats.request(
            Op::Refresh,
            outcome.as_ref().map(|_| ()).map_err(|e| e.code),
        );
        match outcome {
            Ok(record) => {
                tracing::debug!(conn = conn.id, uid = %record.uid, "ticket refreshed");
                conn.push_reply(&Reply::Refreshed {
                    id,
                    expires_at: rfc3339(record.expires_at),
                });
                for stream in self.subs.streams_of(conn.id) {
                    if !record.covers_stream(&stream) {
                        self.unsubscribe(&conn, &stream);
                        conn.push_reply(&Reply::Ended {
                            stream: &stream,
                            reason: ErrorCode::Forbidden,
                        });
                    }
                }
            }
            Err(e) => conn.push_error(Some(id), e.code, &e.message),
        }
    }

    /// Stop every live subscription; close each connection with 1001 after the frame it is
    /// writing, or, when `get`s are in flight, after their replies. (The listeners stay up
    /// until the worker ends: new upgrades get 503, `/readyz` says "draining".)
    pub fn start_drain(&self) {
        self.subs.clear();
        let conns: Vec<Rc<Conn>> = self.conns.borrow().iter().map(|(_, c)| c.clone()).collect();
        for conn in conns {
            conn.draining.set(true);
            if !conn.get_task_running() {
                conn.request_close(CloseReq::because(Reason::ShuttingDown));
            }
        }
    }

    /// Open connections on this worker.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }
}

impl Context for Core {
    fn config(&self) -> Arc<Config> {
        self.shared.config()
    }

    fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    fn scratch(&self) -> RefMut<'_, Vec<u8>> {
        self.scratch.borrow_mut()
    }

    fn parser(&self) -> RefMut<'_, Parser> {
        self.parser.borrow_mut()
    }

    fn is_subscribed(&self, conn: &Conn, stream: &str) -> bool {
        self.subs.contains(conn.id, stream)
    }

    fn subscription_count(&self, conn: &Conn) -> usize {
        self.subs.count(conn.id)
    }

    fn subscribe(
        &self,
        conn: &Rc<Conn>,
        id: u32,
        stream: &str,
        from: From,
    ) -> Result<(), RequestError> {
        let Some(sub) = self.subs.add(conn.id, conn, stream, conn.next_sub_id()) else {
            return Err(RequestError::new(
                ErrorCode::Unavailable,
                "the relay follows the most streams it may",
            ));
        };
        let cache = self.shared.cache.clone();
        monoio::spawn(contained(session::catch_up(
            self.me(),
            cache,
            conn.clone(),
            sub,
            id,
            from,
        )));
        Ok(())
    }

    fn unsubscribe(&self, conn: &Conn, stream: &str) {
        if let Some(sub) = self.subs.remove(conn.id, stream) {
            conn.queue.borrow_mut().remove_sub(sub.id);
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static) {
        monoio::spawn(contained(task));
    }

    fn start_gets(&self, conn: &Rc<Conn>) {
        let cache = self.shared.cache.clone();
        monoio::spawn(contained(session::serve_gets(
            self.me(),
            cache,
            conn.clone(),
        )));
    }

    fn refresh(&self, conn: &Rc<Conn>, id: u32, ticket: String) {
        monoio::spawn(contained(self.me().refresh_ticket(
            conn.clone(),
            id,
            ticket,
        )));
    }

    fn echo(&self) -> bool {
        self.shared.mode == super::Mode::Echo
    }

    fn closed(&self, conn: &Conn) {
        self.subs.remove_viewer(conn.id);
        let slot = conn.worker_slot.replace(usize::MAX);
        if self
            .conns
            .borrow()
            .get(slot)
            .is_some_and(|c| c.id == conn.id)
        {
            self.conns.borrow_mut().remove(slot);
            self.stats.connections.sub(1);
            self.churn.changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Settling;

    #[test]
    fn settled_once_after_a_quiet_period_that_follows_changes() {
        let s = Settling::default();
        assert!(!s.settled(), "nothing changed yet");
        s.changed();
        s.changed();
        assert!(!s.settled(), "changes since the last check");
        s.changed();
        assert!(!s.settled(), "still changing");
        assert!(s.settled(), "a whole period without a change");
        assert!(!s.settled(), "once per settling");
        s.changed();
        assert!(!s.settled());
        assert!(s.settled());
    }
}
