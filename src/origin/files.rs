//! Payload files: where a payload's bytes also sit in a file, so a plain-text connection can
//! `sendfile` them instead of copying them into its socket.
//!
//! Two kinds, both immutable for as long as anything holds them:
//! - an object of the directory origin keeps its **own file** open (the page cache holds
//!   its bytes; objects are replaced by rename, never rewritten in place);
//! - a GCS download or an ingested body is written once into a **sealed memfd**
//!   ([`crate::sys::sealed_memfd`]) and its buffer is replaced by a read-only mapping of
//!   that file, so the payload exists once in memory for both send paths.
//!
//! Each open payload file holds a descriptor, so their number is bounded ([`set_limit`]:
//! zero, the default, turns them off, which is what `server.send_path = "writev"` does);
//! past the bound, and below [`MIN_FILE_PAYLOAD`], a payload stays in memory only and goes
//! out by `writev`.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;

use super::Object;
use crate::sys;

/// Smallest payload given a file: below it a `writev` of the whole frame beats a `writev`
/// of the head plus a `sendfile` (two calls, page references instead of a small copy).
pub const MIN_FILE_PAYLOAD: usize = 16 << 10;

static LIMIT: AtomicUsize = AtomicUsize::new(0);
static OPEN: AtomicUsize = AtomicUsize::new(0);

/// Allow at most `n` payload files open at once (0: none).
pub fn set_limit(n: usize) {
    LIMIT.store(n, Ordering::Relaxed);
}

/// Payload files open now.
pub fn open() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// The bound in force.
pub fn limit() -> usize {
    LIMIT.load(Ordering::Relaxed)
}

/// Turn payload files on (bounded by [`default_limit`] of the process's open-file limit)
/// or off.
pub fn enable(on: bool) {
    set_limit(if on {
        default_limit(sys::open_file_limit())
    } else {
        0
    });
}

/// The default bound for a process allowed `fd_limit` open files: an eighth of them, at
/// most 4,096, leaving the rest to connections (the default connection limit counts them
/// out).
pub fn default_limit(fd_limit: Option<u64>) -> usize {
    fd_limit.map_or(1024, |l| (l / 8).min(4096) as usize)
}

/// One open payload file; its slot in the bound is given back when the last holder drops.
pub struct PayloadFile {
    fd: OwnedFd,
    /// Holds a slot of the bound (always, outside tests).
    counted: bool,
}

impl PayloadFile {
    /// Take a slot for a file, if the bound allows one.
    fn reserve() -> bool {
        let limit = LIMIT.load(Ordering::Relaxed);
        OPEN.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
            (n < limit).then_some(n + 1)
        })
        .is_ok()
    }

    /// The descriptor, for `sendfile`.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// A payload file outside the bound, for other modules' tests.
    #[cfg(test)]
    pub fn for_test(fd: OwnedFd) -> Arc<PayloadFile> {
        Arc::new(PayloadFile { fd, counted: false })
    }
}

impl Drop for PayloadFile {
    fn drop(&mut self) {
        if self.counted {
            OPEN.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where a payload's bytes sit in a payload file.
#[derive(Clone)]
pub struct FileSpan {
    pub file: Arc<PayloadFile>,
    /// Offset of the payload's first byte in the file.
    pub offset: u64,
}

/// A payload as queued for sending: its bytes, and the same bytes in a file when it has one.
#[derive(Clone, Default)]
pub struct Body {
    pub bytes: Bytes,
    pub file: Option<FileSpan>,
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        Body { bytes, file: None }
    }
}

impl Body {
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Whether a payload of `size` bytes should get a file (and a slot is free): the caller
/// then opens one and hands it to [`keep`].
pub fn wanted(size: usize) -> bool {
    size >= MIN_FILE_PAYLOAD && LIMIT.load(Ordering::Relaxed) > OPEN.load(Ordering::Relaxed)
}

/// Keep `fd` (an object's own file, holding its payload from byte 0) with `obj`, if the
/// bound allows; otherwise `obj` is returned as it is.
pub fn keep(mut obj: Object, fd: OwnedFd) -> Object {
    if obj.size() >= MIN_FILE_PAYLOAD && PayloadFile::reserve() {
        obj.file = Some(FileSpan {
            file: Arc::new(PayloadFile { fd, counted: true }),
            offset: 0,
        });
    }
    obj
}

/// Give `obj` a sealed memfd holding its buffer, and make its bytes a read-only mapping of
/// that file (the original buffer is released). Objects that already have a file, are
/// small, or find the bound full are returned as they are; so is one whose memfd fails
/// (logged), which then goes out by `writev`.
pub fn seal(obj: Object) -> Object {
    if obj.file.is_some() || obj.size() < MIN_FILE_PAYLOAD || !PayloadFile::reserve() {
        return obj;
    }
    let sealed = sys::sealed_memfd(&obj.buf).and_then(|fd| {
        let map = sys::Mapping::sealed(fd.as_raw_fd(), obj.buf.len())?;
        Ok((fd, map))
    });
    match sealed {
        Ok((fd, map)) => {
            let headroom = obj.headroom;
            Object {
                buf: Bytes::from_owner(map),
                file: Some(FileSpan {
                    file: Arc::new(PayloadFile { fd, counted: true }),
                    offset: headroom as u64,
                }),
                ..obj
            }
        }
        Err(e) => {
            OPEN.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(key = %obj.key, "payload memfd: {e}; sending from memory");
            obj
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One test owns the process-wide bound (tests run in threads of one process).
    #[test]
    fn sealing_and_the_bound() {
        let obj = |n: usize| {
            let mut v = vec![0u8; 8];
            v.extend((0..n).map(|i| (i % 251) as u8));
            Object::new(Bytes::from(v), 8, "k".into())
        };
        set_limit(0);
        assert!(seal(obj(64 << 10)).file.is_none(), "bound 0: no files");
        set_limit(2);
        assert!(
            seal(obj(100)).file.is_none(),
            "small payloads stay in memory"
        );
        let a = seal(obj(64 << 10));
        let span = a.file.clone().expect("a memfd");
        assert_eq!(span.offset, 8);
        assert_eq!(&a.payload()[..], &obj(64 << 10).payload()[..]);
        // The file holds the payload at the offset, and is sealed against writes.
        let mut back = vec![0u8; 64 << 10];
        let f = std::fs::File::from(span.file.fd.try_clone().unwrap());
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut back, 8).unwrap();
        assert_eq!(&back[..], &a.payload()[..]);
        assert!(std::os::unix::fs::FileExt::write_at(&f, b"x", 8).is_err());
        assert!(f.set_len(1).is_err());
        let b = seal(obj(64 << 10));
        assert!(b.file.is_some());
        assert_eq!(open(), 2);
        assert!(seal(obj(64 << 10)).file.is_none(), "the bound is full");
        drop((a, span, b));
        assert_eq!(open(), 0, "slots come back when the last holder drops");
        set_limit(0);
    }
}
