//! A connection's bounded send queue and the slow-consumer policy of PROTOCOL.md.
//!
//! Queued frames are references to shared buffers, never copies: a live segment is one
//! pointer to the frame every viewer shares ([`Seg`]), so a thousand stalled subscribers of
//! one stream hold the same segment buffers and 48 bytes each per queued segment. Pure
//! data structure; the connection task drains it with `writev`, and with `sendfile` for
//! payloads that sit in a payload file ([`SendQueue::front_file`]).
//!
//! Policy, in bytes against `limit`:
//! - a live segment that would overflow the queue first drops that stream's oldest queued
//!   segments (never a partially written frame, never an init segment), and a `skipped`
//!   message takes the place of the first dropped one (a `skipped` of that stream still
//!   unsent, with no segment of the stream after it, is extended instead: a viewer that
//!   reads nothing holds one such message, not one per drop);
//! - `get` replies and control messages are never dropped (`get` waits for room before it
//!   is queued, see [`SendQueue::has_room_for`]);
//! - in time: a live segment pushed while that stream's oldest queued segment has waited
//!   longer than `max_lag` drops every queued segment of the stream not yet started (the
//!   viewer jumps to the newest, behind `skipped`), so a slow viewer stays near the live edge
//!   instead of a full queue behind it (segments queued together, as when discovery finds
//!   two at once, are never dropped for each other);
//! - the queue is *over its limit* from the moment a push finds it full until writing brings
//!   it down to half the limit. A connection that is over its limit and whose socket has
//!   taken neither a whole frame nor [`PROGRESS_BYTES`] for the stall timeout is *stalled*
//!   and closed with 4408 ([`SendQueue::stall_deadline`]); a slow reader that keeps reading
//!   is never closed, it only gets `skipped`, while one that takes a few bytes now and then
//!   to stay open is closed like one that takes none.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use std::os::fd::RawFd;

use bytes::Bytes;

use crate::fanout::stream::Seg;
use crate::origin::files::Body;
use crate::sys::MAX_IOV;

/// Bytes taken by the socket that count as progress for the stall clock even when no frame
/// completes (a large `get` reply to a slow reader).
pub const PROGRESS_BYTES: usize = 64 << 10;

/// What a queued frame is, for the drop policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Text frames and `get` replies: never dropped.
    Keep,
    /// A live segment of the subscription `sub` (0 is the init segment, never dropped).
    Segment { sub: u32, seq: u64 },
    /// The `skipped` message of subscription `sub` for segments from `from` on: never
    /// dropped; while unsent, a later drop of that subscription's next segments extends it
    /// instead of queueing another message.
    Skipped { sub: u32, from: u64 },
}

/// One queued frame: 48 bytes whatever it carries.
struct Out {
    data: Data,
    kind: Kind,
    /// When it was queued (live segments: for the lag bound).
    queued: Instant,
}

/// A queued frame's bytes.
enum Data {
    /// A live segment: one pointer to the frame every viewer shares.
    Seg(Seg),
    /// A reply or message of this connection: its head and payload (a `get` reply's
    /// payload is the cached object's shared buffer).
    Own(Box<(Bytes, Body)>),
}

impl Out {
    fn own(prefix: Bytes, body: Body, kind: Kind) -> Out {
        Out {
            data: Data::Own(Box::new((prefix, body))),
            kind,
            queued: Instant::now(),
        }
    }

    fn prefix(&self) -> &Bytes {
        match &self.data {
            Data::Seg(seg) => &seg.prefix,
            Data::Own(own) => &own.0,
        }
    }

    fn body(&self) -> &Body {
        match &self.data {
            Data::Seg(seg) => &seg.payload,
            Data::Own(own) => &own.1,
        }
    }

    fn len(&self) -> usize {
        self.prefix().len() + self.body().len()
    }
}

/// The queue.
pub struct SendQueue {
    frames: VecDeque<Out>,
    bytes: usize,
    /// Bytes of the front frame already written.
    front_written: usize,
    limit: usize,
    /// Longest a live segment may wait before newer ones replace it (zero: no bound).
    max_lag: Duration,
    over_since: Option<Instant>,
    /// Last time the socket took a whole frame or [`PROGRESS_BYTES`].
    last_progress: Option<Instant>,
    /// Bytes the socket took since `last_progress` (less than [`PROGRESS_BYTES`]).
    taken: usize,
}

impl SendQueue {
    /// A queue bounded at `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self::with_max_lag(limit, Duration::ZERO)
    }

    /// A queue bounded at `limit` bytes and, for live segments, `max_lag` behind the live
    /// edge (zero: no time bound).
    pub fn with_max_lag(limit: usize, max_lag: Duration) -> Self {
        SendQueue {
            frames: VecDeque::new(),
            bytes: 0,
            front_written: 0,
            limit,
            max_lag,
            over_since: None,
            last_progress: None,
            taken: 0,
        }
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes queued and not yet written.
    pub fn bytes(&self) -> usize {
        self.bytes - self.front_written
    }

    /// Frames queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether a frame of `len` bytes fits now (an empty queue always takes one frame,
    /// so an object larger than the limit is still sent, alone).
    pub fn has_room_for(&self, len: usize) -> bool {
        self.frames.is_empty() || self.bytes() + len <= self.limit
    }

    fn push(&mut self, out: Out) {
        self.bytes += out.len();
        self.frames.push_back(out);
    }

    /// Queue a control message or `get` reply (never dropped).
    pub fn push_keep(&mut self, prefix: Bytes, body: impl Into<Body>) {
        self.push(Out::own(prefix, body.into(), Kind::Keep));
    }

    /// Queue live segment `seg` of subscription `sub`, applying the drop policy. When
    /// segments are dropped for it, `skipped(from, to)` makes the `skipped` frame for them,
    /// which goes where the first dropped segment was (or extends that subscription's
    /// `skipped` still waiting to be sent). Returns whether a `skipped` message was queued
    /// (not when one already queued was extended).
    pub fn push_segment(
        &mut self,
        sub: u32,
        seg: Seg,
        now: Instant,
        skipped: impl FnOnce(u64, u64) -> Bytes,
    ) -> bool {
        let len = seg.len();
        // Index 0 may be partially written: never drop it.
        let first = usize::from(self.front_written > 0);
        let behind =
            |o: &Out| matches!(o.kind, Kind::Segment { sub: s, seq: q } if s == sub && q != 0);
        let too_late = !self.max_lag.is_zero()
            && self
                .frames
                .iter()
                .skip(first)
                .find(|o| behind(o))
                .is_some_and(|o| now.saturating_duration_since(o.queued) > self.max_lag);
        // Jump to the newest: every unstarted segment of this stream goes. Otherwise (or
        // then: nothing of the stream is left to drop) only what makes room.
        let mut dropped = None;
        if too_late {
            dropped = self.drop_oldest_of(sub, |_| false);
        }
        if !self.has_room_for(len) {
            self.over_since.get_or_insert(now);
            dropped = dropped.or(self.drop_oldest_of(sub, |q| q.bytes() + len <= q.limit));
        }
        let seq = seg.seq;
        self.push(Out {
            data: Data::Seg(seg),
            kind: Kind::Segment { sub, seq },
            queued: now,
        });
        if self.bytes() > self.limit {
            self.over_since.get_or_insert(now);
        }
        match dropped {
            Some((from, to, at)) => {
                self.place_skipped(sub, from, to, at, |from, to| Some(skipped(from, to)))
            }
            None => false,
        }
    }

    /// Drop the unstarted segments of `sub` (never its init, never a partially written
    /// frame), oldest first, until `enough`; returns the range dropped and the position of
    /// the first one.
    fn drop_oldest_of(
        &mut self,
        sub: u32,
        enough: impl Fn(&SendQueue) -> bool,
    ) -> Option<(u64, u64, usize)> {
        let mut dropped = None;
        let mut i = usize::from(self.front_written > 0);
        while i < self.frames.len() && !enough(self) {
            match self.frames[i].kind {
                Kind::Segment { sub: s, seq } if s == sub && seq != 0 => {
                    self.remove(i);
                    dropped = Some(dropped.map_or((seq, seq, i), |(from, _, at)| (from, seq, at)));
                }
                _ => i += 1,
            }
        }
        dropped
    }

    /// Remove the frame at `i` (not yet started).
    fn remove(&mut self, i: usize) {
        if let Some(out) = self.frames.remove(i) {
            self.bytes -= out.len();
        }
    }

    /// Queue the `skipped` frame for segments `from..=to` of `sub`, dropped from position
    /// `at`. An unsent `skipped` of `sub` before `at` with no segment of `sub` between them
    /// covers the segments just before these: it becomes one message for both ranges.
    /// `make(from, to)` builds the frame (`None`: no message). Returns whether a frame was
    /// inserted (rather than replaced or left out).
    fn place_skipped(
        &mut self,
        sub: u32,
        from: u64,
        to: u64,
        at: usize,
        make: impl FnOnce(u64, u64) -> Option<Bytes>,
    ) -> bool {
        let at = at.min(self.frames.len());
        let first = usize::from(self.front_written > 0);
        let mut earlier = None;
        for i in (first..at).rev() {
            match self.frames[i].kind {
                Kind::Segment { sub: s, .. } if s == sub => break,
                Kind::Skipped { sub: s, from } if s == sub => {
                    earlier = Some((i, from));
                    break;
                }
                _ => {}
            }
        }
        let from = earlier.map_or(from, |(_, f)| f);
        let Some(frame) = make(from, to) else {
            return false;
        };
        let out = Out::own(frame, Body::default(), Kind::Skipped { sub, from });
        self.bytes += out.len();
        match earlier {
            Some((i, _)) => {
                let old = std::mem::replace(&mut self.frames[i], out);
                self.bytes -= old.len();
                false
            }
            None => {
                self.frames.insert(at, out);
                true
            }
        }
    }

    /// Drop the oldest live segments not yet started (never an init segment, never a
    /// partially written frame), subscription by subscription, until at most `target` bytes
    /// are queued. Each subscription that lost segments gets a `skipped` frame from
    /// `skipped(sub, from, to)` (`None`: none), placed as [`SendQueue::push_segment`]
    /// places its own. Returns how many `skipped` messages it queued.
    pub fn trim_segments(
        &mut self,
        target: usize,
        mut skipped: impl FnMut(u32, u64, u64) -> Option<Bytes>,
    ) -> usize {
        let mut out: Vec<(u32, u64, u64, usize)> = Vec::new();
        let first = usize::from(self.front_written > 0);
        let mut i = first;
        while i < self.frames.len() && self.bytes > target {
            match self.frames[i].kind {
                Kind::Segment { sub, seq } if seq != 0 => {
                    self.remove(i);
                    match out.iter_mut().find(|(s, ..)| *s == sub) {
                        Some(range) => range.2 = seq,
                        None => out.push((sub, seq, seq, i)),
                    }
                }
                _ => i += 1,
            }
        }
        // Each `skipped` goes where its subscription's first dropped segment was; inserting
        // one moves the later positions by one.
        out.sort_by_key(|r| r.3);
        let mut queued = 0;
        for &(sub, from, to, at) in &out {
            if self.place_skipped(sub, from, to, at + queued, |from, to| {
                skipped(sub, from, to)
            }) {
                queued += 1;
            }
        }
        queued
    }

    /// Drop every queued segment of `sub` except a partially written one.
    pub fn remove_sub(&mut self, sub: u32) {
        self.drop_unstarted(|k| matches!(k, Kind::Segment { sub: s, .. } if s == sub));
    }

    /// Drop live segments not yet started, keeping `get` replies and messages (used before
    /// the drain's close frame: requests in flight still get their answer).
    pub fn drop_unstarted_segments(&mut self) {
        self.drop_unstarted(|k| matches!(k, Kind::Segment { .. }));
    }

    /// Drop the frames whose kind matches `which`, except a partially written front frame.
    fn drop_unstarted(&mut self, which: impl Fn(Kind) -> bool) {
        let keep_front = self.front_written > 0;
        let mut idx = 0;
        let bytes = &mut self.bytes;
        self.frames.retain(|out| {
            let started = keep_front && idx == 0;
            idx += 1;
            let drop = which(out.kind) && !started;
            if drop {
                *bytes -= out.len();
            }
            !drop
        });
    }

    /// Drop everything not yet started (used before a close frame).
    pub fn truncate_unstarted(&mut self) {
        let keep = usize::from(self.front_written > 0);
        while self.frames.len() > keep {
            if let Some(out) = self.frames.pop_back() {
                self.bytes -= out.len();
            }
        }
    }

    /// Fill `parts` with the next slices to write; returns how many, and whether a payload
    /// to `sendfile` comes right after them. With `files`, gathering stops before the first
    /// payload that has a file (its frame's head is the last part); the caller writes the
    /// parts with `MSG_MORE`, then sends the payload with [`SendQueue::front_file`].
    pub fn gather<'a>(&'a self, parts: &mut [&'a [u8]; MAX_IOV], files: bool) -> (usize, bool) {
        let mut n = 0;
        let mut skip = self.front_written;
        for out in &self.frames {
            for (i, part) in [out.prefix(), &out.body().bytes].into_iter().enumerate() {
                if part.is_empty() {
                    continue;
                }
                if i == 1 && files && out.body().file.is_some() {
                    return (n, true);
                }
                if skip >= part.len() {
                    skip -= part.len();
                    continue;
                }
                if n == MAX_IOV {
                    return (n, false);
                }
                parts[n] = &part[skip..];
                skip = 0;
                n += 1;
            }
        }
        (n, false)
    }

    /// The front frame's payload file, when its head is written and its payload has a file:
    /// the descriptor, the offset of the next byte to send in it, and how many bytes are
    /// left.
    pub fn front_file(&self) -> Option<(RawFd, u64, usize)> {
        let front = self.frames.front()?;
        let span = front.body().file.as_ref()?;
        let sent = self.front_written.checked_sub(front.prefix().len())?;
        let left = front.body().len() - sent;
        (left > 0).then(|| (span.file.fd(), span.offset + sent as u64, left))
    }

    /// Account for `written` bytes having gone to the socket. Returns the number of
    /// frames completed.
    pub fn advance(&mut self, written: usize, now: Instant) -> usize {
        self.taken = self.taken.saturating_add(written);
        let mut written = written;
        let mut done = 0;
        while let Some(front) = self.frames.front() {
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                break;
            }
            written -= left;
            self.bytes -= front.len();
            self.front_written = 0;
            self.frames.pop_front();
            done += 1;
        }
        if done > 0 || self.taken >= PROGRESS_BYTES {
            self.last_progress = Some(now);
            self.taken = 0;
        }
        if self.bytes() <= self.limit / 2 {
            self.over_since = None;
        }
        done
    }

    /// When the connection counts as stalled if nothing changes: `timeout` after the later
    /// of going over the limit and the last progress (a whole frame or [`PROGRESS_BYTES`]
    /// taken by the socket). `None` while under the limit.
    pub fn stall_deadline(&self, timeout: Duration) -> Option<Instant> {
        let over = self.over_since?;
        let since = self.last_progress.map_or(over, |p| p.max(over));
        Some(since + timeout)
    }

    /// Whether the connection is stalled at `now`.
    pub fn stalled(&self, now: Instant, timeout: Duration) -> bool {
        self.stall_deadline(timeout).is_some_and(|d| now >= d)
    }

    /// When the queue went over its limit, if it is.
    pub fn over_since(&self) -> Option<Instant> {
        self.over_since
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(n: usize) -> Bytes {
        Bytes::from(vec![1u8; n])
    }

    /// Queue segment `seq` of `sub` (a `head`-byte prefix and `body`); returns the range
    /// the `skipped` frame made for it covers, if segments were dropped.
    fn push(
        q: &mut SendQueue,
        sub: u32,
        seq: u64,
        head: usize,
        body: impl Into<Body>,
        t: Instant,
    ) -> Option<(u64, u64)> {
        let mut range = None;
        let seg = Seg::new(seq, 0, b(head), body.into());
        q.push_segment(sub, seg, t, |from, to| {
            range = Some((from, to));
            b(5)
        });
        range
    }

    fn seqs(q: &SendQueue) -> Vec<Kind> {
        q.frames.iter().map(|o| o.kind).collect()
    }

    #[test]
    fn a_viewer_too_far_behind_jumps_to_the_newest() {
        let t = Instant::now();
        let lag = Duration::from_secs(1);
        let mut q = SendQueue::with_max_lag(1 << 20, lag);
        assert_eq!(push(&mut q, 1, 0, 10, b(90), t), None); // init
        assert_eq!(push(&mut q, 1, 1, 10, b(90), t), None);
        q.advance(50, t); // seq 0 partly written
        assert_eq!(push(&mut q, 1, 2, 10, b(90), t), None);
        // Two at once are never dropped for each other.
        assert_eq!(push(&mut q, 1, 3, 10, b(90), t), None);
        assert_eq!(push(&mut q, 2, 9, 10, b(90), t), None);
        // Within the bound: kept.
        assert_eq!(push(&mut q, 1, 4, 10, b(90), t + lag), None);
        // Past it: 1..=4 go, the init (partly written) and the other stream stay.
        let d = push(&mut q, 1, 5, 10, b(90), t + lag + Duration::from_millis(1));
        assert_eq!(d, Some((1, 4)));
        // The init (partly written), one `skipped` for 1.., the other stream, the newest.
        let kept = |newest| {
            vec![
                Kind::Segment { sub: 1, seq: 0 },
                Kind::Skipped { sub: 1, from: 1 },
                Kind::Segment { sub: 2, seq: 9 },
                Kind::Segment {
                    sub: 1,
                    seq: newest,
                },
            ]
        };
        assert_eq!(seqs(&q), kept(5));
        assert_eq!(q.bytes(), 300 + 5 - 50);
        // Still unread a second later: 5 goes too, and the same message now says 1..=5.
        let d = push(
            &mut q,
            1,
            6,
            10,
            b(90),
            t + lag * 2 + Duration::from_millis(2),
        );
        assert_eq!(d, Some((1, 5)));
        assert_eq!(seqs(&q), kept(6));
        assert_eq!(q.bytes(), 300 + 5 - 50);
        // No bound: nothing dropped for time.
        let mut q = SendQueue::new(1 << 20);
        push(&mut q, 1, 1, 10, b(90), t);
        assert_eq!(push(&mut q, 1, 2, 10, b(90), t + lag * 10), None);
    }

    /// A queued segment costs its viewer one entry; keep it small (a stalled viewer holds
    /// a second of them).
    #[test]
    fn queue_entries_stay_small() {
        assert!(
            std::mem::size_of::<Out>() <= 48,
            "{}",
            std::mem::size_of::<Out>()
        );
    }

    /// A viewer that reads nothing holds one `skipped` per stream, extended at each drop;
    /// a segment of the stream kept between the two (an init) keeps the messages apart.
    #[test]
    fn an_unsent_skipped_is_extended_only_when_nothing_of_its_stream_follows() {
        let t = Instant::now();
        let lag = Duration::from_secs(1);
        let late = |n: u32| t + lag * n + Duration::from_millis(u64::from(n));
        let mut q = SendQueue::with_max_lag(1 << 20, lag);
        push(&mut q, 1, 1, 10, b(90), t);
        push(&mut q, 1, 2, 10, b(90), t);
        assert_eq!(push(&mut q, 1, 3, 10, b(90), late(1)), Some((1, 2)));
        assert_eq!(push(&mut q, 1, 4, 10, b(90), late(2)), Some((1, 3)));
        assert_eq!(push(&mut q, 1, 5, 10, b(90), late(3)), Some((1, 4)));
        assert_eq!(
            seqs(&q),
            vec![
                Kind::Skipped { sub: 1, from: 1 },
                Kind::Segment { sub: 1, seq: 5 },
            ]
        );
        assert_eq!(q.bytes(), 5 + 100);
        // Sent: the next drop gets a message of its own.
        q.advance(5, late(3));
        assert_eq!(push(&mut q, 1, 6, 10, b(90), late(4)), Some((5, 5)));
        assert_eq!(q.advance(5 + 100, late(4)), 2);
        // An init queued between: a message of its own too.
        push(&mut q, 1, 7, 10, b(90), late(4));
        push(&mut q, 1, 0, 10, b(90), late(4));
        assert_eq!(push(&mut q, 1, 8, 10, b(90), late(5)), Some((7, 7)));
        assert_eq!(push(&mut q, 1, 9, 10, b(90), late(6)), Some((8, 8)));
        assert_eq!(
            seqs(&q),
            vec![
                Kind::Skipped { sub: 1, from: 7 },
                Kind::Segment { sub: 1, seq: 0 },
                Kind::Skipped { sub: 1, from: 8 },
                Kind::Segment { sub: 1, seq: 9 },
            ]
        );
    }

    #[test]
    fn drops_oldest_of_the_stream_only() {
        let t = Instant::now();
        let mut q = SendQueue::new(1100);
        q.push_keep(b(10), Bytes::new());
        assert_eq!(push(&mut q, 1, 0, 10, b(90), t), None); // init
        assert_eq!(push(&mut q, 1, 1, 10, b(290), t), None);
        assert_eq!(push(&mut q, 2, 7, 10, b(290), t), None);
        assert_eq!(push(&mut q, 1, 2, 10, b(290), t), None);
        assert_eq!(q.bytes(), 1010);
        assert!(q.over_since().is_none());
        // Needs 300 more: drops seq 1 of sub 1; not the init, not sub 2.
        let d = push(&mut q, 1, 3, 10, b(290), t);
        assert_eq!(d, Some((1, 1)));
        assert!(q.over_since().is_some());
        assert_eq!(
            seqs(&q),
            vec![
                Kind::Keep,
                Kind::Segment { sub: 1, seq: 0 },
                Kind::Skipped { sub: 1, from: 1 },
                Kind::Segment { sub: 2, seq: 7 },
                Kind::Segment { sub: 1, seq: 2 },
                Kind::Segment { sub: 1, seq: 3 }
            ]
        );
        assert_eq!(q.bytes(), 10 + 100 + 5 + 300 + 300 + 300);
        // Far over: every droppable segment of sub 1 goes, oldest first (2 and 3), and the
        // `skipped` still unsent for 1 now covers 1..=3.
        let d = push(&mut q, 1, 4, 10, b(990), t);
        assert_eq!(d, Some((1, 3)));
        assert_eq!(
            seqs(&q),
            vec![
                Kind::Keep,
                Kind::Segment { sub: 1, seq: 0 },
                Kind::Skipped { sub: 1, from: 1 },
                Kind::Segment { sub: 2, seq: 7 },
                Kind::Segment { sub: 1, seq: 4 }
            ]
        );
        assert_eq!(q.bytes(), 10 + 100 + 5 + 300 + 1000);
    }

    #[test]
    fn trimming_drops_the_oldest_segments_of_each_subscription() {
        let mut q = SendQueue::new(1 << 20);
        let t = Instant::now();
        push(&mut q, 1, 0, 0, b(10), t); // init: kept
        for seq in 1..=3 {
            push(&mut q, 1, seq, 0, b(100), t);
            push(&mut q, 2, seq, 0, b(100), t);
        }
        q.push_keep(b(5), Bytes::new()); // a reply: kept
        let mut ranges = Vec::new();
        let dropped = q.trim_segments(250, |sub, from, to| {
            ranges.push((sub, from, to));
            Some(b(5))
        });
        assert_eq!(dropped, 2);
        assert_eq!(ranges, vec![(1, 1, 2), (2, 1, 2)]);
        assert!(q.bytes() <= 250 + 10, "{}", q.bytes());
        assert_eq!(
            seqs(&q),
            vec![
                Kind::Segment { sub: 1, seq: 0 },
                Kind::Skipped { sub: 1, from: 1 },
                Kind::Skipped { sub: 2, from: 1 },
                Kind::Segment { sub: 1, seq: 3 },
                Kind::Segment { sub: 2, seq: 3 },
                Kind::Keep
            ]
        );
    }

    #[test]
    fn partial_front_is_never_dropped() {
        let t = Instant::now();
        let mut q = SendQueue::new(500);
        push(&mut q, 1, 1, 10, b(390), t);
        assert_eq!(q.advance(100, t), 0);
        let d = push(&mut q, 1, 2, 10, b(390), t);
        assert_eq!(d, None);
        assert_eq!(q.len(), 2);
        assert_eq!(q.bytes(), 300 + 400);
        let mut parts = [&[][..]; MAX_IOV];
        let (n, file_next) = q.gather(&mut parts, true);
        assert_eq!((n, file_next), (3, false));
        assert_eq!(parts[0].len(), 300);
        assert_eq!(q.advance(300, t), 1);
        // A third segment now drops seq 2 (no longer partial... it is unstarted).
        let d = push(&mut q, 1, 3, 10, b(390), t);
        assert_eq!(d, Some((2, 2)));
    }

    /// With files, a payload that has one is left out of the gathered parts (its head is the
    /// last part, and `sendfile` follows); partial sends resume at the right file offset.
    #[test]
    fn payload_files_are_sent_apart() {
        let t = Instant::now();
        let fd = crate::sys::sealed_memfd(&[7u8; 100]).unwrap();
        let file = crate::origin::files::PayloadFile::for_test(fd);
        let with_file = || Body {
            bytes: b(90),
            file: Some(crate::origin::files::FileSpan {
                file: file.clone(),
                offset: 10,
            }),
        };
        let mut q = SendQueue::new(10_000);
        q.push_keep(b(5), Bytes::new());
        push(&mut q, 1, 1, 10, with_file(), t);
        push(&mut q, 1, 2, 10, b(50), t);
        let gathered = |q: &SendQueue, files: bool| {
            let mut parts = [&[][..]; MAX_IOV];
            let (n, next) = q.gather(&mut parts, files);
            (parts[..n].iter().map(|p| p.len()).collect::<Vec<_>>(), next)
        };
        // TLS: everything from memory.
        assert_eq!(gathered(&q, false), (vec![5, 10, 90, 10, 50], false));
        // Plain: the reply and the head, then the file.
        assert_eq!(gathered(&q, true), (vec![5, 10], true));
        assert_eq!(q.front_file(), None);
        q.advance(5 + 4, t);
        assert_eq!(q.front_file(), None, "the head is not written yet");
        assert_eq!(gathered(&q, true), (vec![6], true));
        q.advance(6, t);
        assert_eq!(q.front_file(), Some((file.fd(), 10, 90)));
        q.advance(40, t);
        assert_eq!(q.front_file(), Some((file.fd(), 50, 50)));
        assert_eq!(q.advance(50, t), 1);
        assert_eq!(q.front_file(), None);
        assert_eq!(gathered(&q, true), (vec![10, 50], false));
    }

    #[test]
    fn stall_clock() {
        let t = Instant::now();
        let mut q = SendQueue::new(100);
        push(&mut q, 1, 1, 10, b(90), t);
        assert!(q.over_since().is_none());
        push(&mut q, 1, 2, 10, b(90), t);
        assert!(q.over_since().is_some());
        assert!(!q.stalled(t + Duration::from_millis(10), Duration::from_secs(1)));
        assert!(q.stalled(t + Duration::from_secs(2), Duration::from_secs(1)));
        // A few bytes that complete no frame are no progress.
        assert_eq!(q.advance(3, t + Duration::from_millis(1500)), 0);
        assert!(q.stalled(t + Duration::from_secs(2), Duration::from_secs(1)));
        // A whole frame taken restarts the clock, even while still over the limit.
        q.advance(7, t + Duration::from_secs(2));
        assert!(!q.stalled(t + Duration::from_millis(2500), Duration::from_secs(1)));
        assert!(q.stalled(t + Duration::from_secs(3), Duration::from_secs(1)));
        // Seq 1 was dropped for room: its `skipped` (5 bytes) went first.
        q.advance(95, t);
        assert!(q.over_since().is_none());
        assert!(q.is_empty());
    }

    #[test]
    fn a_large_frame_taken_slowly_is_progress() {
        let t = Instant::now();
        let mut q = SendQueue::new(100);
        q.push_keep(b(10), b(4 * PROGRESS_BYTES));
        push(&mut q, 1, 1, 10, b(90), t);
        assert!(q.over_since().is_some());
        assert_eq!(
            q.advance(PROGRESS_BYTES - 1, t + Duration::from_millis(900)),
            0
        );
        assert!(q.stalled(t + Duration::from_secs(1), Duration::from_secs(1)));
        // Together the bytes taken reach PROGRESS_BYTES: the clock restarts.
        assert_eq!(q.advance(1, t + Duration::from_secs(1)), 0);
        assert!(!q.stalled(t + Duration::from_millis(1900), Duration::from_secs(1)));
        assert!(q.stalled(t + Duration::from_secs(2), Duration::from_secs(1)));
    }

    #[test]
    fn gets_wait_for_room_but_are_never_dropped() {
        let t = Instant::now();
        let mut q = SendQueue::new(100);
        assert!(q.has_room_for(1000)); // empty queue takes anything
        q.push_keep(b(10), b(990));
        assert!(!q.has_room_for(10));
        push(&mut q, 1, 1, 10, b(10), t);
        assert_eq!(q.len(), 2);
        q.remove_sub(1);
        assert_eq!(q.len(), 1);
        q.truncate_unstarted();
        assert!(q.is_empty());
        q.push_keep(b(10), b(100));
        push(&mut q, 1, 1, 10, b(10), t);
        q.push_keep(b(5), Bytes::new());
        q.drop_unstarted_segments();
        assert_eq!(seqs(&q), vec![Kind::Keep, Kind::Keep]);
        assert_eq!(q.bytes(), 115);
    }
}
