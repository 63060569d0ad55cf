//! One worker's live subscriptions, with one owner: [`Subscriptions`] holds every
//! subscription of the worker's connections, by stream (for delivery) and by viewer (for
//! unsubscribe and close), and keeps the hub's per-worker subscriber counts in step. A
//! connection never holds its subscriptions itself; it asks this registry.
//!
//! Generic over the viewer (the data plane's connection type) so that the fan-out does not
//! depend on the data plane.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::Arc;

use super::hub::Hub;
use super::stream::{Seg, Stream};

/// What receives live segments.
pub trait Viewer: Sized {
    /// Queue `seg` for subscription `sub`. Returns true when older segments of that
    /// stream were dropped for it and a `skipped` message was queued (not when one still
    /// unsent was extended).
    fn push_segment(&self, sub: &Sub<Self>, seg: &Seg) -> bool;
}

/// A subscription of one viewer to one stream.
pub struct Sub<V> {
    /// The subscription's id within its viewer (tags its queued segments).
    pub id: u32,
    /// The stream followed.
    pub stream: Arc<Stream>,
    /// The viewer (weak: a closed connection goes away whatever its subscriptions).
    pub viewer: Weak<V>,
    /// Next sequence number this subscriber needs.
    pub next_seq: Cell<u64>,
    /// Caught up: new segments are pushed by [`Subscriptions::deliver`].
    pub live: Cell<bool>,
    /// Cleared on unsubscribe or close.
    pub active: Cell<bool>,
    /// The init segment last queued for this subscriber.
    pub init: RefCell<Option<Seg>>,
}

impl<V> Sub<V> {
    /// Whether `init` is the init segment last queued for this subscriber.
    pub fn has_init(&self, init: &Seg) -> bool {
        self.init
            .borrow()
            .as_ref()
            .is_some_and(|cur| cur.same(init))
    }

    /// Whether any init segment has been queued for this subscriber.
    pub fn has_any_init(&self) -> bool {
        self.init.borrow().is_some()
    }

    /// Note that `init` is queued for this subscriber; false when it already was.
    pub fn init_queued(&self, init: &Seg) -> bool {
        let mut cur = self.init.borrow_mut();
        if cur.as_ref().is_some_and(|c| c.same(init)) {
            return false;
        }
        *cur = Some(init.clone());
        true
    }
}

/// Subscriptions sharing a stream or a viewer.
type SubList<V> = Vec<Rc<Sub<V>>>;

/// Every subscription of one worker.
pub struct Subscriptions<V> {
    worker: usize,
    hub: Arc<Hub>,
    by_stream: RefCell<HashMap<Arc<str>, SubList<V>>>,
    by_viewer: RefCell<HashMap<u64, SubList<V>>>,
}

impl<V: Viewer> Subscriptions<V> {
    /// The registry of worker `worker`, counting its subscribers in `hub`.
    pub fn new(hub: Arc<Hub>, worker: usize) -> Subscriptions<V> {
        Subscriptions {
            worker,
            hub,
            by_stream: RefCell::new(HashMap::new()),
            by_viewer: RefCell::new(HashMap::new()),
        }
    }

    /// The hub this registry reports to.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Whether viewer `viewer_id` follows `stream`.
    pub fn contains(&self, viewer_id: u64, stream: &str) -> bool {
        self.by_viewer
            .borrow()
            .get(&viewer_id)
            .is_some_and(|subs| subs.iter().any(|s| &*s.stream.name == stream))
    }

    /// The streams viewer `viewer_id` follows.
    pub fn streams_of(&self, viewer_id: u64) -> Vec<Arc<str>> {
        self.by_viewer
            .borrow()
            .get(&viewer_id)
            .map(|subs| subs.iter().map(|s| s.stream.name.clone()).collect())
            .unwrap_or_default()
    }

    /// The stream of viewer `viewer_id`'s subscription `sub_id`.
    pub fn stream_of(&self, viewer_id: u64, sub_id: u32) -> Option<Arc<str>> {
        self.by_viewer
            .borrow()
            .get(&viewer_id)?
            .iter()
            .find(|s| s.id == sub_id)
            .map(|s| s.stream.name.clone())
    }

    /// How many streams viewer `viewer_id` follows.
    pub fn count(&self, viewer_id: u64) -> usize {
        self.by_viewer.borrow().get(&viewer_id).map_or(0, Vec::len)
    }

    /// Subscribe `viewer` (known as `viewer_id`) to `stream` as subscription `sub_id`.
    /// Starts the stream's discovery when it is new to the relay. The subscription starts
    /// not live: whoever catches it up sets [`Sub::live`].
    /// `None` when the stream is new and the relay follows the most streams it may.
    pub fn add(
        &self,
        viewer_id: u64,
        viewer: &Rc<V>,
        stream: &str,
        sub_id: u32,
    ) -> Option<Rc<Sub<V>>> {
        let stream = self.hub.subscribe(stream, self.worker)?;
        let sub = Rc::new(Sub {
            id: sub_id,
            stream,
            viewer: Rc::downgrade(viewer),
            next_seq: Cell::new(0),
            live: Cell::new(false),
            active: Cell::new(true),
            init: RefCell::new(None),
        });
        self.by_stream
            .borrow_mut()
            .entry(sub.stream.name.clone())
            .or_default()
            .push(sub.clone());
        self.by_viewer
            .borrow_mut()
            .entry(viewer_id)
            .or_default()
            .push(sub.clone());
        Some(sub)
    }

    /// End viewer `viewer_id`'s subscription to `stream`; returns it, if there was one.
    pub fn remove(&self, viewer_id: u64, stream: &str) -> Option<Rc<Sub<V>>> {
        let sub = {
            let mut by_viewer = self.by_viewer.borrow_mut();
            let subs = by_viewer.get_mut(&viewer_id)?;
            let at = subs.iter().position(|s| &*s.stream.name == stream)?;
            let sub = subs.swap_remove(at);
            if subs.is_empty() {
                by_viewer.remove(&viewer_id);
            }
            sub
        };
        self.unlink(&sub);
        Some(sub)
    }

    /// End every subscription of viewer `viewer_id` (it closed or is draining).
    pub fn remove_viewer(&self, viewer_id: u64) {
        let subs = self.by_viewer.borrow_mut().remove(&viewer_id);
        for sub in subs.into_iter().flatten() {
            self.unlink(&sub);
        }
    }

    /// End every subscription of this worker (drain).
    pub fn clear(&self) {
        let all: Vec<u64> = self.by_viewer.borrow().keys().copied().collect();
        for viewer in all {
            self.remove_viewer(viewer);
        }
    }

    fn unlink(&self, sub: &Rc<Sub<V>>) {
        if !sub.active.replace(false) {
            return;
        }
        let mut by_stream = self.by_stream.borrow_mut();
        if let Some(list) = by_stream.get_mut(&sub.stream.name) {
            list.retain(|s| !Rc::ptr_eq(s, sub));
            if list.is_empty() {
                by_stream.remove(&sub.stream.name);
            }
        }
        self.hub.unsubscribe(&sub.stream, self.worker);
    }

    /// Hand a new or replaced init segment to every caught-up local subscriber of `stream`
    /// that does not have it yet (their next expected sequence number is unchanged; one
    /// still catching up gets it from its task, before the segments it goes with). Returns
    /// how many `skipped` messages were queued for it.
    pub fn deliver_init(&self, stream: &Stream, seg: &Seg) -> u64 {
        let by_stream = self.by_stream.borrow();
        let Some(list) = by_stream.get(&stream.name) else {
            return 0;
        };
        let mut skips = 0;
        for sub in list.iter().filter(|s| s.live.get() && s.active.get()) {
            if let Some(viewer) = sub.viewer.upgrade() {
                if sub.init_queued(seg) {
                    skips += u64::from(viewer.push_segment(sub, seg));
                }
            }
        }
        skips
    }

    /// Hand a new segment to every caught-up local subscriber of `stream`. Hot path: per
    /// subscriber, one pointer clone and a queue push. Returns how many `skipped` messages
    /// were queued for it.
    pub fn deliver(&self, stream: &Stream, seg: &Seg) -> u64 {
        let by_stream = self.by_stream.borrow();
        let Some(list) = by_stream.get(&stream.name) else {
            return 0;
        };
        let mut skips = 0;
        for sub in list {
            if !sub.live.get() || !sub.active.get() || seg.seq < sub.next_seq.get() {
                continue;
            }
            if let Some(viewer) = sub.viewer.upgrade() {
                skips += u64::from(viewer.push_segment(sub, seg));
                sub.next_seq.set(seg.seq + 1);
            }
        }
        skips
    }
}
