//! Origins: where objects come from. One trait, [`Origin`], with the local-directory
//! backend ([`fs::FsOrigin`]) as the embedded default.
//!
//! An origin returns [`Object`]s whose bytes sit in a pooled buffer with *headroom*: free
//! space in front of the payload where a WebSocket frame head and the media meta of a
//! reply are laid out (see [`crate::ws::frame`]). The payload itself is written once, by
//! the origin read, and never copied again in user space.
//!
//! Origins do I/O only: caching and single-flight live in [`crate::cache`].

pub mod fs;
pub mod gcs;
pub mod watch;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

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
    /// The PROTOCOL.md `error` code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            OriginError::NotFound => "not_found",
            OriginError::TooLarge { .. } => "too_large",
            OriginError::Unavailable(_) => "unavailable",
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

    /// Whether the origin is usable (for `/readyz`); `Err` carries the reason.
    fn check_ready(&self) -> Result<(), String>;

    /// A wake-up raised when objects may have appeared under `prefix` (a stream), where the
    /// backend can tell (the local directory, through inotify). `None`: discovery polls.
    fn watch(&self, _prefix: &str) -> Option<Arc<event_listener::Event>> {
        None
    }

    /// Stop the wake-ups for `prefix`.
    fn unwatch(&self, _prefix: &str) {}
}

/// Validate a client-supplied key per PROTOCOL.md: `/`-separated, at most 1024 bytes,
/// no `..` or empty segments, no leading `/`, no control characters or `\`.
pub fn validate_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("key is empty");
    }
    if key.len() > 1024 {
        return Err("key is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return Err("key starts with /");
    }
    if key.chars().any(|c| c.is_control() || c == '\\') {
        return Err("key contains a control character or backslash");
    }
    for seg in key.split('/') {
        match seg {
            "" => return Err("key has an empty segment"),
            ".." => return Err("key has a .. segment"),
            _ => {}
        }
    }
    Ok(())
}

/// A stream name follows the key rules (it is a key prefix without the trailing `/`).
pub fn validate_stream(stream: &str) -> Result<(), &'static str> {
    validate_key(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for good in [
            "a",
            "live/cam1/seg-0000000001.m4s",
            "vod/a b/ü+%.mp4",
            "x/.hidden",
            "a/./b",
        ] {
            assert!(validate_key(good).is_ok(), "{good}");
        }
        let long = "a".repeat(1025);
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            "a\\b",
            "a\u{0}b",
            "a\nb",
            "a\u{7f}",
            long.as_str(),
        ] {
            assert!(validate_key(bad).is_err(), "{bad:?}");
        }
        assert!(validate_key(&"a".repeat(1024)).is_ok());
    }

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
