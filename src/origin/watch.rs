//! Change wake-ups. [`Wakers`]: by key prefix, raised by Cloud Storage notifications
//! (Pub/Sub). [`DirWatcher`]: for the local-directory origin, one inotify instance per process and one
//! thread blocked reading it, a watch per live stream directory (added by the stream's
//! poller, removed when the stream is released). A segment renamed into place wakes the
//! poller at once instead of at its next poll, so discovery does not batch segments up to
//! `poll_interval` apart. A stream directory that does not exist yet is waited for through
//! its nearest existing ancestor under the storage root (a directory created or renamed
//! there wakes the poller, which then watches the stream's own). Polling stays as the
//! fallback (inotify limits, network filesystems that send no events).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use event_listener::Event;
use inotify::{Inotify, WatchDescriptor, WatchMask, Watches};

/// A stream's wake-up ([`crate::origin::Origin::watch`]).
pub struct Changes {
    pub event: Arc<Event>,
    /// Whether it watches the stream itself; `false` while it waits for the stream's
    /// directory to appear: the poller asks again after each wake-up.
    pub exact: bool,
}

/// A watched directory: its descriptor, the event its pollers listen to, what it is
/// watched for.
type Watch = (WatchDescriptor, Arc<Event>, WatchMask);

/// A directory's key in the watcher's map: `a/b/` and `a/b` are one directory.
fn key_of(dir: &Path) -> String {
    dir.components()
        .collect::<std::path::PathBuf>()
        .to_string_lossy()
        .into_owned()
}

/// The process's directory watcher.
pub struct DirWatcher {
    watches: Mutex<Watches>,
    /// Watched directory -> its descriptor, the event its pollers listen to, and what it is
    /// watched for.
    by_dir: Mutex<HashMap<String, Watch>>,
    /// Descriptor -> event, read by the inotify thread.
    by_wd: Arc<Mutex<HashMap<WatchDescriptor, Arc<Event>>>>,
}

impl DirWatcher {
    /// The shared watcher, started on first use; `None` where inotify is unavailable.
    pub fn get() -> Option<&'static DirWatcher> {
        static WATCHER: OnceLock<Option<DirWatcher>> = OnceLock::new();
        WATCHER
            .get_or_init(|| match DirWatcher::start() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!("inotify unavailable, stream discovery polls only: {e}");
                    None
                }
            })
            .as_ref()
    }

    fn start() -> std::io::Result<DirWatcher> {
        let mut inotify = Inotify::init()?;
        let watches = inotify.watches();
        let by_wd: Arc<Mutex<HashMap<WatchDescriptor, Arc<Event>>>> = Arc::default();
        let map = by_wd.clone();
        std::thread::Builder::new()
            .name("mediarelay-inotify".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                loop {
                    match inotify.read_events_blocking(&mut buf) {
                        Ok(events) => {
                            let map = map.lock().unwrap_or_else(|e| e.into_inner());
                            for ev in events {
                                if let Some(event) = map.get(&ev.wd) {
                                    event.notify(usize::MAX);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            tracing::warn!("inotify read failed, stream discovery polls only: {e}");
                            return;
                        }
                    }
                }
            })?;
        Ok(DirWatcher {
            watches: Mutex::new(watches),
            by_dir: Mutex::default(),
            by_wd,
        })
    }

    /// Wake-ups for stream directory `root/prefix`: files renamed into or written in it.
    /// While it does not exist, the wake-up is for directories created in its nearest
    /// existing ancestor under `root` (not [`Changes::exact`]: ask again after it fires).
    /// `None` if nothing can be watched.
    pub fn watch(&self, root: &Path, prefix: &str) -> Option<Changes> {
        let dir = root.join(prefix);
        let files = WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE;
        if let Some(event) = self.add(&dir, files, true) {
            return Some(Changes { event, exact: true });
        }
        let dirs = WatchMask::CREATE | WatchMask::MOVED_TO;
        let mut up = dir.parent();
        while let Some(d) = up.filter(|d| d.starts_with(root)) {
            if let Some(event) = self.add(d, dirs, false) {
                // Made between the two attempts: no event would tell.
                if let Some(event) = self.add(&dir, files, true) {
                    return Some(Changes { event, exact: true });
                }
                return Some(Changes {
                    event,
                    exact: false,
                });
            }
            up = d.parent();
        }
        None
    }

    /// Watch `dir` for `mask` (added to what it is watched for already); `None` if it
    /// cannot be (it does not exist). `cached`: answer from what is known without asking
    /// the kernel (a stream's own directory). Ancestors are asked every time: one removed
    /// and made again has a new watch. One directory has one watch descriptor, whatever it
    /// was asked for as (a stream's own, an ancestor of another stream): they share its
    /// event.
    fn add(&self, dir: &Path, mask: WatchMask, cached: bool) -> Option<Arc<Event>> {
        let key = key_of(dir);
        let mut by_dir = self.by_dir.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, event, watched)) = by_dir.get(&key) {
            if cached && watched.contains(mask) {
                return Some(event.clone());
            }
        }
        let wd = self
            .watches
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(dir, mask | WatchMask::MASK_ADD | WatchMask::ONLYDIR)
            .ok()?;
        let mut by_wd = self.by_wd.lock().unwrap_or_else(|e| e.into_inner());
        let event = by_wd
            .entry(wd.clone())
            .or_insert_with(|| Arc::new(Event::new()))
            .clone();
        let watched = match by_dir.get(&key) {
            Some((old, _, watched)) if *old == wd => *watched | mask,
            Some((old, ..)) => {
                // The directory was made again: its old watch is gone.
                by_wd.remove(old);
                mask
            }
            None => mask,
        };
        by_dir.insert(key, (wd, event.clone(), watched));
        Some(event)
    }

    /// Stop watching `dir`.
    pub fn unwatch(&self, dir: &Path) {
        let key = key_of(dir);
        let removed = self
            .by_dir
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        if let Some((wd, ..)) = removed {
            self.by_wd
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&wd);
            // Fails harmlessly if the directory is gone (the kernel dropped the watch).
            let _ = self
                .watches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(wd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_listener::Listener;
    use std::time::Duration;

    /// Wait (at most 5 s) for `listener` to fire after `act`.
    fn wakes(listener: event_listener::EventListener, act: impl FnOnce()) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            listener.wait();
            let _ = tx.send(());
        });
        act();
        assert!(
            rx.recv_timeout(Duration::from_secs(5)).is_ok(),
            "no wake-up"
        );
    }

    /// A stream's directory that is also the ancestor another stream waits in is one watch
    /// with one event, whichever was asked for first; when the stream lets its watch go,
    /// the waiting one gets a working watch at its next ask.
    #[test]
    fn a_directory_watched_for_two_streams_is_one_watch() {
        let Some(w) = DirWatcher::get() else {
            return;
        };
        let root = std::env::temp_dir().join(format!("mediarelay-watch2-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a")).unwrap();
        let stream = w.watch(&root, "a/").unwrap();
        let waiting = w.watch(&root, "a/b/").unwrap();
        assert!(stream.exact && !waiting.exact);
        assert!(Arc::ptr_eq(&stream.event, &waiting.event));
        wakes(stream.event.listen(), || {
            std::fs::write(root.join("a/init.mp4"), b"x").unwrap();
        });
        w.unwatch(&root.join("a/"));
        let waiting = w.watch(&root, "a/b/").unwrap();
        assert!(!waiting.exact);
        wakes(waiting.event.listen(), || {
            std::fs::create_dir(root.join("a/b")).unwrap();
        });
        assert!(w.watch(&root, "a/b/").unwrap().exact);
        w.unwatch(&root.join("a/b"));
        w.unwatch(&root.join("a"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_rename_into_a_watched_directory_wakes_the_listener() {
        let Some(w) = DirWatcher::get() else {
            return; // no inotify in this sandbox: polling covers it
        };
        let dir = std::env::temp_dir().join(format!("mediarelay-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.parent().unwrap();
        let prefix = dir.file_name().unwrap().to_str().unwrap();
        let changes = w.watch(root, prefix).expect("watch an existing directory");
        assert!(changes.exact);
        wakes(changes.event.listen(), || {
            std::fs::write(dir.join(".tmp"), b"x").unwrap();
            std::fs::rename(dir.join(".tmp"), dir.join("seg-0000000001.bin")).unwrap();
        });
        w.unwatch(&dir);
        // A stream whose directory (and its parent) do not exist yet: each directory
        // created on the way wakes the poller, then the stream's own is watched.
        let (a, b) = (dir.join("a"), dir.join("a/b"));
        let changes = w.watch(&dir, "a/b/").expect("watch the nearest ancestor");
        assert!(!changes.exact);
        wakes(changes.event.listen(), || std::fs::create_dir(&a).unwrap());
        let changes = w.watch(&dir, "a/b/").expect("watch the parent");
        assert!(!changes.exact);
        wakes(changes.event.listen(), || std::fs::create_dir(&b).unwrap());
        let changes = w.watch(&dir, "a/b/").expect("watch the stream's directory");
        assert!(changes.exact);
        wakes(changes.event.listen(), || {
            std::fs::write(b.join("init.mp4"), b"x").unwrap();
        });
        // Nothing above the root is watched.
        let gone = dir.join("gone");
        assert!(w.watch(&gone, "x/").is_none());
        w.unwatch(&b);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

/// Wake-ups by key prefix, raised from outside the origin (Cloud Storage notifications
/// through Pub/Sub): a stream's poller listens on its prefix's event, and a notification
/// for an object wakes the prefix the object is directly under and leaves the object's key
/// as a hint ([`Wakers::take_hint`]). Also the notifications' counters, for metrics.
#[derive(Default)]
pub struct Wakers {
    /// Per prefix: the event its poller listens to, and the greatest key notified.
    by_prefix: Mutex<HashMap<String, Watched>>,
    /// Recent notifications `(object, generation, event type)`, to drop redeliveries.
    seen: Mutex<Recent>,
    /// Notifications received, that woke a poller, redelivered, and pull failures.
    pub received: std::sync::atomic::AtomicU64,
    pub woke: std::sync::atomic::AtomicU64,
    pub duplicates: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    /// Whether the last pull worked (`/metrics`: notifications up).
    pub up: std::sync::atomic::AtomicBool,
    /// Whether a notification source is configured.
    pub enabled: std::sync::atomic::AtomicBool,
}

/// A watched prefix: its event, and the greatest key notified since the last hint taken.
type Watched = (Arc<Event>, Option<String>);

/// A bounded set of recent ids: the set, and their order of arrival.
type Recent = (
    std::collections::HashSet<String>,
    std::collections::VecDeque<String>,
);

/// Most notifications remembered for dropping redeliveries.
const SEEN: usize = 4096;

impl Wakers {
    /// The event for `prefix` (which ends in `/`).
    pub fn watch(&self, prefix: &str) -> Arc<Event> {
        self.by_prefix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(prefix.to_string())
            .or_default()
            .0
            .clone()
    }

    /// Forget `prefix`.
    pub fn unwatch(&self, prefix: &str) {
        self.by_prefix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(prefix);
    }

    /// `key` changed: wake the watcher of the prefix it is directly under, if any, and keep
    /// the greatest key notified since the last [`Wakers::take_hint`] (segment names sort
    /// by seq). Returns whether one was woken.
    pub fn wake(&self, key: &str) -> bool {
        let Some(at) = key.rfind('/') else {
            return false;
        };
        let mut map = self.by_prefix.lock().unwrap_or_else(|e| e.into_inner());
        match map.get_mut(&key[..=at]) {
            Some((event, hint)) => {
                if hint.as_deref().is_none_or(|h| key > h) {
                    *hint = Some(key.to_string());
                }
                event.notify(usize::MAX);
                true
            }
            None => false,
        }
    }

    /// Whether notifications are configured and the last pull worked: pollers then wait
    /// for them instead of reading every poll interval.
    pub fn delivering(&self) -> bool {
        self.enabled.load(std::sync::atomic::Ordering::Relaxed)
            && self.up.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The greatest key notified under `prefix` since the last call.
    pub fn take_hint(&self, prefix: &str) -> Option<String> {
        self.by_prefix
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(prefix)
            .and_then(|(_, hint)| hint.take())
    }

    /// Whether the notification `id` was seen before (a redelivery); remembers it.
    pub fn seen_before(&self, id: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let (set, order) = &mut *seen;
        if set.contains(id) {
            return true;
        }
        set.insert(id.to_string());
        order.push_back(id.to_string());
        while order.len() > SEEN {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
        false
    }
}

#[cfg(test)]
mod wakers_tests {
    use super::*;

    #[test]
    fn a_key_wakes_its_own_prefix_only_and_leaves_a_hint() {
        let w = Wakers::default();
        let cam = w.watch("live/cam1/");
        let l = cam.listen();
        assert!(!w.wake("live/cam10/seg-0000000001.m4s"));
        assert!(!w.wake("live/cam1/sub/seg-0000000001.m4s"));
        assert!(w.wake("live/cam1/seg-0000000002.m4s"));
        assert!(w.wake("live/cam1/seg-0000000001.m4s"));
        assert!(w.wake("live/cam1/index.m3u8"));
        drop(l);
        assert_eq!(
            w.take_hint("live/cam1/").as_deref(),
            Some("live/cam1/seg-0000000002.m4s")
        );
        assert_eq!(w.take_hint("live/cam1/"), None);
        w.unwatch("live/cam1/");
        assert!(!w.wake("live/cam1/seg-0000000003.m4s"));
        assert!(!w.wake("noslash"));
    }

    #[test]
    fn redeliveries_are_recognised_within_a_bound() {
        let w = Wakers::default();
        assert!(!w.seen_before("a#1"));
        assert!(w.seen_before("a#1"));
        for i in 0..SEEN {
            w.seen_before(&format!("x{i}"));
        }
        assert!(!w.seen_before("a#1"), "forgotten after {SEEN} others");
    }
}
