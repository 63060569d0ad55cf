//! One WebSocket connection after the upgrade: reading client frames, running requests,
//! and writing the send queue. Lives entirely on one worker.
//!
//! **Idle cost.** A connection waits for input through the runtime's readiness wait (an
//! io_uring `PollAdd` or epoll) holding no buffer: bytes are read into the worker's
//! scratch buffer only when they arrive, and only an incomplete frame's bytes are kept per
//! connection. One task per connection does reading, writing and closing; `get`s and
//! catch-up of subscriptions get short-lived tasks of their own only while they have work.
//!
//! **Hot path** ([`Conn::push_segment`], [`write_some`]): queueing a segment clones two
//! `Bytes` handles, and writing is one `writev` over the queued parts, the one copy of the
//! payload (into the kernel). No allocation per subscriber per segment.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use fastwebsockets::OpCode;
use monoio::net::TcpStream;

use crate::hub::{Seg, Stream};
use crate::notify::Notify;
use crate::protocol::{self, meta_json, GetMeta, Reply, Request};
use crate::sendq::SendQueue;
use crate::sys::{self, Io, MAX_IOV};
use crate::tickets::{TicketId, TicketRecord};
use crate::worker::Worker;
use crate::ws::frame::{self, close};

/// How long a closing connection waits for the client's close frame or EOF.
const CLOSE_LINGER: Duration = Duration::from_secs(5);

/// A subscription of one connection to one stream.
pub struct Sub {
    pub id: u32,
    pub stream: Arc<Stream>,
    pub conn: std::rc::Weak<Conn>,
    /// Next sequence number this subscriber needs.
    pub next_seq: Cell<u64>,
    /// Caught up: new segments are pushed by the worker's inbox.
    pub live: Cell<bool>,
    /// Cleared on unsubscribe or close.
    pub active: Cell<bool>,
}

/// Why and how the relay closes a connection.
#[derive(Clone, Copy)]
pub struct CloseReq {
    pub code: u16,
    /// Sent as `{"op":"closing","reason":...}` first, for application reasons.
    pub reason: Option<&'static str>,
}

/// State shared by a connection's tasks and the worker.
pub struct Conn {
    pub id: u64,
    pub ticket_id: TicketId,
    pub ticket: RefCell<Arc<TicketRecord>>,
    pub queue: RefCell<SendQueue>,
    /// Raised when there is something to write or a close was requested.
    pub wake: Notify,
    /// Raised when the queue drained (a waiting `get` may fit now) or the conn closed.
    pub room: Notify,
    pub subs: RefCell<HashMap<Arc<str>, Rc<Sub>>>,
    next_sub_id: Cell<u32>,
    pub pending_gets: RefCell<VecDeque<(u32, String)>>,
    get_task: Cell<bool>,
    pub close_req: Cell<Option<CloseReq>>,
    pub closed: Cell<bool>,
    /// The relay is draining: answer the `get`s in flight, take no new requests, then 1001.
    pub draining: Cell<bool>,
}

impl Conn {
    /// A connection admitted with ticket `ticket_id`.
    pub fn new(
        id: u64,
        ticket_id: TicketId,
        ticket: Arc<TicketRecord>,
        queue_limit: usize,
    ) -> Conn {
        Conn {
            id,
            ticket_id,
            ticket: RefCell::new(ticket),
            queue: RefCell::new(SendQueue::new(queue_limit)),
            wake: Notify::default(),
            room: Notify::default(),
            subs: RefCell::new(HashMap::new()),
            next_sub_id: Cell::new(1),
            pending_gets: RefCell::new(VecDeque::new()),
            get_task: Cell::new(false),
            close_req: Cell::new(None),
            closed: Cell::new(false),
            draining: Cell::new(false),
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
    pub fn push_error(&self, id: Option<u32>, code: &str, message: &str) {
        self.push_reply(&Reply::Error { id, code, message });
    }

    /// Queue a live segment for subscription `sub`, applying the slow-consumer policy.
    /// Hot path: no allocation unless segments are dropped.
    pub fn push_segment(&self, sub: &Sub, seg: &Seg, worker: &Worker) {
        if self.closed.get() || self.close_req.get().is_some() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        let dropped = q.push_segment(
            sub.id,
            seg.seq,
            seg.prefix.clone(),
            seg.payload.clone(),
            Instant::now(),
        );
        if let Some((from, to, at)) = dropped {
            let skipped = Reply::Skipped {
                stream: &sub.stream.name,
                from,
                to,
            };
            q.insert_keep(at, frame::text(&skipped.to_json()));
            worker.stats.skipped.inc();
        }
        drop(q);
        self.wake.notify();
    }

    /// Whether `get`s are being answered.
    pub fn get_task_running(&self) -> bool {
        self.get_task.get()
    }

    /// Ask the connection task to close (the first request wins).
    pub fn request_close(&self, req: CloseReq) {
        if self.close_req.get().is_none() && !self.closed.get() {
            self.close_req.set(Some(req));
            self.wake.notify();
        }
    }
}

/// Run an upgraded connection until it closes. `pending` holds bytes that arrived with
/// the upgrade request.
pub async fn run(worker: Rc<Worker>, conn: Rc<Conn>, stream: TcpStream, pending: Vec<u8>) {
    let fd = stream.as_raw_fd();
    let mut reader = Reader {
        inbuf: pending,
        fragments: None,
    };
    if !reader.inbuf.is_empty() {
        let data = std::mem::take(&mut reader.inbuf);
        reader.process(&worker, &conn, &data);
    }
    let mut read_wait = pin!(stream.readable(false));
    let mut read_armed = true;
    let mut write_wait = pin!(stream.writable(false));
    let mut write_armed = true;
    let mut write_blocked = false;
    let mut read_eof = false;
    let mut close_queued = false;
    let mut close_deadline: Option<Instant> = None;
    let mut timer: Option<Pin<Box<monoio::time::Sleep>>> = None;
    let mut timer_at: Option<Instant> = None;
    let stall_timeout = worker.shared.config().connection.stall_timeout;

    loop {
        // 1. Write what we can.
        if !write_blocked && !conn.queue.borrow().is_empty() {
            match write_some(fd, &conn, &worker) {
                Ok(true) => write_blocked = true,
                Ok(false) => {}
                Err(_) => break,
            }
        }
        // 2. Close handling.
        if !close_queued {
            if let Some(req) = conn.close_req.get() {
                let mut q = conn.queue.borrow_mut();
                if req.code == close::GOING_AWAY {
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
                worker.stats.count_close(req.code);
                continue;
            }
        }
        if close_queued && conn.queue.borrow().is_empty() {
            sys::shutdown_write(fd);
            if read_eof {
                break;
            }
        }
        if read_eof && !close_queued {
            break;
        }
        // 3. Timers: stall clock while over the queue limit, linger while closing.
        let stall_at = conn.queue.borrow().stall_deadline(stall_timeout);
        if let Some(at) = stall_at {
            if !close_queued && Instant::now() >= at {
                conn.request_close(CloseReq {
                    code: close::SLOW_CONSUMER,
                    reason: Some("slow_consumer"),
                });
                worker.stats.slow_closes.inc();
                continue;
            }
        }
        let deadline = close_deadline.or(stall_at);
        if let Some(d) = deadline {
            if Instant::now() >= d && close_queued {
                break;
            }
            if timer_at != Some(d) {
                timer = Some(Box::pin(monoio::time::sleep_until(d.into())));
                timer_at = Some(d);
            }
        } else {
            timer = None;
            timer_at = None;
        }
        // 4. Wait for input, socket room, a wake-up or the timer.
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
                if !ok || reader.read_ready(fd, &worker, &conn, close_queued) {
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
    finish(&worker, &conn);
}

enum Event {
    Wake,
    Readable(bool),
    Writable,
    Timer,
}

/// Write queued frames until the queue is empty or the socket is full. `Ok(true)`: the
/// socket would block.
fn write_some(fd: RawFd, conn: &Conn, worker: &Worker) -> std::io::Result<bool> {
    loop {
        let mut q = conn.queue.borrow_mut();
        if q.is_empty() {
            return Ok(false);
        }
        let mut parts: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
        let n = q.gather(&mut parts);
        match sys::writev(fd, &parts[..n])? {
            Io::Done(written) => {
                let frames = q.advance(written, Instant::now());
                worker.stats.bytes_sent.add(written as u64);
                worker.stats.frames_sent.add(frames as u64);
                drop(q);
                if written > 0 {
                    conn.room.notify();
                }
            }
            Io::WouldBlock => return Ok(true),
        }
    }
}

/// Tear down: unsubscribe everywhere, release the ticket slot, wake helpers so they exit.
fn finish(worker: &Worker, conn: &Rc<Conn>) {
    conn.closed.set(true);
    let subs: Vec<Rc<Sub>> = conn.subs.borrow_mut().drain().map(|(_, s)| s).collect();
    for sub in subs {
        worker.remove_sub(&sub);
    }
    conn.pending_gets.borrow_mut().clear();
    conn.room.notify();
    worker.forget_conn(conn);
}

/// Incoming bytes of one connection: an incomplete frame, and a fragmented message being
/// reassembled.
struct Reader {
    inbuf: Vec<u8>,
    fragments: Option<Vec<u8>>,
}

impl Reader {
    /// The socket is readable: read everything there is. Returns true at EOF or error.
    fn read_ready(&mut self, fd: RawFd, worker: &Worker, conn: &Rc<Conn>, discard: bool) -> bool {
        loop {
            let mut scratch = worker.scratch.borrow_mut();
            let n = match sys::recv(fd, &mut scratch) {
                Ok(Io::Done(0)) | Err(_) => return true,
                Ok(Io::Done(n)) => n,
                Ok(Io::WouldBlock) => return false,
            };
            if discard {
                // We sent our close frame: the client's close frame ends the connection.
                if self.close_answered(&scratch[..n]) {
                    return true;
                }
            } else if conn.close_req.get().is_none() {
                self.process(worker, conn, &scratch[..n]);
            }
            if n < scratch.len() {
                return false;
            }
        }
    }

    /// After our close frame: whether `inbuf ++ data` holds the client's close frame (or
    /// anything unparseable, which ends the connection as well). Other frames are dropped.
    fn close_answered(&mut self, data: &[u8]) -> bool {
        self.inbuf.extend_from_slice(data);
        let mut at = 0;
        loop {
            match frame::frame_len(&self.inbuf[at..], usize::MAX) {
                Ok(Some(len)) => {
                    if self.inbuf[at] & 0x0f == 0x8 {
                        return true;
                    }
                    at += len;
                }
                Ok(None) => {
                    self.inbuf.drain(..at);
                    return false;
                }
                Err(_) => return true,
            }
        }
    }

    /// Parse and act on every complete frame in `inbuf ++ data`.
    fn process(&mut self, worker: &Worker, conn: &Rc<Conn>, data: &[u8]) {
        let max = worker.shared.config().connection.max_message as usize;
        if self.inbuf.is_empty() {
            let used = self.frames(worker, conn, data, max);
            if used < data.len() && conn.close_req.get().is_none() {
                self.inbuf.extend_from_slice(&data[used..]);
            }
        } else {
            let mut buf = std::mem::take(&mut self.inbuf);
            buf.extend_from_slice(data);
            let used = self.frames(worker, conn, &buf, max);
            if conn.close_req.get().is_none() {
                buf.drain(..used);
                if !buf.is_empty() {
                    self.inbuf = buf;
                }
            }
        }
    }

    /// Handle complete frames at the start of `buf`; returns the bytes consumed.
    fn frames(&mut self, worker: &Worker, conn: &Rc<Conn>, buf: &[u8], max: usize) -> usize {
        let mut at = 0;
        while conn.close_req.get().is_none() {
            let len = match frame::frame_len(&buf[at..], max) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(code) => {
                    conn.request_close(CloseReq { code, reason: None });
                    break;
                }
            };
            let parsed = worker.parser.borrow_mut().parse(&buf[at..at + len]);
            at += len;
            match parsed {
                Ok(f) => self.frame(worker, conn, f, max),
                Err(code) => conn.request_close(CloseReq { code, reason: None }),
            }
        }
        at
    }

    fn frame(&mut self, worker: &Worker, conn: &Rc<Conn>, f: frame::Incoming, max: usize) {
        let fail = |code| conn.request_close(CloseReq { code, reason: None });
        match f.opcode {
            OpCode::Text if self.fragments.is_some() => fail(close::PROTOCOL_ERROR),
            OpCode::Text if f.fin => message(worker, conn, f.payload),
            OpCode::Text => self.fragments = Some(f.payload.to_vec()),
            OpCode::Continuation => {
                let Some(mut buf) = self.fragments.take() else {
                    return fail(close::PROTOCOL_ERROR);
                };
                if buf.len() + f.payload.len() > max {
                    return fail(close::TOO_BIG);
                }
                buf.extend_from_slice(&f.payload);
                if !f.fin {
                    self.fragments = Some(buf);
                } else if std::str::from_utf8(&buf).is_err() {
                    fail(close::INVALID_UTF8);
                } else {
                    message(worker, conn, BytesMut::from(&buf[..]));
                }
            }
            OpCode::Binary => fail(close::UNSUPPORTED_DATA),
            OpCode::Close => {
                let code = match f.payload.len() {
                    0 => close::NORMAL,
                    1 => close::PROTOCOL_ERROR,
                    _ => {
                        let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                        let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                        if valid && std::str::from_utf8(&f.payload[2..]).is_ok() {
                            code
                        } else {
                            close::PROTOCOL_ERROR
                        }
                    }
                };
                fail(code);
            }
            OpCode::Ping => {
                conn.queue
                    .borrow_mut()
                    .push_keep(frame::pong(&f.payload), Bytes::new());
                conn.wake.notify();
            }
            OpCode::Pong => {}
        }
    }
}

/// Act on one complete text message.
fn message(worker: &Worker, conn: &Rc<Conn>, mut payload: BytesMut) {
    let config = worker.shared.config();
    let cfg = &config.connection;
    let request = protocol::parse(&mut payload);
    if conn.draining.get() {
        let id = match &request {
            Request::Get { id, .. }
            | Request::Subscribe { id, .. }
            | Request::Unsubscribe { id, .. } => Some(*id),
            Request::Bad { id, .. } => *id,
        };
        return conn.push_error(id, "unavailable", "the relay is shutting down");
    }
    match request {
        Request::Bad { id, message } => {
            worker.stats.request("bad", "bad_request");
            conn.push_error(id, "bad_request", &message);
        }
        Request::Get { id, key } => {
            if !conn.ticket.borrow().covers_key(&key) {
                worker.stats.request("get", "forbidden");
                return conn.push_error(
                    Some(id),
                    "forbidden",
                    "the ticket does not cover this key",
                );
            }
            if conn.pending_gets.borrow().len() >= cfg.max_pending_gets {
                worker.stats.request("get", "rate_limited");
                return conn.push_error(Some(id), "rate_limited", "too many gets in flight");
            }
            conn.pending_gets.borrow_mut().push_back((id, key));
            if !conn.get_task.replace(true) {
                monoio::spawn(serve_gets(worker.me(), conn.clone()));
            }
        }
        Request::Subscribe { id, stream, from } => {
            if !conn.ticket.borrow().covers_stream(&stream) {
                worker.stats.request("subscribe", "forbidden");
                return conn.push_error(
                    Some(id),
                    "forbidden",
                    "the ticket does not cover this stream",
                );
            }
            if conn.subs.borrow().contains_key(stream.as_str()) {
                worker.stats.request("subscribe", "bad_request");
                return conn.push_error(
                    Some(id),
                    "bad_request",
                    "already subscribed to this stream",
                );
            }
            if conn.subs.borrow().len() >= cfg.max_subscriptions {
                worker.stats.request("subscribe", "too_many_subscriptions");
                return conn.push_error(
                    Some(id),
                    "too_many_subscriptions",
                    "this connection follows the most streams it may",
                );
            }
            worker.stats.request("subscribe", "ok");
            let sub_id = conn.next_sub_id.get();
            conn.next_sub_id.set(sub_id.wrapping_add(1).max(1));
            let stream_arc = worker.shared.hub.subscribe(&stream, worker.index);
            let sub = Rc::new(Sub {
                id: sub_id,
                stream: stream_arc,
                conn: Rc::downgrade(conn),
                next_seq: Cell::new(0),
                live: Cell::new(false),
                active: Cell::new(true),
            });
            conn.subs
                .borrow_mut()
                .insert(sub.stream.name.clone(), sub.clone());
            worker.add_sub(sub.clone());
            monoio::spawn(catch_up(worker.me(), conn.clone(), sub, id, from));
        }
        Request::Unsubscribe { id, stream } => {
            worker.stats.request("unsubscribe", "ok");
            let sub = conn.subs.borrow_mut().remove(stream.as_str());
            if let Some(sub) = sub {
                worker.remove_sub(&sub);
                conn.queue.borrow_mut().remove_sub(sub.id);
            }
            conn.push_reply(&Reply::Unsubscribed {
                id,
                stream: &stream,
            });
        }
    }
}

/// Wait until a frame of `len` bytes fits in the queue (or the connection closes).
async fn wait_room(conn: &Conn, len: usize) -> bool {
    loop {
        if conn.closed.get() || conn.close_req.get().is_some() {
            return false;
        }
        if conn.queue.borrow().has_room_for(len) {
            return true;
        }
        conn.room.wait().await;
    }
}

/// Answer the connection's `get`s in order; exits when none are left.
async fn serve_gets(worker: Rc<Worker>, conn: Rc<Conn>) {
    loop {
        let next = conn.pending_gets.borrow_mut().pop_front();
        let Some((id, key)) = next else { break };
        if conn.closed.get() {
            break;
        }
        match worker.shared.cache.get(&key).await {
            Ok(obj) => {
                let meta = GetMeta {
                    id,
                    key: &key,
                    size: obj.size(),
                    content_type: obj.content_type.as_deref(),
                    generation: obj.generation,
                };
                let prefix = frame::media_prefix(&obj, &meta_json(&meta));
                if !wait_room(&conn, prefix.len() + obj.size()).await {
                    break;
                }
                conn.queue.borrow_mut().push_keep(prefix, obj.payload());
                conn.wake.notify();
                worker.stats.request("get", "ok");
            }
            Err(e) => {
                worker.stats.request("get", e.code());
                conn.push_error(Some(id), e.code(), &e.to_string());
            }
        }
    }
    conn.get_task.set(false);
    if conn.draining.get() {
        conn.request_close(CloseReq {
            code: close::GOING_AWAY,
            reason: Some("shutting_down"),
        });
    }
}

/// Start a subscription: wait for the stream's first listing, answer `subscribed`, send
/// the init segment, then send every segment from the start point until caught up with
/// what the stream has published, after which the worker's inbox delivers new ones.
async fn catch_up(worker: Rc<Worker>, conn: Rc<Conn>, sub: Rc<Sub>, id: u32, from: protocol::From) {
    sub.stream.ready().await;
    if !sub.active.get() {
        return;
    }
    let start = sub.stream.start(from);
    sub.next_seq.set(start.seq);
    conn.push_reply(&Reply::Subscribed {
        id,
        stream: &sub.stream.name,
        seq: start.seq,
    });
    if let Some(init) = &start.init {
        conn.push_segment(&sub, init, &worker);
    }
    loop {
        if !sub.active.get() || conn.closed.get() {
            return;
        }
        let seg = match sub.stream.next_at(sub.next_seq.get()) {
            None => {
                // Caught up: from here on the inbox pushes each new segment.
                sub.live.set(true);
                return;
            }
            Some(Ok(seg)) => seg,
            Some(Err((seq, key))) => match worker.shared.cache.get(&key).await {
                Ok(obj) => Seg::build(&sub.stream.name, seq, &obj),
                Err(_) => {
                    // Deleted or unreadable: move past it.
                    sub.next_seq.set(seq + 1);
                    continue;
                }
            },
        };
        // Catching up is paced by the client (no drops): wait for room first.
        if !wait_room(&conn, seg.len()).await || !sub.active.get() {
            return;
        }
        if seg.seq >= sub.next_seq.get() {
            conn.push_segment(&sub, &seg, &worker);
            sub.next_seq.set(seg.seq + 1);
        }
    }
}
