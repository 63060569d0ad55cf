//! Origins: where objects come from. One trait, [`Origin`], with the local-directory
//! backend ([`fs::FsOrigin`]) as the embedded default.
//!
//! An origin returns [`Object`]s whose bytes sit in a pooled buffer with *headroom*: free
//! space in front of the payload where a WebSocket frame head and the media meta of a
//! reply are laid out (see `ws::frame::media_prefix`). The payload itself is written once, by
//! the origin read, and never copied again in user space.
//!
//! The origin's I/O is in its backends ([`fs`], [`gcs`], [`watch`]); caching and
//! single-flight across workers live in [`cache`], payload buffers in [`pool`]. This module
//! knows storage, not connections: it never imports the data plane or the fan-out.

pub mod cache;
pub mod empty;
pub mod files;
pub mod fs;
pub mod gcs;
pub mod pool;
pub mod pubsub;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

use crate::config::Config;
use crate::protocol::ErrorCode;

/// Why an origin could not produce an object; mapped to protocol error codes in one place
/// ([`OriginError::code`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum OriginError {
    #[error("object not found")]
    NotFound,
    #[error("object is {size} bytes, over the {max} byte limit")]
    TooLarge { size: u64, max: u64 },
    #[error("origin unavailable: {0}")]
    Unavailable(String),
}

impl OriginError {
    /// The wire `error` code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            OriginError::NotFound => ErrorCode::NotFound,
            OriginError::TooLarge { .. } => ErrorCode::TooLarge,
            OriginError::Unavailable(_) => ErrorCode::Unavailable,
        }
    }
}

/// One object as read from the origin: the payload and where it sits in its buffer.
#[derive(Clone)]
pub struct Object {
    /// The whole buffer: `headroom` bytes of free space, then the payload.
    buf: Bytes,
    headroom: usize,
    /// The object's key.
    pub key: Arc<str>,
    /// `Content-Type`, when the origin knows one.
    pub content_type: Option<Arc<str>>,
    /// Generation (GCS), when the origin has one.
    pub generation: Option<u64>,
    /// The payload's bytes in a file too, for `sendfile` ([`files`]).
    pub file: Option<files::FileSpan>,
}

impl Object {
    /// Wrap a filled buffer: `buf[..headroom]` is headroom, the rest is the payload.
    pub fn new(buf: Bytes, headroom: usize, key: Arc<str>) -> Object {
        assert!(headroom <= buf.len());
        Object {
            buf,
            headroom,
            key,
            content_type: None,
            generation: None,
            file: None,
        }
    }

    /// The payload as queued for sending: its bytes, and its file when it has one.
    pub fn body(&self) -> files::Body {
        files::Body {
            bytes: self.payload(),
            file: self.file.clone(),
        }
    }

    /// The object's bytes (a cheap reference-counted view, no copy).
    pub fn payload(&self) -> Bytes {
        self.buf.slice(self.headroom..)
    }

    /// Payload length.
    pub fn size(&self) -> usize {
        self.buf.len() - self.headroom
    }

    /// Headroom plus payload: `len` bytes ending at the end of the payload, used to
    /// give the frame formatter a slice of a frame's exact payload length.
    pub fn tail(&self, len: usize) -> Option<&[u8]> {
        self.buf
            .len()
            .checked_sub(len)
            .map(|start| &self.buf[start..])
    }

    /// A view of exactly `len` bytes ending with the payload (headroom, then payload), for
    /// formatting the head of a frame of that length; `None` when the headroom is short.
    pub fn frame_view(&self, len: usize) -> Option<&[u8]> {
        if len < self.size() || len - self.size() > self.headroom {
            return None;
        }
        self.tail(len)
    }

    /// Free space in front of the payload.
    pub fn headroom(&self) -> usize {
        self.headroom
    }

    /// Bytes held in memory for this object (for the cache budget).
    pub fn mem_size(&self) -> usize {
        self.buf.len()
    }
}

/// Headroom to reserve in front of an object with key `key`: room for the longest frame
/// head (10), the meta length (4) and a meta object naming the key and its stream, with
/// every key byte JSON-escaped.
pub fn headroom_for(key: &str) -> usize {
    // meta: {"stream":S,"seq":N,"key":K,"size":N,"ts":N,"contentType":C,"generation":N}
    // stream is a prefix of key; escaping at most doubles; 256 covers field names, numbers
    // and a content type.
    14 + 4 + 256 + 4 * key.len()
}

/// How a write ended: a new object, or one that replaced an object of the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    Created,
    Replaced,
}

/// A listing entry: an object key (full, including the prefix).
pub type Listing = Vec<String>;

/// Boxed future an origin returns; origins run on a worker's runtime (not `Send`).
pub type OriginFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, OriginError>> + 'a>>;

/// A source of objects.
pub trait Origin: Send + Sync + 'static {
    /// Human-readable backend name for logs and metrics (`fs`, `gcs`).
    fn backend(&self) -> &'static str;

    /// Fetch `key` (already validated), refusing objects over `max_size` bytes without
    /// reading them.
    fn get<'a>(&'a self, key: &'a str, max_size: u64) -> OriginFuture<'a, Object>;

    /// Keys under `prefix` (which ends in `/`) that sort after `start_after`, in order.
    /// Only direct children are listed.
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
    ) -> OriginFuture<'a, Listing>;

    /// What identifies the object `key` as stored now, without reading it: equal values
    /// mean the object has not been replaced since (the directory's inode, size and mtime;
    /// GCS's generation). `None`: there is no such object.
    fn version<'a>(&'a self, key: &'a str) -> OriginFuture<'a, Option<u64>>;

    /// Store `obj` under its key, whole or not at all (ingest): when this returns `Ok` the
    /// object is durable and complete, and a failed or interrupted write leaves nothing
    /// visible under the key.
    fn put<'a>(&'a self, _obj: &'a Object) -> OriginFuture<'a, Stored> {
        Box::pin(std::future::ready(Err(OriginError::Unavailable(
            "this storage does not accept writes".into(),
        ))))
    }

    /// Delete `key`; `Ok(false)`: there was no such object.
    fn delete<'a>(&'a self, _key: &'a str) -> OriginFuture<'a, bool> {
        Box::pin(std::future::ready(Err(OriginError::Unavailable(
            "this storage does not accept writes".into(),
        ))))
    }

    /// Whether the origin is usable (for `/readyz`); `Err` says why not.
    fn check_ready(&self) -> Result<(), OriginError>;

    /// A wake-up raised when objects may have appeared under `prefix` (a stream), where the
    /// backend can tell (the local directory, through inotify). `None`: discovery polls.
    /// A wake-up that is not [`watch::Changes::exact`] waits for the stream's directory to
    /// appear: ask again after it fires.
    fn watch(&self, _prefix: &str) -> Option<watch::Changes> {
        None
    }

    /// Stop the wake-ups for `prefix`.
    fn unwatch(&self, _prefix: &str) {}

    /// Where notifications from outside (Cloud Storage through Pub/Sub) wake this origin's
    /// watchers ([`Origin::watch`]); `None`: the backend has its own (inotify) or none.
    fn wakers(&self) -> Option<&watch::Wakers> {
        None
    }

    /// The greatest key a notification named under `prefix` since the last call.
    fn take_hint(&self, prefix: &str) -> Option<String> {
        self.wakers()?.take_hint(prefix)
    }

    /// Requests sent to the storage service by kind, for metrics (empty: not counted).
    fn calls(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }

    /// Whether listing is a billed, rate-limited call (Cloud Storage's `objects.list`):
    /// discovery then predicts the next segment's name and reads it, and lists only at the
    /// start, after a miss it cannot explain, and every `storage.list_interval`.
    fn lists_are_costly(&self) -> bool {
        false
    }
}

/// An origin that cannot be opened from the configuration.
#[derive(Debug, thiserror::Error)]
#[error("storage `{url}`: {why}")]
pub struct OpenError {
    /// The storage setting.
    pub url: String,
    /// What is wrong with it.
    pub why: String,
}

/// Open the origin the storage setting names: a directory, or `gs://BUCKET[/PREFIX]`
/// (with `STORAGE_EMULATOR_HOST` honoured as Google's client libraries do).
pub fn open(config: &Config) -> Result<Arc<dyn Origin>, OpenError> {
    let url = &config.storage.url;
    let fail = |why: String| OpenError {
        url: url.clone(),
        why,
    };
    if url.starts_with("gs://") {
        let emulator = std::env::var("STORAGE_EMULATOR_HOST").ok();
        let mut settings = gcs::GcsSettings::from_url(url, emulator.as_deref()).map_err(fail)?;
        settings.deadline = config.storage.request_deadline;
        settings.attempt_timeout = config.storage.attempt_timeout;
        settings.max_inflight = config.storage.max_inflight;
        settings.threads = config.storage.fetch_threads;
        settings.page_size = config.storage.list_page_size;
        settings.upload_chunk = config.storage.upload_chunk as usize;
        let gcs = gcs::GcsOrigin::start(settings).map_err(fail)?;
        return Ok(Arc::new(gcs));
    }
    match config.storage_dir() {
        Some(dir) => Ok(Arc::new(
            fs::FsOrigin::open(&dir).map_err(|e| fail(e.to_string()))?,
        )),
        None => Err(fail("expected a directory or gs://BUCKET[/PREFIX]".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_views() {
        let mut v = vec![0u8; 4];
        v.extend_from_slice(b"hello");
        let o = Object::new(Bytes::from(v), 4, "k".into());
        assert_eq!(&o.payload()[..], b"hello");
        assert_eq!(o.size(), 5);
        assert_eq!(o.tail(7).unwrap().len(), 7);
        assert!(o.tail(10).is_none());
    }
}
