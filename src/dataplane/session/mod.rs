//! One WebSocket connection after the upgrade: reading client frames, running requests,
//! and writing the send queue. Lives entirely on one worker.
//!
//! **Idle cost.** A connection waits for input through the runtime's readiness wait (an
//! io_uring `PollAdd` or epoll) holding no buffer: bytes are read into the worker's
//! scratch buffer only when they arrive, and only an incomplete frame's bytes are kept per
//! connection. One task per connection does reading, writing and closing; `get`s and
//! catch-up of subscriptions get short-lived tasks of their own only while they have work.
//!
//! The session is split by job: [`reader`] (frame boundaries and message reassembly),
//! [`ops`] (what each request does, against the narrow [`Context`]), [`tasks`] (the `get`
//! and catch-up tasks); this file holds the connection's state and its one task.
//!
//! **Hot path** (`Conn::push_segment`, [`write_some`]): queueing a segment clones one
//! pointer to the segment's shared frame (a 48-byte queue entry), and writing is one
//! `writev` over the queued parts. On a plain connection a payload that has a payload file
//! leaves by `sendfile` after its head (`MSG_MORE`): no copy of it at all on the sending
//! side. Otherwise (small payloads, `server.send_path = "writev"`) the `writev` is the one
//! copy of the payload, into the kernel; TLS encrypts it first (`super::tls`). No
//! allocation per subscriber per segment.

mod context;
mod ops;
mod reader;
mod tasks;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use context::Context;
pub use tasks::{catch_up, serve_gets};

use super::notify::Notify;
use crate::dataplane::socket::Socket;
use crate::fanout::sendq::SendQueue;
use crate::fanout::{Seg, Viewer};
use crate::protocol::{CloseCode, ErrorCode, Reason, Reply, Request};
use crate::sys::{self, Io, MAX_IOV};
use crate::tickets::{TicketId, TicketRecord};
use crate::ws::frame;
use reader::Reader;

/// A subscription of a connection.
pub type Sub = crate::fanout::Sub<Conn>;

/// A connection that has sent nothing for this long is asked to park once it has nothing
/// to do (see [`start`]); one that keeps sending requests stays a running task.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a closing connection waits for the client's close frame or EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// Why and how the relay closes a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReq {
    /// The close frame's code.
    pub code: CloseCode,
    /// Sent as `{"op":"closing","reason":...}` first, for application reasons.
    pub reason: Option<Reason>,
}

impl CloseReq {
    /// Close for an application reason: `closing` first, then its close code.
    pub fn because(reason: Reason) -> CloseReq {
        CloseReq {
            code: reason.close_code(),
            reason: Some(reason),
        }
    }

    /// Close with `code` and no `closing` message (protocol errors, answers).
    pub fn code(code: CloseCode) -> CloseReq {
        CloseReq { code, reason: None }
    }
}

/// A connection's request bookkeeping.
#[derive(Default)]
struct Requests {
    /// Start of the current one-second window, requests in it, and refused ones (the
    /// request rate limit).
    window: Option<(Instant, u32, u32)>,
    /// Streams subscribed to in the last minute (a hash of the name, when): bounds how many
    /// different streams one connection makes the relay discover.
    recent_streams: Vec<(u64, Instant)>,
    /// Requests waiting for an answer, in order: `get`s, and the requests that came behind
    /// a waiting `get` (PROTOCOL.md: they wait behind it).
    waiting: VecDeque<Waiting>,
    /// How many of `waiting` are `get`s (the one being answered included).
    gets: usize,
}

/// A request waiting its turn, and what the `get` task does next
/// ([`Conn::next_request`]).
pub enum Waiting {
    /// A `get` (request id, key): answer it, then call [`Conn::get_answered`].
    Get(u32, String),
    /// Another request that came while a `get` waited: run it when its turn comes.
    Later(Request),
}

/// State shared by a connection's tasks and its worker. Its subscriptions are not here:
/// the worker's subscription registry owns them.
pub struct Conn {
    /// Unique on the relay: a per-worker counter and the worker's index.
    pub id: u64,
    /// The id of its ticket (the one it was admitted with, or the last refreshed).
    pub ticket_id: Cell<TicketId>,
    /// Whether `expiring` was sent for the current ticket.
    pub expiring_sent: Cell<bool>,
    /// That ticket's current record (the ticket sweep keeps it fresh).
    pub ticket: RefCell<Arc<TicketRecord>>,
    /// Frames waiting to be written.
    pub queue: RefCell<SendQueue>,
    /// Raised when there is something to write or a close was requested.
    pub wake: Notify,
    /// Raised when the queue drained (a waiting `get` may fit now) or the conn closed.
    pub room: Notify,
    next_sub_id: Cell<u32>,
    /// When the client last sent anything (keepalive).
    pub last_rx: Cell<Instant>,
    /// Keepalive pings sent since then (one every ping interval of silence).
    pub pings: Cell<u8>,
    /// The worker asked the connection to park when it has nothing to do (set by the sweep
    /// after [`PARK_AFTER`] without input; input clears it).
    pub park_asked: Cell<bool>,
    /// Request bookkeeping, allocated with the first request (an idle connection has none).
    requests: RefCell<Option<Box<Requests>>>,
    /// The worker's handle for this connection (its registry slot).
    pub worker_slot: Cell<usize>,
    get_task: Cell<bool>,
    /// The first close asked for, if any.
    pub close_req: Cell<Option<CloseReq>>,
    /// The connection task has ended.
    pub closed: Cell<bool>,
    /// The relay is draining: answer the `get`s in flight, take no new requests, then 1001.
    pub draining: Cell<bool>,
    /// Whether the kernel's unsent bytes for this connection are bounded yet.
    unsent_bound: Cell<UnsentBound>,
}

/// The kernel's unsent bytes on a connection (`connection.socket_unsent`, `TCP_NOTSENT_LOWAT`).
/// Only live segments need a bound: beyond it the send queue's lag bound decides what a
/// lagging viewer skips. A connection that only `get`s keeps the kernel's default, so an
/// object leaves in a few large `sendfile`s instead of one per bound's worth of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnsentBound {
    /// The kernel's default: no subscription yet, or the setting is 0.
    Kernel,
    /// To be set before the connection's next write.
    Wanted(u32),
    /// Set (it stays for the connection's life).
    Set,
}

impl Conn {
    /// A connection admitted with ticket `ticket_id`.
    pub fn new(
        id: u64,
        ticket_id: TicketId,
        ticket: Arc<TicketRecord>,
        queue_limit: usize,
        max_live_lag: Duration,
    ) -> Conn {
        Conn {
            id,
            ticket_id: Cell::new(ticket_id),
            expiring_sent: Cell::new(false),
            ticket: RefCell::new(ticket),
            queue: RefCell::new(SendQueue::with_max_lag(queue_limit, max_live_lag)),
            wake: Notify::default(),
            room: Notify::default(),
            next_sub_id: Cell::new(1),
            last_rx: Cell::new(Instant::now()),
            pings: Cell::new(0),
            park_asked: Cell::new(false),
            requests: RefCell::new(None),
            worker_slot: Cell::new(usize::MAX),
            get_task: Cell::new(false),
            close_req: Cell::new(None),
            closed: Cell::new(false),
            draining: Cell::new(false),
            unsent_bound: Cell::new(UnsentBound::Kernel),
        }
    }

    /// The connection follows a stream: bound the kernel's unsent bytes to `limit` before
    /// its next write (0: keep the kernel's default). Only the first call counts.
    pub fn bound_unsent(&self, limit: u64) {
        if limit > 0 && self.unsent_bound.get() == UnsentBound::Kernel {
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            self.unsent_bound.set(UnsentBound::Wanted(limit));
        }
    }

    /// Where the connection's unsent bound stands.
    pub fn unsent_bound(&self) -> UnsentBound {
        self.unsent_bound.get()
    }

    /// The bound to set on the socket now, once.
    fn take_unsent_bound(&self) -> Option<u32> {
        match self.unsent_bound.get() {
            UnsentBound::Wanted(limit) => {
                self.unsent_bound.set(UnsentBound::Set);
                Some(limit)
            }
            UnsentBound::Kernel | UnsentBound::Set => None,
        }
    }

    /// Queue a JSON reply.
    pub fn push_reply(&self, reply: &Reply<'_>) {
        if self.closed.get() || self.close_req.get().is_some() {
            return;
        }
        self.queue
            .borrow_mut()
            .push_keep(frame::text(&reply.to_json()), Bytes::new());
        self.wake.notify();
    }

    /// Queue an error reply.
    pub fn push_error(&self, id: Option<u32>, code: ErrorCode, message: &str) {
        self.push_reply(&Reply::Error { id, code, message });
    }

    /// A new subscription id (never 0, which tags init segments in the queue).
    pub fn next_sub_id(&self) -> u32 {
        let id = self.next_sub_id.get();
        self.next_sub_id.set(id.wrapping_add(1).max(1));
        id
    }

    /// Count a request at `now` against `per_sec`: `Ok` to go on, `Err(false)` to refuse it
    /// (`rate_limited`), `Err(true)` when the client keeps flooding (three times the limit
    /// refused within a second): close with 1008.
    pub fn note_request(&self, per_sec: u32, now: Instant) -> Result<(), bool> {
        let mut requests = self.requests();
        let (mut start, mut n, mut refused) = requests.window.unwrap_or((now, 0, 0));
        if now.duration_since(start) >= Duration::from_secs(1) {
            (start, n, refused) = (now, 0, 0);
        }
        let verdict = if n < per_sec {
            n += 1;
            Ok(())
        } else {
            refused += 1;
            Err(refused >= per_sec.saturating_mul(3))
        };
        requests.window = Some((start, n, refused));
        verdict
    }

    /// Note a subscription to `stream` at `now`; false when it would be the
    /// `max_per_minute + 1`-th different stream within a minute (nothing is noted then).
    pub fn note_stream(&self, stream: &str, max_per_minute: usize, now: Instant) -> bool {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(stream);
        let mut requests = self.requests();
        let recent = &mut requests.recent_streams;
        recent.retain(|(_, at)| now.duration_since(*at) < Duration::from_secs(60));
        if let Some(seen) = recent.iter_mut().find(|(h, _)| *h == hash) {
            seen.1 = now;
            return true;
        }
        if recent.len() >= max_per_minute {
            return false;
        }
        recent.push((hash, now));
        true
    }

    fn requests(&self) -> std::cell::RefMut<'_, Requests> {
        std::cell::RefMut::map(self.requests.borrow_mut(), |r| {
            &mut **r.get_or_insert_with(Default::default)
        })
    }

    /// `get`s waiting for an answer, the one being answered included (it may be waiting for
    /// room in the send queue).
    pub fn pending_gets(&self) -> usize {
        self.requests.borrow().as_ref().map_or(0, |r| r.gets)
    }

    /// Whether requests wait for the `get` task (a later request waits behind them).
    pub fn requests_waiting(&self) -> bool {
        self.requests
            .borrow()
            .as_ref()
            .is_some_and(|r| !r.waiting.is_empty())
    }

    /// Queue `get` request `id` of `key` for the `get` task.
    pub fn push_get(&self, id: u32, key: String) {
        let mut r = self.requests();
        r.waiting.push_back(Waiting::Get(id, key));
        r.gets += 1;
    }

    /// Requests other than `get`s waiting behind them.
    pub fn held_requests(&self) -> usize {
        self.requests
            .borrow()
            .as_ref()
            .map_or(0, |r| r.waiting.len() - r.gets)
    }

    /// Queue another request behind the waiting `get`s.
    pub fn push_later(&self, request: Request) {
        self.requests().waiting.push_back(Waiting::Later(request));
    }

    /// What the `get` task does next (call it once per turn). A `get` stays counted in
    /// [`Conn::pending_gets`] until [`Conn::get_answered`]; a later request leaves the
    /// queue now.
    pub fn next_request(&self) -> Option<Waiting> {
        let mut requests = self.requests.borrow_mut();
        let r = requests.as_mut()?;
        match r.waiting.front_mut()? {
            // The key moves out: the entry only counts from here on.
            Waiting::Get(id, key) => Some(Waiting::Get(*id, std::mem::take(key))),
            Waiting::Later(_) => r.waiting.pop_front(),
        }
    }

    /// The `get` from [`Conn::next_request`] is answered (its reply or error is queued).
    pub fn get_answered(&self) {
        if let Some(r) = self.requests.borrow_mut().as_mut() {
            if let Some(Waiting::Get(..)) = r.waiting.front() {
                r.waiting.pop_front();
                r.gets -= 1;
            }
        }
    }

    /// Whether `get`s are being answered.
    pub fn get_task_running(&self) -> bool {
        self.get_task.get()
    }

    /// Mark the `get` task started; returns whether it already was.
    pub fn claim_get_task(&self) -> bool {
        self.get_task.replace(true)
    }

    /// Ask the connection task to close (the first request wins).
    pub fn request_close(&self, req: CloseReq) {
        if self.close_req.get().is_none() && !self.closed.get() {
            self.close_req.set(Some(req));
            self.wake.notify();
        }
    }

    /// Whether the connection takes no more frames (closing or closed).
    pub fn is_closing(&self) -> bool {
        self.closed.get() || self.close_req.get().is_some()
    }
}

impl Viewer for Conn {
    /// Queue a live segment for subscription `sub`, applying the slow-consumer policy.
    /// Hot path: no allocation unless segments are dropped.
    fn push_segment(&self, sub: &Sub, seg: &Seg) -> bool {
        if self.is_closing() {
            return false;
        }
        let mut q = self.queue.borrow_mut();
        let stream = &sub.stream.name;
        let skipped = q.push_segment(sub.id, seg.clone(), Instant::now(), |from, to| {
            frame::text(&Reply::Skipped { stream, from, to }.to_json())
        });
        drop(q);
        self.wake.notify();
        skipped
    }
}

/// How [`run`] ended.
enum Ran {
    /// The connection is closed and forgotten by its worker.
    Closed,
    /// Nothing to do: no subscription, no request in flight, nothing queued or partly read.
    Idle(Socket),
}

/// Serve an upgraded connection until it closes. `pending` holds bytes that arrived with the
/// upgrade request; `held` is dropped when the connection ends.
///
/// A connection with something to do runs as a task ([`run`]). One that has nothing to do
/// (no subscription, no request in flight, nothing queued, no partial frame) is **parked**
/// from the start, and again once its worker's sweep finds it quiet for [`PARK_AFTER`]:
/// its task ends, and all that is left is a small task waiting for the socket to become
/// readable or for its [`Conn::wake`] (a reply, a ping, a close), which then starts the
/// connection's task again. An idle connection so costs its `Conn`, its socket and that
/// wait, not a whole session state machine.
pub fn start<C: Context, H: 'static>(
    ctx: Rc<C>,
    conn: Rc<Conn>,
    sock: Socket,
    pending: Vec<u8>,
    held: H,
) {
    // TLS may hold plaintext that arrived with the handshake (no readiness event would
    // announce it): such a connection starts with a read.
    let c = ctx.clone();
    if pending.is_empty() && !sock.is_tls() {
        conn.park_asked.set(true);
        c.spawn(parked(ctx, conn, sock, held));
    } else {
        c.spawn(active(ctx, conn, sock, pending, held));
    }
}

/// The connection's task: [`run`], then park it when it went idle.
async fn active<C: Context, H: 'static>(
    ctx: Rc<C>,
    conn: Rc<Conn>,
    sock: Socket,
    pending: Vec<u8>,
    held: H,
) {
    match run(ctx.clone(), conn.clone(), sock, pending).await {
        Ran::Closed => drop(held),
        Ran::Idle(sock) => {
            let c = ctx.clone();
            c.spawn(parked(ctx, conn, sock, held));
        }
    }
}

/// A parked connection: wait for input or a wake-up, then start its task again. (An
/// `async` block rather than an `async fn`, whose arguments would be stored twice: this
/// future is most of what an idle connection costs.)
#[allow(clippy::manual_async_fn)]
fn parked<C: Context, H: 'static>(
    ctx: Rc<C>,
    conn: Rc<Conn>,
    sock: Socket,
    held: H,
) -> impl Future<Output = ()> {
    async move {
        {
            let mut readable = pin!(sock.stream().readable(false));
            poll_fn(|cx| {
                if conn.wake.poll_take(cx).is_ready() {
                    return Poll::Ready(());
                }
                readable.as_mut().poll(cx).map(|_| ())
            })
            .await;
        }
        let c = ctx.clone();
        c.spawn(active(ctx, conn, sock, Vec::new(), held));
    }
}

/// Run an upgraded connection until it closes or goes idle. `pending` holds bytes that
/// arrived before (with the upgrade request).
async fn run<C: Context>(ctx: Rc<C>, conn: Rc<Conn>, sock: Socket, pending: Vec<u8>) -> Ran {
    let mut reader = Reader::default();
    if !pending.is_empty() {
        reader.process(&*ctx, &conn, &pending);
    }
    // The waits below borrow the socket: they end with this block, before the socket is
    // handed on when the connection parks.
    let idle = {
        let stream = sock.stream();
        // What arrived with the upgrade and is not read yet (with TLS, possibly decrypted and
        // held by rustls already, so no readiness event would announce it).
        let mut read_eof = reader.read_ready(&sock, &*ctx, &conn, false);
        let mut read_wait = pin!(stream.readable(false));
        let mut read_armed = true;
        let mut write_wait = pin!(stream.writable(false));
        let mut write_armed = true;
        let mut write_blocked = false;
        let mut close_queued = false;
        let mut close_deadline: Option<Instant> = None;
        let mut timer: Option<Pin<Box<monoio::time::Sleep>>> = None;
        let mut timer_at: Option<Instant> = None;
        let stall_timeout = ctx.config().connection.stall_timeout;

        loop {
            // 1. Write what we can (a first subscription bounds the kernel's unsent bytes
            // before its segments go out).
            if let Some(limit) = conn.take_unsent_bound() {
                if let Err(e) = sys::set_unsent_limit(sock.fd(), limit) {
                    tracing::debug!("TCP_NOTSENT_LOWAT: {e}");
                }
            }
            if !write_blocked && (!conn.queue.borrow().is_empty() || sock.pending_output()) {
                match write_some(&sock, &conn, ctx.stats()) {
                    Ok(true) => write_blocked = true,
                    Ok(false) => {}
                    Err(_) => break false,
                }
            }
            // 2. Close handling.
            if !close_queued {
                if let Some(req) = conn.close_req.get() {
                    let mut q = conn.queue.borrow_mut();
                    if req.code == CloseCode::GoingAway {
                        // Draining: replies already queued still go out before the close.
                        q.drop_unstarted_segments();
                    } else {
                        q.truncate_unstarted();
                    }
                    if let Some(reason) = req.reason {
                        let msg = Reply::Closing { reason };
                        q.push_keep(frame::text(&msg.to_json()), Bytes::new());
                    }
                    q.push_keep(frame::close_frame(req.code, ""), Bytes::new());
                    close_queued = true;
                    close_deadline = Some(Instant::now() + CLOSE_LINGER);
                    ctx.stats().count_close(req.code);
                    continue;
                }
            }
            if close_queued && conn.queue.borrow().is_empty() {
                // TLS: close_notify goes out before the write side is shut.
                sock.close_notify();
                if !sock.pending_output() {
                    sys::shutdown_write(sock.fd());
                    if read_eof {
                        break false;
                    }
                } else if !write_blocked {
                    continue;
                }
            }
            if read_eof && !close_queued {
                break false;
            }
            // 3. Timers: stall clock while over the queue limit, linger while closing.
            let stall_at = conn.queue.borrow().stall_deadline(stall_timeout);
            if let Some(at) = stall_at {
                if !close_queued && Instant::now() >= at {
                    conn.request_close(CloseReq::because(Reason::SlowConsumer));
                    ctx.stats().slow_closes.inc();
                    continue;
                }
            }
            let deadline = close_deadline.or(stall_at);
            if let Some(d) = deadline {
                if Instant::now() >= d && close_queued {
                    break false;
                }
                if timer_at != Some(d) {
                    timer = Some(Box::pin(monoio::time::sleep_until(d.into())));
                    timer_at = Some(d);
                }
            } else {
                timer = None;
                timer_at = None;
            }
            // Nothing left to send for now: TLS gives its write buffer back.
            if !write_blocked && conn.queue.borrow().is_empty() {
                sock.quiet();
            }
            // 4. Quiet, and nothing at all to do: park (the task ends, a small wait remains).
            if conn.park_asked.get()
                && timer.is_none()
                && !write_blocked
                && !close_queued
                && conn.close_req.get().is_none()
                && conn.queue.borrow().is_empty()
                && !sock.pending_output()
                && reader.is_empty()
                && !conn.get_task_running()
                && !conn.requests_waiting()
                && ctx.subscription_count(&conn) == 0
            {
                break true;
            }
            // 5. Wait for input, socket room, a wake-up or the timer.
            if !read_armed {
                read_wait.set(stream.readable(false));
                read_armed = true;
            }
            if write_blocked && !write_armed {
                write_wait.set(stream.writable(false));
                write_armed = true;
            }
            let want_read = !read_eof;
            let event = poll_fn(|cx| {
                if conn.wake.poll_take(cx).is_ready() {
                    return Poll::Ready(Event::Wake);
                }
                if want_read {
                    if let Poll::Ready(r) = read_wait.as_mut().poll(cx) {
                        return Poll::Ready(Event::Readable(r.is_ok()));
                    }
                }
                if write_blocked && write_wait.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Writable);
                }
                if let Some(t) = timer.as_mut() {
                    if t.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(Event::Timer);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Wake => {}
                Event::Readable(ok) => {
                    read_armed = false;
                    if !ok || reader.read_ready(&sock, &*ctx, &conn, close_queued) {
                        read_eof = true;
                    }
                }
                Event::Writable => {
                    write_armed = false;
                    write_blocked = false;
                }
                Event::Timer => {
                    timer = None;
                    timer_at = None;
                }
            }
        }
    };
    if idle {
        return Ran::Idle(sock);
    }
    finish(&*ctx, &conn);
    Ran::Closed
}

enum Event {
    Wake,
    Readable(bool),
    Writable,
    Timer,
}

/// Write queued frames until the queue is empty (and, with TLS, the encrypted bytes are
/// out) or the socket is full. `Ok(true)`: the socket would block.
fn write_some(
    sock: &Socket,
    conn: &Conn,
    stats: &crate::metrics::WorkerStats,
) -> std::io::Result<bool> {
    loop {
        let mut q = conn.queue.borrow_mut();
        if q.is_empty() {
            return Ok(!sock.flush()?);
        }
        let files = sock.sends_files();
        let from_file = if files { q.front_file() } else { None };
        let step = match from_file {
            // The front frame's head is out: its payload goes from its file.
            Some((fd, offset, left)) => match sock.sendfile(fd, offset, left)? {
                Io::Done(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "payload file shorter than its object",
                    ))
                }
                step => step,
            },
            None => {
                let mut parts: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
                let (n, file_next) = q.gather(&mut parts, files);
                if n == 0 {
                    // Unreachable while the queue keeps its invariants; never spin on it.
                    return Err(std::io::Error::other("send queue has nothing to write"));
                }
                sock.writev(&parts[..n], file_next)?
            }
        };
        match step {
            Io::Done(written) => {
                let frames = q.advance(written, Instant::now());
                stats.bytes_sent.add(written as u64);
                if from_file.is_some() {
                    stats.bytes_sendfile.add(written as u64);
                }
                stats.frames_sent.add(frames as u64);
                drop(q);
                if written > 0 {
                    conn.room.notify();
                }
            }
            Io::WouldBlock => return Ok(true),
        }
    }
}

/// Tear down: unsubscribe everywhere, wake helpers so they exit, leave the worker.
fn finish<C: Context>(ctx: &C, conn: &Conn) {
    conn.closed.set(true);
    if let Some(r) = conn.requests.borrow_mut().as_mut() {
        r.waiting.clear();
        r.gets = 0;
    }
    conn.room.notify();
    ctx.closed(conn);
}
