//! One live stream as every worker sees it ([`Stream`]: the index of discovered segments,
//! the window of the newest ready ones, the init segment, subscriber counts per worker), and
//! one segment ready to send ([`Seg`]: its frame prefix and payload, built once and shared
//! by every viewer).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use event_listener::Event;

use crate::origin::files::Body;
use crate::origin::Object;
use crate::protocol::{meta_json, From, SegmentMeta};
use crate::ws::frame::media_prefix;

/// The frame prefix (head, meta length, meta) of a binary media frame carrying `obj`, the
/// head formatted over the object's own buffer ([`Object::frame_view`]).
pub fn frame_prefix(obj: &Object, meta: &[u8]) -> Bytes {
    let frame_len = 4 + meta.len() + obj.size();
    media_prefix(meta, obj.size(), obj.frame_view(frame_len))
}

/// Segments kept in memory per stream for subscribers joining or catching up.
const WINDOW: usize = 16;

/// One segment ready to send: the frame prefix (head + meta) and the payload, built once.
/// Cloning it clones one pointer: every send queue that holds the segment holds that
/// pointer (the fields are read through it, `seg.seq`, `seg.prefix`, ...).
#[derive(Clone)]
pub struct Seg(Arc<SegFrame>);

/// What a [`Seg`] points to.
pub struct SegFrame {
    pub seq: u64,
    /// When it became ready to send (unix µs; the meta's `ts`).
    pub ts: u64,
    pub prefix: Bytes,
    /// The payload, with its file when it has one (for `sendfile`).
    pub payload: Body,
}

impl std::ops::Deref for Seg {
    type Target = SegFrame;

    fn deref(&self) -> &SegFrame {
        &self.0
    }
}

impl Seg {
    /// Whether `other` is this very segment (the same shared frame).
    pub fn same(&self, other: &Seg) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// A segment from its parts.
    pub fn new(seq: u64, ts: u64, prefix: Bytes, payload: Body) -> Seg {
        Seg(Arc::new(SegFrame {
            seq,
            ts,
            prefix,
            payload,
        }))
    }

    /// Lay out the frame of `obj` as segment `seq` of `stream`, stamped now.
    pub fn build(stream: &str, seq: u64, obj: &Object) -> Seg {
        Seg::build_at(stream, seq, obj, now_micros())
    }

    /// [`Seg::build`] with the stamp `ts` (a segment read again keeps its first stamp).
    pub fn build_at(stream: &str, seq: u64, obj: &Object, ts: u64) -> Seg {
        let meta = SegmentMeta {
            stream,
            seq,
            key: &obj.key,
            size: obj.size(),
            ts,
            content_type: obj.content_type.as_deref(),
            generation: obj.generation,
        };
        Seg::new(seq, ts, frame_prefix(obj, &meta_json(&meta)), obj.body())
    }
}

impl SegFrame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.prefix.len() + self.payload.len()
    }

    /// Whether the frame is empty (never: a frame has a head).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Unix time in microseconds.
pub fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[derive(Default)]
pub(super) struct StreamState {
    pub(super) init: Option<Seg>,
    /// The first seq the current init segment goes with: the one after the newest published
    /// when it appeared or was replaced (a subscriber catching up from older segments gets
    /// it before that seq, not before the segments made with the init it replaced).
    pub(super) init_since: u64,
    /// Every segment discovered: seq → key.
    pub(super) index: BTreeMap<u64, Arc<str>>,
    /// The newest published segments.
    pub(super) window: VecDeque<Seg>,
    /// Newest published seq (0: none yet).
    pub(super) newest: u64,
    /// The `ts` each segment was first sent with, so a segment read again for a
    /// subscriber catching up carries the same stamp as for everyone else.
    pub(super) stamps: BTreeMap<u64, u64>,
}

impl StreamState {
    /// A new or replaced init segment: it goes with the segments after the newest.
    pub(super) fn set_init(&mut self, seg: Seg) {
        self.init = Some(seg);
        self.init_since = self.newest + 1;
    }
}

/// A live stream, shared by all workers.
pub struct Stream {
    /// The stream's name (its key prefix without the trailing `/`).
    pub name: Arc<str>,
    pub(super) state: Mutex<StreamState>,
    pub(super) ready: AtomicBool,
    pub(super) ready_event: Event,
    pub(super) subscribers: AtomicUsize,
    /// Subscribers per worker, to know whom to hand new segments to.
    pub(super) worker_subs: Vec<AtomicUsize>,
    /// Raised when the last subscriber leaves (the poller may let the stream go).
    pub(super) idle: Event,
}

/// Where a subscription should start, once the stream has been listed.
pub struct Start {
    pub seq: u64,
    pub init: Option<Seg>,
}

impl Stream {
    /// A stream no worker has subscribers to yet, for `workers` workers.
    pub(super) fn new(name: &str, workers: usize) -> Stream {
        Stream {
            name: Arc::from(name),
            state: Mutex::new(StreamState::default()),
            ready: AtomicBool::new(false),
            ready_event: Event::new(),
            subscribers: AtomicUsize::new(0),
            worker_subs: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            idle: Event::new(),
        }
    }

    /// Whether storage has anything of this stream: an init segment or a media segment.
    pub fn has_content(&self) -> bool {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.init.is_some() || !st.index.is_empty()
    }

    /// Let subscriptions waiting in [`Stream::ready`] start.
    pub(super) fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
        self.ready_event.notify(usize::MAX);
    }

    /// Wait until the first listing is done.
    pub async fn ready(&self) {
        loop {
            if self.ready.load(Ordering::Acquire) {
                return;
            }
            let l = self.ready_event.listen();
            if self.ready.load(Ordering::Acquire) {
                return;
            }
            l.await;
        }
    }

    /// The current init segment, and the first seq published after it appeared or was
    /// replaced.
    pub fn init(&self) -> Option<(Seg, u64)> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.init.clone().map(|init| (init, st.init_since))
    }

    /// First sequence number for a subscription starting `from`.
    pub fn start(&self, from: From) -> Start {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let newest_known = st.index.keys().next_back().copied().unwrap_or(0);
        let seq = match from {
            From::Live => {
                if st.newest > 0 {
                    st.newest
                } else {
                    newest_known + 1
                }
            }
            From::Start => st.index.keys().next().copied().unwrap_or(1),
            // The first segment that will be sent: the first known at or after `n`, or `n`
            // itself when it is still to come.
            From::Seq(n) => {
                let n = n.max(1);
                st.index.range(n..).next().map_or(n, |(s, _)| *s)
            }
        };
        Start {
            seq,
            init: st.init.clone(),
        }
    }

    /// The next segment at or after `seq` that has been published, as a ready segment
    /// when it is still in the window, or as a key to fetch; `None` when `seq` is past
    /// the newest published segment.
    pub fn next_at(&self, seq: u64) -> Option<Result<Seg, (u64, Arc<str>)>> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if seq > st.newest {
            return None;
        }
        if let Some(seg) = st.window.iter().find(|s| s.seq >= seq) {
            // The window is contiguous with respect to the index from its first entry.
            let older = st.index.range(seq..seg.seq).next();
            if older.is_none() {
                return Some(Ok(seg.clone()));
            }
        }
        st.index
            .range(seq..=st.newest)
            .next()
            .map(|(s, k)| Err((*s, k.clone())))
    }

    /// The `ts` of segment `seq`: the one it was first sent with, or now (kept for the
    /// next reader).
    pub fn stamp(&self, seq: u64) -> u64 {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *st.stamps.entry(seq).or_insert_with(now_micros)
    }

    /// Newest published seq (0: none yet).
    pub fn newest(&self) -> u64 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).newest
    }

    /// Publish `seg` unless a segment at or after its seq is published already (checked
    /// and published under one lock, so ingest and discovery never both publish one seq);
    /// an older one is only indexed.
    pub(super) fn publish_new(&self, seg: Seg, key: Arc<str>) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if seg.seq <= st.newest {
            // Known, for subscriptions that start from an earlier seq.
            st.index.entry(seg.seq).or_insert(key);
            return false;
        }
        st.index.insert(seg.seq, key);
        st.stamps.insert(seg.seq, seg.ts);
        st.newest = seg.seq;
        st.window.push_back(seg);
        while st.window.len() > WINDOW {
            st.window.pop_front();
        }
        true
    }
}
