//! What a connection may do on its worker: the narrow per-core context a session runs
//! against. The data plane's per-core state implements it; the op tests implement it with
//! a recorder, so the handling of every request runs without a socket or a runtime.

use std::cell::RefMut;
use std::rc::Rc;
use std::sync::Arc;

use super::Conn;
use crate::config::Config;
use crate::metrics::WorkerStats;
use crate::protocol::{From, RequestError};
use crate::ws::frame::Parser;

/// A connection's view of its worker.
pub trait Context: 'static {
    /// The running configuration (SIGHUP may swap it between calls).
    fn config(&self) -> Arc<Config>;
    /// This worker's counters.
    fn stats(&self) -> &WorkerStats;
    /// The worker's scratch read buffer (one per worker; not held across an await).
    fn scratch(&self) -> RefMut<'_, Vec<u8>>;
    /// The worker's frame parser.
    fn parser(&self) -> RefMut<'_, Parser>;
    /// Whether `conn` follows `stream`.
    fn is_subscribed(&self, conn: &Conn, stream: &str) -> bool;
    /// How many streams `conn` follows.
    fn subscription_count(&self, conn: &Conn) -> usize;
    /// Subscribe `conn` to `stream` (request `id`): answer `subscribed` once the stream is
    /// known, then catch up from `from` and go live. `Err` when the relay cannot follow
    /// one more stream.
    fn subscribe(
        &self,
        conn: &Rc<Conn>,
        id: u32,
        stream: &str,
        from: From,
    ) -> Result<(), RequestError>;
    /// End `conn`'s subscription to `stream`, if any, dropping its queued segments.
    fn unsubscribe(&self, conn: &Conn, stream: &str);
    /// Start answering `conn`'s pending `get`s (a task that ends when none are left).
    fn start_gets(&self, conn: &Rc<Conn>);
    /// Check `ticket` and, when it is valid and the same user's, make it `conn`'s ticket;
    /// answers request `id` (`refreshed` or an `error`) when done.
    fn refresh(&self, conn: &Rc<Conn>, id: u32, ticket: String);
    /// `conn` has closed: end its subscriptions and forget it.
    fn closed(&self, conn: &Conn);
    /// Run `task` on this worker (a connection's next step: its task, or its parked wait).
    fn spawn(&self, task: impl std::future::Future<Output = ()> + 'static);
    /// Echo mode (the conformance server): every message is sent back, no request runs.
    fn echo(&self) -> bool {
        false
    }
}
