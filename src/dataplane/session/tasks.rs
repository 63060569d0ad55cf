//! The short-lived tasks of a connection: answering its `get`s in order (with the requests
//! that came behind them), and catching a new subscription up from its start point to the live edge. Both wait for room in the
//! send queue (a client that reads slowly paces them; nothing is dropped) and end when
//! their work is done or the connection closes.

use std::rc::Rc;
use std::sync::Arc;

use super::{ops, CloseReq, Conn, Context, Sub, Waiting};
use crate::fanout::stream::frame_prefix;
use crate::fanout::{Seg, Viewer};
use crate::origin::cache::Cache;
use crate::protocol::{meta_json, From, GetMeta, Op, Reason, Reply};

fn count_skip<C: Context>(ctx: &C, skipped: bool) {
    if skipped {
        ctx.stats().skipped.inc();
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

/// Answer the connection's `get`s in order, and run the requests that came behind them in
/// their turn; exits when none are left.
pub async fn serve_gets<C: Context>(ctx: Rc<C>, cache: Arc<Cache>, conn: Rc<Conn>) {
    while let Some(next) = conn.next_request() {
        if conn.closed.get() {
            break;
        }
        let (id, key) = match next {
            Waiting::Get(id, key) => (id, key),
            Waiting::Later(request) => {
                ops::waited(&*ctx, &conn, request);
                continue;
            }
        };
        match cache.get(&key).await {
            Ok(obj) => {
                let meta = GetMeta {
                    id,
                    key: &key,
                    size: obj.size(),
                    content_type: obj.content_type.as_deref(),
                    generation: obj.generation,
                };
                let prefix = frame_prefix(&obj, &meta_json(&meta));
                if !wait_room(&conn, prefix.len() + obj.size()).await {
                    break;
                }
                conn.queue.borrow_mut().push_keep(prefix, obj.body());
                conn.wake.notify();
                ctx.stats().request(Op::Get, Ok(()));
            }
            Err(e) => {
                ctx.stats().request(Op::Get, Err(e.code()));
                conn.push_error(Some(id), e.code(), &e.to_string());
            }
        }
        conn.get_answered();
    }
    conn.get_task.set(false);
    if conn.draining.get() {
        conn.request_close(CloseReq::because(Reason::ShuttingDown));
    }
}

/// Start a subscription: wait for the stream's first listing, answer `subscribed`, send
/// the init segment, then send every segment from the start point until caught up with
/// what the stream has published, after which the worker's inbox delivers new ones.
pub async fn catch_up<C: Context>(
    ctx: Rc<C>,
    cache: Arc<Cache>,
    conn: Rc<Conn>,
    sub: Rc<Sub>,
    id: u32,
    from: From,
) {
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
        sub.init_queued(init);
        count_skip(&*ctx, conn.push_segment(&sub, init));
    }
    loop {
        if !sub.active.get() || conn.closed.get() {
            return;
        }
        let seg = match sub.stream.next_at(sub.next_seq.get()) {
            None => {
                // Caught up: from here on the inbox pushes each new segment (and each new
                // init; one that came while catching up goes first).
                if let Some(init) = init_due(&sub, sub.next_seq.get()) {
                    queue_init(&*ctx, &conn, &sub, &init);
                }
                sub.live.set(true);
                return;
            }
            Some(Ok(seg)) => seg,
            Some(Err((seq, key))) => match cache.get(&key).await {
                Ok(obj) => Seg::build_at(&sub.stream.name, seq, &obj, sub.stream.stamp(seq)),
                Err(_) => {
                    // Deleted or unreadable: move past it.
                    sub.next_seq.set(seq + 1);
                    continue;
                }
            },
        };
        // Catching up is paced by the client (no drops): wait for room first, for an init
        // that goes before the segment too.
        // (An init replaced again meanwhile goes before the next segment.)
        let init = init_due(&sub, seg.seq);
        let init_len = init.as_ref().map_or(0, |init| init.len());
        if !wait_room(&conn, seg.len() + init_len).await || !sub.active.get() {
            return;
        }
        if seg.seq >= sub.next_seq.get() {
            if let Some(init) = &init {
                queue_init(&*ctx, &conn, &sub, init);
            }
            count_skip(&*ctx, conn.push_segment(&sub, &seg));
            sub.next_seq.set(seg.seq + 1);
        }
    }
}

/// The init segment to queue before media segment `seq` of a subscriber catching up: the
/// stream's current one, if the subscriber does not have it, and either has none yet or
/// reached the segments published after the init was replaced (older ones go with the
/// init they followed).
fn init_due(sub: &Sub, seq: u64) -> Option<Seg> {
    let (init, since) = sub.stream.init()?;
    if sub.has_init(&init) {
        return None;
    }
    (!sub.has_any_init() || seq >= since).then_some(init)
}

fn queue_init<C: Context>(ctx: &C, conn: &Conn, sub: &Sub, init: &Seg) {
    if sub.init_queued(init) {
        count_skip(ctx, conn.push_segment(sub, init));
    }
}
