//! The fan-out engine: live streams, their discovery, and delivery to subscribers on every
//! worker.
//!
//! Each stream a client subscribes to gets one [`Stream`] per relay process, shared by all
//! workers, and one poller task (on the hub's own thread, [`run_pollers`]) that discovers
//! new segments every `poll_interval` (and at once when the origin reports a change: inotify
//! for a directory, a Pub/Sub notification for a bucket), fetches each new segment **once**
//! through the cache, lays out its frame prefix once ([`Seg`]), and hands that one segment
//! to every worker that has subscribers ([`WorkerMsg::Segment`]). Each worker then queues
//! the same buffers to its own subscribers ([`super::subs`]), so a segment costs one origin
//! read and one buffer however many viewers follow it. The poller stops when the stream has
//! had no subscriber for `stream_linger` (at once for a stream with nothing in storage).
//!
//! Discovery lists the stream's prefix, except where listing is billed (Cloud Storage's
//! `objects.list`, [`crate::origin::Origin::lists_are_costly`]): there a poll reads the
//! predicted next segment (`seg-<seq+1>` with the last one's extension; a miss is not
//! billed and a hit is the download needed anyway), and lists only at the start, while the
//! stream has no segment, every `list_interval` (which finds a segment after a gap), and
//! when a notification named a segment the prediction did not reach. While Pub/Sub
//! notifications arrive they wake the poller, and the timed poll slows to the backstop
//! listing (`list_interval`); it returns to `poll_interval` when they stop.
//!
//! The init segment (`S/init.mp4`) is read at the first listing and read again whenever a
//! listing finds new segments (an encoder that restarts writes its new init before its
//! first segment): when it appeared or changed, it goes to every live subscriber
//! ([`WorkerMsg::Init`]) ahead of those segments.
//!
//! The pollers run on a thread of their own, not on a worker: a worker busy writing a
//! segment to hundreds of subscribers polls each of its tasks once per round of all of
//! them, so a poller there discovered and fetched segments only as fast as they were sent,
//! and an overloaded relay fell further and further behind the live edge (14 s behind after
//! 5 s of 1 MiB segments at 20/s to 1,000 subscribers) instead of dropping segments for the
//! subscribers that cannot keep up, as the slow-consumer policy says.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::stream::{Seg, Stream};
use crate::origin::cache::Cache;
use crate::origin::watch::Changes;
use crate::origin::{Object, OriginError};
use crate::protocol::keys::{init_key, segment_key, segment_seq};

/// How many polls apart, at most, a stream with nothing in storage is listed (a power of
/// two): 8 × the 200 ms default, so a stream that starts later is found within 1.6 s.
const EMPTY_BACKOFF: u32 = 8;

/// Most segments one predicting poll reads in a row (more wait for the next poll).
const MAX_PREDICTED: u64 = 16;

/// A message to a worker's inbox.
pub enum WorkerMsg {
    /// A new segment of a stream: queue it to local subscribers.
    Segment(Arc<Stream>, Seg),
    /// The stream's init segment appeared or was replaced: queue it (seq 0) to local live
    /// subscribers before the next media segment.
    Init(Arc<Stream>, Seg),
    /// Start the graceful drain.
    Drain,
}

/// Stream registry and the route to every worker.
pub struct Hub {
    streams: Mutex<HashMap<Arc<str>, Arc<Stream>>>,
    inboxes: Vec<flume::Sender<WorkerMsg>>,
    cache: Arc<Cache>,
    /// Milliseconds between listings of a live stream (SIGHUP may change it).
    poll_ms: AtomicU64,
    /// Milliseconds between full listings where listing is billed (SIGHUP may change it).
    list_ms: AtomicU64,
    linger: Duration,
    /// Most streams followed at once (SIGHUP may change it).
    max_streams: AtomicUsize,
    /// Subscriptions refused because the relay follows `max_streams` streams.
    pub refused: AtomicU64,
    /// Segments fetched and published, for metrics and tests.
    pub published: AtomicU64,
    /// New streams for the pollers' thread ([`run_pollers`]); `None` before it runs and
    /// after [`Hub::stop_pollers`].
    pollers: Mutex<Option<flume::Sender<Arc<Stream>>>>,
    /// Init segments being received through ingest now, per stream (see
    /// [`Hub::init_incoming`]).
    incoming_inits: Mutex<HashMap<String, usize>>,
    incoming_done: event_listener::Event,
}

/// An init segment on its way in through ingest; dropping it (the request ended, stored
/// and published or not) lets the stream's segments waiting on it go.
pub struct IncomingInit {
    hub: Arc<Hub>,
    stream: String,
}

impl Drop for IncomingInit {
    fn drop(&mut self) {
        let mut m = self
            .hub
            .incoming_inits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.stream) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.stream);
            }
        }
        drop(m);
        self.hub.incoming_done.notify(usize::MAX);
    }
}

impl Hub {
    /// A hub delivering to `inboxes` (one per worker).
    pub fn new(
        inboxes: Vec<flume::Sender<WorkerMsg>>,
        cache: Arc<Cache>,
        poll_interval: Duration,
        linger: Duration,
        max_streams: usize,
    ) -> Hub {
        Hub {
            streams: Mutex::new(HashMap::new()),
            inboxes,
            cache,
            poll_ms: AtomicU64::new(poll_interval.as_millis() as u64),
            list_ms: AtomicU64::new(10_000),
            linger,
            max_streams: AtomicUsize::new(max_streams),
            refused: AtomicU64::new(0),
            published: AtomicU64::new(0),
            pollers: Mutex::new(None),
            incoming_inits: Mutex::new(HashMap::new()),
            incoming_done: event_listener::Event::new(),
        }
    }

    /// From now on, every new stream's poller goes to the receiver returned, which the
    /// caller hands to [`run_pollers`] on a thread of its own.
    pub fn route_pollers(&self) -> flume::Receiver<Arc<Stream>> {
        let (tx, rx) = flume::unbounded::<Arc<Stream>>();
        *self.pollers.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        rx
    }

    /// Let the pollers' thread end (its pollers with it); streams created afterwards poll
    /// on the worker that asks.
    pub fn stop_pollers(&self) {
        self.pollers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    /// Change the listing period of live streams (from the next poll on).
    pub fn set_poll_interval(&self, every: Duration) {
        self.poll_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Change how often a stream is listed in full where listing is billed.
    pub fn set_list_interval(&self, every: Duration) {
        self.list_ms
            .store(every.as_millis() as u64, Ordering::Relaxed);
    }

    /// Change the most streams followed at once (streams above it are not dropped).
    pub fn set_max_streams(&self, max: usize) {
        self.max_streams.store(max, Ordering::Relaxed);
    }

    /// Subscribers over all live streams.
    pub fn subscriber_count(&self) -> usize {
        self.streams.lock().map_or(0, |s| {
            s.values()
                .map(|st| st.subscribers.load(Ordering::Relaxed))
                .sum()
        })
    }

    /// Number of live streams being followed.
    pub fn stream_count(&self) -> usize {
        self.streams.lock().map_or(0, |s| s.len())
    }

    /// Send a message to every worker.
    pub fn broadcast(&self, make: impl Fn() -> WorkerMsg) {
        for tx in &self.inboxes {
            let _ = tx.send(make());
        }
    }

    /// Register a subscriber on `worker`; starts the stream's poller (on the pollers' thread,
    /// or the calling worker when that is not running) when the stream is new. `None` when
    /// the stream is new and the relay already follows the most streams it may.
    pub fn subscribe(self: &Arc<Self>, name: &str, worker: usize) -> Option<Arc<Stream>> {
        let (stream, created) = {
            let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let (s, created) = match streams.get(name) {
                Some(s) => (s.clone(), false),
                None => {
                    if streams.len() >= self.max_streams.load(Ordering::Relaxed) {
                        self.refused.fetch_add(1, Ordering::Relaxed);
                        return None;
                    }
                    let s = Arc::new(Stream::new(name, self.inboxes.len()));
                    streams.insert(s.name.clone(), s.clone());
                    (s, true)
                }
            };
            s.subscribers.fetch_add(1, Ordering::AcqRel);
            s.worker_subs[worker].fetch_add(1, Ordering::AcqRel);
            (s, created)
        };
        if created {
            let handed = self
                .pollers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(|tx| tx.send(stream.clone()).is_ok());
            if !handed {
                monoio::spawn(self.clone().poll(stream.clone()));
            }
        }
        Some(stream)
    }

    /// Remove a subscriber of `worker`.
    pub fn unsubscribe(&self, stream: &Stream, worker: usize) {
        stream.worker_subs[worker].fetch_sub(1, Ordering::AcqRel);
        if stream.subscribers.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: let the poller decide at once whether to let the stream go.
            stream.idle.notify(usize::MAX);
        }
    }

    /// The stream's poller: discovery and one fetch per new segment. A stream with nothing
    /// in storage is let go as soon as its last subscriber leaves, and is listed less often
    /// (up to `EMPTY_BACKOFF` polls apart) while it stays empty; one with segments lingers
    /// for `stream_linger`, so viewers who come back find its window in memory.
    async fn poll(self: Arc<Self>, stream: Arc<Stream>) {
        let prefix = format!("{}/", stream.name);
        let init = init_key(&stream.name);
        let mut last_seg_key: Option<String> = None;
        let mut init_version: Option<u64> = None;
        let mut first = true;
        let mut idle_since: Option<Instant> = None;
        let mut failures = 0u32;
        let mut empty_polls = 0u32;
        let origin = self.cache.origin().clone();
        let predict = origin.lists_are_costly();
        let mut listed_at: Option<Instant> = None;
        let mut woken = false;
        let mut changes = None;
        loop {
            // Until the stream's own directory is watched (it may not exist yet), ask again:
            // the wake-up that ended the last wait may have been its creation.
            if !changes.as_ref().is_some_and(|c: &Changes| c.exact) {
                changes = origin.watch(&prefix).or(changes);
            }
            // Listen before listing, so a change during the listing is not missed.
            let changed = changes.as_ref().map(|c| c.event.listen());
            let left = stream.idle.listen();
            let list_every = Duration::from_millis(self.list_ms.load(Ordering::Relaxed));
            // Where listing is billed, list at the start, while the stream has no segment
            // (nothing to predict from), every `list_interval` (a gap prediction cannot
            // cross), and when a notification named a segment prediction did not reach;
            // otherwise read the predicted next segment.
            // What a notification named, when one woke the poller.
            let hint = if woken {
                origin.take_hint(&prefix)
            } else {
                None
            };
            let outcome = if predict
                && !first
                && last_seg_key.is_some()
                && listed_at.is_some_and(|t| t.elapsed() < list_every)
            {
                let predicted = self
                    .predict(&stream, &init, &mut last_seg_key, &mut init_version)
                    .await;
                // A notified segment beyond what prediction found: a gap, or a new
                // numbering. Only a listing finds it.
                let unexplained = hint
                    .as_deref()
                    .and_then(|k| segment_seq(&stream.name, k))
                    .is_some_and(|seq| seq > stream.newest());
                match predicted {
                    Ok(_) if unexplained => {
                        listed_at = Some(Instant::now());
                        self.discover(
                            &stream,
                            &prefix,
                            &init,
                            &mut last_seg_key,
                            &mut init_version,
                            false,
                        )
                        .await
                    }
                    other => other.map(|_| ()),
                }
            } else {
                listed_at = Some(Instant::now());
                self.discover(
                    &stream,
                    &prefix,
                    &init,
                    &mut last_seg_key,
                    &mut init_version,
                    first,
                )
                .await
            };
            woken = false;
            match outcome {
                Ok(()) => {
                    failures = 0;
                    if first {
                        first = false;
                        stream.mark_ready();
                    }
                }
                Err(e) => {
                    failures += 1;
                    // Log the first failure and then every 50th, not every poll.
                    if failures == 1 || failures % 50 == 0 {
                        tracing::warn!(stream = %stream.name, failures, "listing failed: {e}");
                    }
                    if first && failures >= 3 {
                        // Let subscribers start (at seq 1) rather than wait forever.
                        stream.mark_ready();
                    }
                }
            }
            let has_content = stream.has_content();
            if stream.subscribers.load(Ordering::Acquire) == 0 {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if !has_content || since.elapsed() >= self.linger {
                    let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
                    if stream.subscribers.load(Ordering::Acquire) == 0 {
                        streams.remove(&stream.name);
                        drop(streams);
                        origin.unwatch(&prefix);
                        tracing::debug!(stream = %stream.name, "stream released");
                        return;
                    }
                }
            } else {
                idle_since = None;
            }
            empty_polls = if has_content {
                0
            } else {
                (empty_polls + 1).min(EMPTY_BACKOFF.trailing_zeros())
            };
            let mut every = Duration::from_millis(self.poll_ms.load(Ordering::Relaxed));
            // While notifications arrive, they wake the poller; a timed poll is only the
            // backstop listing (a missed notification), not a read every poll_interval.
            if predict && has_content && origin.wakers().is_some_and(|w| w.delivering()) {
                every = every.max(list_every);
            }
            let backoff = every * (1u32 << failures.min(5)).max(1 << empty_polls);
            match changed {
                // Wake at the next change or poll, whichever comes first.
                Some(changed) if failures == 0 => {
                    monoio::select! {
                        _ = monoio::time::sleep(backoff) => {}
                        _ = changed => { woken = true; }
                        _ = left => {}
                    }
                }
                _ => {
                    monoio::select! {
                        _ = monoio::time::sleep(backoff) => {}
                        _ = left => {}
                    }
                }
            }
        }
    }

    /// Read the segments after the last one known, by name (`seg-<seq+1>` with the same
    /// extension), until one is missing: a read that finds nothing is not billed, and one
    /// that finds the segment is the download discovery needs anyway. Returns whether
    /// anything new was found.
    async fn predict(
        &self,
        stream: &Arc<Stream>,
        init: &str,
        last_seg_key: &mut Option<String>,
        init_version: &mut Option<u64>,
    ) -> Result<bool, OriginError> {
        let Some(last) = last_seg_key.clone() else {
            return Ok(false);
        };
        let Some(seq) = segment_seq(&stream.name, &last) else {
            return Ok(false);
        };
        let ext = last.rsplit_once('.').map_or("m4s", |(_, e)| e).to_string();
        let mut found = false;
        for next in seq + 1..seq + 1 + MAX_PREDICTED {
            let key = segment_key(&stream.name, next, &ext);
            if next <= stream.newest() {
                // Published already (through ingest).
                *last_seg_key = Some(key);
                found = true;
                continue;
            }
            let obj = match self.cache.get(&key).await {
                Ok(obj) => obj,
                Err(OriginError::NotFound) => break,
                Err(e) => return Err(e),
            };
            if !found {
                // A new segment may follow a new init (an encoder restart).
                self.check_init(stream, init, false, init_version).await;
            }
            found = true;
            let seg = Seg::build(&stream.name, next, &obj);
            self.publish(stream, seg, Arc::from(key.as_str()));
            *last_seg_key = Some(key);
        }
        Ok(found)
    }

    async fn discover(
        &self,
        stream: &Arc<Stream>,
        prefix: &str,
        init: &str,
        last_seg_key: &mut Option<String>,
        init_version: &mut Option<u64>,
        first: bool,
    ) -> Result<(), OriginError> {
        let keys = self
            .cache
            .origin()
            .list(prefix, last_seg_key.as_deref())
            .await?;
        let mut new: Vec<(u64, String)> = Vec::new();
        let mut saw_init = false;
        for key in keys {
            if key == init {
                saw_init = true;
            } else if let Some(seq) = segment_seq(&stream.name, &key) {
                new.push((seq, key));
            }
        }
        // The init segment: known from the first listing (which starts at the beginning of
        // the prefix), then checked again whenever new segments appear.
        if (first && saw_init) || (!first && !new.is_empty()) {
            self.check_init(stream, init, first, init_version).await;
        }
        if new.is_empty() {
            return Ok(());
        }
        new.sort_unstable();
        new.dedup_by_key(|(seq, _)| *seq);
        if first {
            // Index everything; fetch only the newest (what `from: live` starts at).
            let mut st = stream.state.lock().unwrap_or_else(|e| e.into_inner());
            for (seq, key) in &new[..new.len() - 1] {
                st.index.insert(*seq, Arc::from(key.as_str()));
            }
            drop(st);
            new.drain(..new.len() - 1);
        }
        for (seq, key) in new {
            if seq <= stream.newest() {
                // Published already (ingest handed it over before storage listed it).
                *last_seg_key = Some(key);
                continue;
            }
            let obj = match self.cache.get(&key).await {
                Ok(obj) => obj,
                Err(OriginError::NotFound) => {
                    *last_seg_key = Some(key);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let seg = Seg::build(&stream.name, seq, &obj);
            self.publish(stream, seg, Arc::from(key.as_str()));
            *last_seg_key = Some(key);
        }
        Ok(())
    }
}

impl Hub {
    /// An object was just stored through ingest: when it is a live segment or init segment
    /// of a stream this relay follows, publish it to that stream's subscribers now, ahead of
    /// discovery (which then skips it). Returns whether it was published. A segment older
    /// than the newest one published is not (subscribers have moved past it).
    pub fn ingested(&self, obj: &Object) -> bool {
        let Some((name, _)) = obj.key.rsplit_once('/') else {
            return false;
        };
        let Some(stream) = self
            .streams
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
        else {
            return false;
        };
        if *obj.key == init_key(name) {
            let seg = Seg::build(name, 0, obj);
            {
                let mut st = stream.state.lock().unwrap_or_else(|e| e.into_inner());
                if st
                    .init
                    .as_ref()
                    .is_some_and(|cur| cur.payload.bytes == seg.payload.bytes)
                {
                    return false;
                }
                st.set_init(seg.clone());
            }
            self.send_to_workers(&stream, |s| WorkerMsg::Init(s, seg.clone()));
            return true;
        }
        let Some(seq) = segment_seq(name, &obj.key) else {
            return false;
        };
        let seg = Seg::build(name, seq, obj);
        self.publish(&stream, seg, obj.key.clone())
    }

    /// An init segment of `stream` has started to arrive through ingest. Encoders send a
    /// stream's init segment and its first media segment at the same time (ffmpeg's HLS
    /// muxer finishes both when the first segment ends), so that segment waits for the init
    /// ([`Hub::init_settled`]) and subscribers get the init first.
    pub fn init_incoming(self: &Arc<Self>, stream: &str) -> IncomingInit {
        *self
            .incoming_inits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(stream.to_string())
            .or_default() += 1;
        IncomingInit {
            hub: self.clone(),
            stream: stream.to_string(),
        }
    }

    /// Wait (at most `at_most`) until no init segment of `stream` is arriving.
    pub async fn init_settled(&self, stream: &str, at_most: Duration) {
        let until = Instant::now() + at_most;
        loop {
            let l = self.incoming_done.listen();
            let pending = self
                .incoming_inits
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(stream);
            let left = until.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                return;
            }
            let _ = monoio::time::timeout(left, l).await;
        }
    }

    /// Publish `seg` (stored as `key`) to the stream and every worker with subscribers,
    /// unless a segment at or after its seq is out already; returns whether it went out.
    fn publish(&self, stream: &Arc<Stream>, seg: Seg, key: Arc<str>) -> bool {
        if !stream.publish_new(seg.clone(), key) {
            return false;
        }
        self.published.fetch_add(1, Ordering::Relaxed);
        self.send_to_workers(stream, |s| WorkerMsg::Segment(s, seg.clone()));
        true
    }

    /// Hand a message about `stream` to every worker with subscribers to it.
    fn send_to_workers(&self, stream: &Arc<Stream>, make: impl Fn(Arc<Stream>) -> WorkerMsg) {
        for (w, tx) in self.inboxes.iter().enumerate() {
            if stream.worker_subs[w].load(Ordering::Acquire) > 0 {
                let _ = tx.send(make(stream.clone()));
            }
        }
    }

    /// Whether the stream's init segment appeared or changed since `known` (its version when
    /// last read): if so, read it from the origin (not the cache, which may hold an older
    /// one), make it the stream's init and, after the first listing, hand it to the
    /// workers with subscribers.
    async fn check_init(
        &self,
        stream: &Arc<Stream>,
        init: &str,
        first: bool,
        known: &mut Option<u64>,
    ) {
        let version = match self.cache.origin().version(init).await {
            Ok(Some(v)) => v,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(stream = %stream.name, "init segment: {e}");
                return;
            }
        };
        if *known == Some(version) {
            return;
        }
        let obj = match self.cache.refresh(init).await {
            Ok(obj) => obj,
            Err(OriginError::NotFound) => return,
            Err(e) => {
                tracing::warn!(stream = %stream.name, "init segment: {e}");
                return;
            }
        };
        *known = Some(version);
        let changed = {
            let st = stream.state.lock().unwrap_or_else(|e| e.into_inner());
            st.init
                .as_ref()
                .is_none_or(|cur| cur.payload.bytes != obj.payload())
        };
        if !changed {
            return;
        }
        let seg = Seg::build(&stream.name, 0, &obj);
        stream
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_init(seg.clone());
        if !first {
            tracing::debug!(stream = %stream.name, "init segment replaced");
            for (w, tx) in self.inboxes.iter().enumerate() {
                if stream.worker_subs[w].load(Ordering::Acquire) > 0 {
                    let _ = tx.send(WorkerMsg::Init(stream.clone(), seg.clone()));
                }
            }
        }
    }
}

/// The pollers' thread's main task: one task per live stream, started as streams are
/// created ([`Hub::route_pollers`]), until
/// [`Hub::stop_pollers`] (the runtime, and the pollers still running on it, end then).
pub async fn run_pollers(hub: Arc<Hub>, streams: flume::Receiver<Arc<Stream>>) {
    while let Ok(stream) = streams.recv_async().await {
        monoio::spawn(hub.clone().poll(stream));
    }
}
