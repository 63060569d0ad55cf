//! The ops of docs/protocol.md: what one complete text message does. Each request is
//! checked (ticket scope, limits, draining) and answered here; the mechanics (subscribing
//! on the worker, starting tasks) go through the [`Context`], so every op's replies and
//! errors are unit-tested below without a socket.

use std::rc::Rc;
use std::time::Instant;

use bytes::BytesMut;

use super::{CloseReq, Conn, Context};
use crate::config::Config;
use crate::protocol::{self, CloseCode, ErrorCode, Op, Reply, Request, RequestError};

/// Act on one complete text message.
pub(super) fn message<C: Context>(ctx: &C, conn: &Rc<Conn>, mut payload: BytesMut) {
    let request = protocol::parse(&mut payload);
    let (op, id) = op_and_id(&request);
    let config = ctx.config();
    let per_sec = config.connection.max_requests_per_sec;
    if let Err(flooding) = conn.note_request(per_sec, Instant::now()) {
        ctx.stats().request(op, Err(ErrorCode::RateLimited));
        if flooding {
            return conn.request_close(CloseReq::code(CloseCode::Policy));
        }
        return conn.push_error(id, ErrorCode::RateLimited, "too many requests per second");
    }
    // A `get` waiting for room holds the requests behind it (PROTOCOL.md, slow consumers):
    // they run in their turn, from the `get` task, as many as `get`s may wait. (More `get`s
    // join the same queue; a message that is not a request is answered at once.)
    if matches!(op, Op::Subscribe | Op::Unsubscribe | Op::Refresh) && conn.requests_waiting() {
        if conn.held_requests() >= config.connection.max_pending_gets {
            ctx.stats().request(op, Err(ErrorCode::RateLimited));
            return conn.push_error(
                id,
                ErrorCode::RateLimited,
                "too many requests waiting behind a get",
            );
        }
        return conn.push_later(request);
    }
    run(ctx, conn, op, id, request);
}

/// Run a request that waited behind `get`s, now that its turn has come.
pub(super) fn waited<C: Context>(ctx: &C, conn: &Rc<Conn>, request: Request) {
    let (op, id) = op_and_id(&request);
    run(ctx, conn, op, id, request);
}

fn op_and_id(request: &Request) -> (Op, Option<u32>) {
    match request {
        Request::Get { id, .. } => (Op::Get, Some(*id)),
        Request::Subscribe { id, .. } => (Op::Subscribe, Some(*id)),
        Request::Unsubscribe { id, .. } => (Op::Unsubscribe, Some(*id)),
        Request::Refresh { id, .. } => (Op::Refresh, Some(*id)),
        Request::Bad { id, .. } => (Op::Bad, *id),
    }
}

/// Run one request and count it; an error is answered with an `error` reply. A draining
/// relay takes no new request.
fn run<C: Context>(ctx: &C, conn: &Rc<Conn>, op: Op, id: Option<u32>, request: Request) {
    if conn.draining.get() {
        let e = RequestError::new(ErrorCode::Unavailable, "the relay is shutting down");
        return conn.push_error(id, e.code, &e.message);
    }
    let config = ctx.config();
    let result = handle(ctx, conn, &config, request);
    // A queued `get` or a `refresh` under way is counted when it is answered (by its
    // task), not here.
    if !(matches!(op, Op::Get | Op::Refresh) && result.is_ok()) {
        ctx.stats()
            .request(op, result.as_ref().map(|_| ()).map_err(|e| e.code));
    }
    if let Err(e) = result {
        conn.push_error(id, e.code, &e.message);
    }
}

/// Run one request; `Err` is answered with an `error` reply.
fn handle<C: Context>(
    ctx: &C,
    conn: &Rc<Conn>,
    config: &Config,
    request: Request,
) -> Result<(), RequestError> {
    let limits = &config.connection;
    match request {
        Request::Bad { message, .. } => Err(RequestError::new(ErrorCode::BadRequest, message)),
        Request::Get { id, key } => {
            if !conn.ticket.borrow().covers_key(&key) {
                return Err(RequestError::new(
                    ErrorCode::Forbidden,
                    "the ticket does not cover this key",
                ));
            }
            if conn.pending_gets() >= limits.max_pending_gets {
                return Err(RequestError::new(
                    ErrorCode::RateLimited,
                    "too many gets in flight",
                ));
            }
            conn.push_get(id, key);
            if !conn.claim_get_task() {
                ctx.start_gets(conn);
            }
            Ok(())
        }
        Request::Subscribe { id, stream, from } => {
            if !conn.ticket.borrow().covers_stream(&stream) {
                return Err(RequestError::new(
                    ErrorCode::Forbidden,
                    "the ticket does not cover this stream",
                ));
            }
            if ctx.is_subscribed(conn, &stream) {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    "already subscribed to this stream",
                ));
            }
            if ctx.subscription_count(conn) >= limits.max_subscriptions {
                return Err(RequestError::new(
                    ErrorCode::TooManySubscriptions,
                    "this connection follows the most streams it may",
                ));
            }
            if !conn.note_stream(&stream, limits.max_streams_per_minute, Instant::now()) {
                ctx.stats().stream_rate_refusals.inc();
                return Err(RequestError::new(
                    ErrorCode::RateLimited,
                    "too many different streams in a minute",
                ));
            }
            ctx.subscribe(conn, id, &stream, from)?;
            conn.bound_unsent(limits.socket_unsent);
            Ok(())
        }
        Request::Refresh { id, ticket } => {
            ctx.refresh(conn, id, ticket);
            Ok(())
        }
        Request::Unsubscribe { id, stream } => {
            ctx.unsubscribe(conn, &stream);
            conn.push_reply(&Reply::Unsubscribed {
                id,
                stream: &stream,
            });
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{RefCell, RefMut};
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use super::*;
    use crate::config::Config;
    use crate::metrics::WorkerStats;
    use crate::protocol::From;
    use crate::sys::MAX_IOV;
    use crate::tickets::TicketRecord;
    use crate::ws::frame::Parser;

    /// A worker that records what the ops asked of it.
    #[derive(Default)]
    struct Recorder {
        config: Arc<Config>,
        stats: WorkerStats,
        scratch: RefCell<Vec<u8>>,
        parser: RefCell<Parser>,
        subs: RefCell<Vec<(u64, String, u32, From)>>,
        unsubscribed: RefCell<Vec<String>>,
        gets_started: RefCell<u32>,
        refreshes: RefCell<Vec<(u32, String)>>,
    }

    impl Context for Recorder {
        fn config(&self) -> Arc<Config> {
            self.config.clone()
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
            self.subs
                .borrow()
                .iter()
                .any(|(c, s, ..)| *c == conn.id && s == stream)
        }
        fn subscription_count(&self, conn: &Conn) -> usize {
            self.subs.borrow().iter().filter(|s| s.0 == conn.id).count()
        }
        fn subscribe(
            &self,
            conn: &Rc<Conn>,
            id: u32,
            stream: &str,
            from: From,
        ) -> Result<(), RequestError> {
            self.subs
                .borrow_mut()
                .push((conn.id, stream.to_string(), id, from));
            Ok(())
        }
        fn unsubscribe(&self, conn: &Conn, stream: &str) {
            self.subs
                .borrow_mut()
                .retain(|(c, s, ..)| !(*c == conn.id && s == stream));
            self.unsubscribed.borrow_mut().push(stream.to_string());
        }
        fn start_gets(&self, _conn: &Rc<Conn>) {
            *self.gets_started.borrow_mut() += 1;
        }
        fn refresh(&self, _conn: &Rc<Conn>, id: u32, ticket: String) {
            self.refreshes.borrow_mut().push((id, ticket));
        }
        fn closed(&self, _conn: &Conn) {}
        fn spawn(&self, _: impl std::future::Future<Output = ()> + 'static) {}
    }

    fn conn(streams: &[&str]) -> Rc<Conn> {
        let now = SystemTime::now();
        let record = TicketRecord {
            uid: "u".into(),
            streams: streams.iter().map(|s| s.to_string()).collect(),
            expires_at: now + Duration::from_secs(60),
            revoked: false,
            max_connections: None,
            publish: Vec::new(),
            updated_at: now,
        };
        Rc::new(Conn::new(
            1,
            [0; 32],
            Arc::new(record),
            1 << 20,
            std::time::Duration::ZERO,
        ))
    }

    /// Send `text`; return the JSON replies queued.
    fn send(ctx: &Recorder, conn: &Rc<Conn>, text: &str) -> Vec<serde_json::Value> {
        message(ctx, conn, BytesMut::from(text.as_bytes()));
        written(conn)
    }

    /// The text frames queued on `conn`, taken off its queue.
    fn written(conn: &Rc<Conn>) -> Vec<serde_json::Value> {
        let mut q = conn.queue.borrow_mut();
        let mut wire = Vec::new();
        while !q.is_empty() {
            let mut parts: [&[u8]; MAX_IOV] = [&[]; MAX_IOV];
            let (n, _) = q.gather(&mut parts, false);
            let len: usize = parts[..n].iter().map(|p| p.len()).sum();
            for p in &parts[..n] {
                wire.extend_from_slice(p);
            }
            q.advance(len, Instant::now());
        }
        text_frames(&wire)
    }

    /// The JSON of each (unmasked, unfragmented) text frame the relay wrote.
    fn text_frames(mut wire: &[u8]) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        while !wire.is_empty() {
            assert_eq!(wire[0], 0x81, "a text frame");
            let (head, len) = match wire[1] {
                126 => (4, u16::from_be_bytes([wire[2], wire[3]]) as usize),
                127 => (
                    10,
                    u64::from_be_bytes(wire[2..10].try_into().unwrap()) as usize,
                ),
                n => (2, n as usize),
            };
            out.push(serde_json::from_slice(&wire[head..head + len]).unwrap());
            wire = &wire[head + len..];
        }
        out
    }

    fn error_code(replies: &[serde_json::Value]) -> Option<&str> {
        replies.iter().find(|r| r["op"] == "error")?["code"].as_str()
    }

    #[test]
    fn get_is_queued_and_starts_one_task() {
        let ctx = Recorder::default();
        let c = conn(&["vod/*"]);
        assert!(send(&ctx, &c, r#"{"op":"get","id":1,"key":"vod/a"}"#).is_empty());
        assert!(send(&ctx, &c, r#"{"op":"get","id":2,"key":"vod/b"}"#).is_empty());
        assert_eq!(c.pending_gets(), 2);
        assert_eq!(*ctx.gets_started.borrow(), 1);
        // Counted when answered, by the task: not yet.
        assert_eq!(ctx.stats.requests(Op::Get, Ok(())), 0);
    }

    #[test]
    fn only_a_subscription_bounds_the_kernels_unsent_bytes() {
        use super::super::UnsentBound;
        let ctx = Recorder::default();
        let c = conn(&["vod/*", "live/*"]);
        assert!(send(&ctx, &c, r#"{"op":"get","id":1,"key":"vod/a"}"#).is_empty());
        assert_eq!(c.unsent_bound(), UnsentBound::Kernel);
        c.get_answered();
        // A refused subscription bounds nothing.
        let r = send(&ctx, &c, r#"{"op":"subscribe","id":2,"stream":"other/a"}"#);
        assert_eq!(error_code(&r), Some("forbidden"));
        assert_eq!(c.unsent_bound(), UnsentBound::Kernel);
        assert!(send(&ctx, &c, r#"{"op":"subscribe","id":3,"stream":"live/a"}"#).is_empty());
        let limit = ctx.config.connection.socket_unsent;
        assert_eq!(c.unsent_bound(), UnsentBound::Wanted(limit as u32));

        // With the setting at 0 a subscriber keeps the kernel's default.
        let mut config = Config::default();
        config.connection.socket_unsent = 0;
        let ctx = Recorder {
            config: Arc::new(config),
            ..Recorder::default()
        };
        let c = conn(&["live/*"]);
        assert!(send(&ctx, &c, r#"{"op":"subscribe","id":1,"stream":"live/a"}"#).is_empty());
        assert_eq!(c.unsent_bound(), UnsentBound::Kernel);
    }

    #[test]
    fn get_outside_the_ticket_is_forbidden() {
        let ctx = Recorder::default();
        let c = conn(&["live/a"]);
        let r = send(&ctx, &c, r#"{"op":"get","id":7,"key":"vod/x"}"#);
        assert_eq!(error_code(&r), Some("forbidden"));
        assert_eq!(r[0]["id"], 7);
        assert_eq!(c.pending_gets(), 0);
        assert_eq!(ctx.stats.requests(Op::Get, Err(ErrorCode::Forbidden)), 1);
    }

    #[test]
    fn too_many_gets_are_rate_limited() {
        let ctx = Recorder::default();
        let c = conn(&["*"]);
        let max = ctx.config.connection.max_pending_gets;
        for i in 0..max {
            let r = send(&ctx, &c, &format!(r#"{{"op":"get","id":{i},"key":"k"}}"#));
            assert!(r.is_empty());
        }
        let r = send(&ctx, &c, r#"{"op":"get","id":999,"key":"k"}"#);
        assert_eq!(error_code(&r), Some("rate_limited"));
        // The get being answered (it may wait for room) still counts until it is answered.
        let get_id = |next: Option<super::super::Waiting>| match next {
            Some(super::super::Waiting::Get(id, _)) => Some(id),
            _ => None,
        };
        assert_eq!(get_id(c.next_request()), Some(0));
        let r = send(&ctx, &c, r#"{"op":"get","id":1000,"key":"k"}"#);
        assert_eq!(error_code(&r), Some("rate_limited"));
        c.get_answered();
        assert!(send(&ctx, &c, r#"{"op":"get","id":1001,"key":"k"}"#).is_empty());
        assert_eq!(get_id(c.next_request()), Some(1));
    }

    #[test]
    fn subscribe_checks_scope_duplicates_and_limit() {
        let ctx = Recorder::default();
        let c = conn(&["live/*"]);
        let r = send(&ctx, &c, r#"{"op":"subscribe","id":1,"stream":"other/a"}"#);
        assert_eq!(error_code(&r), Some("forbidden"));
        assert!(send(
            &ctx,
            &c,
            r#"{"op":"subscribe","id":2,"stream":"live/a","from":"start"}"#
        )
        .is_empty());
        assert_eq!(ctx.subs.borrow()[0].3, From::Start);
        let r = send(&ctx, &c, r#"{"op":"subscribe","id":3,"stream":"live/a"}"#);
        assert_eq!(error_code(&r), Some("bad_request"));
        let max = ctx.config.connection.max_subscriptions;
        for i in 1..max {
            let r = send(
                &ctx,
                &c,
                &format!(
                    r#"{{"op":"subscribe","id":{},"stream":"live/s{i}"}}"#,
                    10 + i
                ),
            );
            assert!(r.is_empty(), "{r:?}");
        }
        let r = send(
            &ctx,
            &c,
            r#"{"op":"subscribe","id":99,"stream":"live/last"}"#,
        );
        assert_eq!(error_code(&r), Some("too_many_subscriptions"));
        assert_eq!(r[0]["id"], 99);
    }

    #[test]
    fn new_stream_names_per_minute_are_limited() {
        let mut ctx = Recorder::default();
        let mut config = Config::default();
        config.connection.max_streams_per_minute = 3;
        ctx.config = Arc::new(config);
        let c = conn(&["*"]);
        for i in 0..3 {
            let r = send(
                &ctx,
                &c,
                &format!(r#"{{"op":"subscribe","id":{i},"stream":"live/{i}"}}"#),
            );
            assert!(r.is_empty(), "{r:?}");
            send(
                &ctx,
                &c,
                &format!(r#"{{"op":"unsubscribe","id":9,"stream":"live/{i}"}}"#),
            );
        }
        // A stream seen this minute again is fine; a fourth new one is not.
        let r = send(&ctx, &c, r#"{"op":"subscribe","id":20,"stream":"live/1"}"#);
        assert!(r.is_empty(), "{r:?}");
        let r = send(
            &ctx,
            &c,
            r#"{"op":"subscribe","id":21,"stream":"live/new"}"#,
        );
        assert_eq!(error_code(&r), Some("rate_limited"));
        assert_eq!(r[0]["id"], 21);
        assert_eq!(ctx.stats.stream_rate_refusals.get(), 1);
    }

    #[test]
    fn unsubscribe_always_answers() {
        let ctx = Recorder::default();
        let c = conn(&["*"]);
        send(&ctx, &c, r#"{"op":"subscribe","id":1,"stream":"live/a"}"#);
        let r = send(&ctx, &c, r#"{"op":"unsubscribe","id":2,"stream":"live/a"}"#);
        assert_eq!(r[0]["op"], "unsubscribed");
        assert_eq!(r[0]["id"], 2);
        assert_eq!(ctx.subscription_count(&c), 0);
        // Not subscribed: still answered.
        let r = send(&ctx, &c, r#"{"op":"unsubscribe","id":3,"stream":"live/b"}"#);
        assert_eq!(r[0]["op"], "unsubscribed");
    }

    #[test]
    fn bad_messages_keep_the_connection_and_the_id() {
        let ctx = Recorder::default();
        let c = conn(&["*"]);
        let r = send(&ctx, &c, r#"{"op":"fly","id":5}"#);
        assert_eq!(error_code(&r), Some("bad_request"));
        assert_eq!(r[0]["id"], 5);
        let r = send(&ctx, &c, "not json");
        assert_eq!(error_code(&r), Some("bad_request"));
        assert!(r[0].get("id").is_none());
        assert!(!c.is_closing());
    }

    #[test]
    fn refresh_is_handed_to_the_worker() {
        let ctx = Recorder::default();
        let c = conn(&["*"]);
        let r = send(&ctx, &c, r#"{"op":"refresh","id":6,"ticket":"new"}"#);
        assert!(r.is_empty(), "answered by the refresh task: {r:?}");
        assert_eq!(*ctx.refreshes.borrow(), vec![(6, "new".to_string())]);
        let r = send(&ctx, &c, r#"{"op":"refresh","id":7}"#);
        assert_eq!(error_code(&r), Some("bad_request"));
    }

    #[test]
    fn request_floods_are_refused_then_closed() {
        let mut ctx = Recorder::default();
        let mut config = Config::default();
        config.connection.max_requests_per_sec = 2;
        ctx.config = Arc::new(config);
        let c = conn(&["*"]);
        for i in 0..2 {
            let r = send(
                &ctx,
                &c,
                &format!(r#"{{"op":"unsubscribe","id":{i},"stream":"s"}}"#),
            );
            assert_eq!(r[0]["op"], "unsubscribed");
        }
        let r = send(&ctx, &c, r#"{"op":"unsubscribe","id":9,"stream":"s"}"#);
        assert_eq!(error_code(&r), Some("rate_limited"));
        assert_eq!(r[0]["id"], 9);
        assert!(!c.is_closing());
        for _ in 0..5 {
            send(&ctx, &c, r#"{"op":"unsubscribe","id":9,"stream":"s"}"#);
        }
        assert_eq!(c.close_req.get(), Some(CloseReq::code(CloseCode::Policy)));
    }

    #[test]
    fn requests_behind_a_waiting_get_wait_their_turn() {
        use super::super::Waiting;
        let ctx = Recorder::default();
        let c = conn(&["*"]);
        // Nothing waits: answered at once.
        let r = send(&ctx, &c, r#"{"op":"unsubscribe","id":1,"stream":"s"}"#);
        assert_eq!(r[0]["op"], "unsubscribed");
        assert!(send(&ctx, &c, r#"{"op":"get","id":2,"key":"k"}"#).is_empty());
        // Behind the get: no reply yet, nor for a get after it.
        assert!(send(&ctx, &c, r#"{"op":"unsubscribe","id":3,"stream":"s"}"#).is_empty());
        assert!(send(&ctx, &c, r#"{"op":"subscribe","id":4,"stream":"live/a"}"#).is_empty());
        assert!(send(&ctx, &c, r#"{"op":"get","id":5,"key":"k"}"#).is_empty());
        assert!(ctx.subs.borrow().is_empty());
        assert_eq!(c.pending_gets(), 2);
        // The get task's turns, in order.
        let mut order = Vec::new();
        while let Some(next) = c.next_request() {
            match next {
                Waiting::Get(id, _) => {
                    order.push(id);
                    c.get_answered();
                }
                Waiting::Later(request) => {
                    let id = op_and_id(&request).1.unwrap();
                    waited(&ctx, &c, request);
                    // Its own reply, if it has one here (`subscribed` comes from the
                    // subscription's task).
                    for reply in written(&c) {
                        assert_eq!(reply["id"], id);
                    }
                    order.push(id);
                }
            }
        }
        assert_eq!(order, [2, 3, 4, 5]);
        assert_eq!(ctx.subs.borrow().len(), 1);
        assert_eq!(c.pending_gets(), 0);
        // The queue is empty again: answered at once.
        let r = send(&ctx, &c, r#"{"op":"unsubscribe","id":6,"stream":"s"}"#);
        assert_eq!(r[0]["id"], 6);
        // As many requests as gets may wait behind a get; the next is refused at once.
        assert!(send(&ctx, &c, r#"{"op":"get","id":7,"key":"k"}"#).is_empty());
        for i in 0..ctx.config.connection.max_pending_gets {
            let msg = format!(r#"{{"op":"unsubscribe","id":{},"stream":"s"}}"#, 100 + i);
            assert!(send(&ctx, &c, &msg).is_empty());
        }
        let r = send(&ctx, &c, r#"{"op":"unsubscribe","id":99,"stream":"s"}"#);
        assert_eq!(
            (error_code(&r), r[0]["id"].as_u64()),
            (Some("rate_limited"), Some(99))
        );
    }

    #[test]
    fn draining_answers_unavailable() {
        let ctx = Recorder::default();
        let c = conn(&["*"]);
        c.draining.set(true);
        let r = send(&ctx, &c, r#"{"op":"subscribe","id":4,"stream":"live/a"}"#);
        assert_eq!(error_code(&r), Some("unavailable"));
        assert!(ctx.subs.borrow().is_empty());
    }
}
