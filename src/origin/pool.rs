//! Pooled payload buffers.
//!
//! Origin reads fill a buffer taken from here; the buffer is then frozen into one
//! [`Bytes`] that every viewer's send shares. When the last reference drops (on whichever
//! worker sent last) the allocation returns to its size class instead of going back to
//! the allocator, so a steady live stream reuses the same few buffers.
//!
//! Size classes step by an eighth of a power of two (at most 12.5% slack; 4 KiB minimum),
//! up to 64 MiB; larger buffers are not pooled. The pool keeps at most
//! [`MAX_POOLED_BYTES`] idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// Largest pooled buffer.
const MAX_POOLED_BUFFER: usize = 64 << 20;
/// Upper bound of idle pooled memory.
pub const MAX_POOLED_BYTES: usize = 128 << 20;
/// Idle buffers kept per class.
const PER_CLASS: usize = 64;

static POOL: Mutex<Option<HashMap<usize, Vec<Vec<u8>>>>> = Mutex::new(None);
static IDLE_BYTES: AtomicUsize = AtomicUsize::new(0);
static REUSED: AtomicUsize = AtomicUsize::new(0);

/// The capacity a request for `cap` bytes gets: `cap` rounded up to an eighth of its
/// power of two.
pub fn class_of(cap: usize) -> Option<usize> {
    if cap > MAX_POOLED_BUFFER {
        return None;
    }
    let cap = cap.max(1);
    let floor_pow2 = 1usize << (usize::BITS - 1 - cap.leading_zeros());
    let step = (floor_pow2 / 8).max(4096);
    Some(cap.div_ceil(step) * step)
}

/// An empty buffer with capacity for at least `cap` bytes.
pub fn take(cap: usize) -> Vec<u8> {
    let Some(class) = class_of(cap) else {
        return Vec::with_capacity(cap);
    };
    let reused = POOL
        .lock()
        .ok()
        .and_then(|mut p| p.as_mut()?.get_mut(&class)?.pop());
    match reused {
        Some(mut v) => {
            IDLE_BYTES.fetch_sub(v.capacity(), Ordering::Relaxed);
            REUSED.fetch_add(1, Ordering::Relaxed);
            v.clear();
            v
        }
        None => Vec::with_capacity(class),
    }
}

fn give_back(v: Vec<u8>) {
    let cap = v.capacity();
    // Only exact class sizes come back (buffers that were made by `take`).
    if class_of(cap) != Some(cap) || IDLE_BYTES.load(Ordering::Relaxed) + cap > MAX_POOLED_BYTES {
        return;
    }
    if let Ok(mut pool) = POOL.lock() {
        let list = pool
            .get_or_insert_with(HashMap::new)
            .entry(cap)
            .or_default();
        if list.len() < PER_CLASS {
            IDLE_BYTES.fetch_add(cap, Ordering::Relaxed);
            list.push(v);
        }
    }
}

/// Owner of a pooled allocation inside a [`Bytes`]; returns it to the pool on drop.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.0));
    }
}

/// Freeze a filled buffer into shared, immutable bytes that return to the pool when the
/// last clone is dropped.
pub fn freeze(v: Vec<u8>) -> Bytes {
    Bytes::from_owner(Pooled(v))
}

/// Idle bytes held by the pool and how many takes were served from it.
pub fn stats() -> (usize, usize) {
    (
        IDLE_BYTES.load(Ordering::Relaxed),
        REUSED.load(Ordering::Relaxed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(class_of(1), Some(4096));
        assert_eq!(class_of(4096), Some(4096));
        assert_eq!(class_of(4097), Some(8192));
        let mib = 1 << 20;
        assert_eq!(class_of(mib), Some(mib));
        // A 1 MiB segment plus headroom costs 1.125 MiB, not 2 MiB.
        assert_eq!(class_of(mib + 4000), Some(mib + mib / 8));
        assert_eq!(class_of(64 << 20), Some(64 << 20));
        assert_eq!(class_of((64 << 20) + 1), None);
        for n in [40_000usize, 70_000, 1_000_000, 3_333_333] {
            let c = class_of(n).unwrap();
            assert!(c >= n && (c - n) * 8 <= c, "{n} -> {c}");
        }
    }

    #[test]
    fn buffers_come_back() {
        let mut v = take(100_000);
        let cap = v.capacity();
        let ptr = v.as_ptr();
        v.extend_from_slice(&[7u8; 1000]);
        let b = freeze(v);
        let c = b.clone();
        drop(b);
        assert_eq!(c[999], 7);
        drop(c);
        // Another test may race us for the same class; look for our buffer a few times.
        let mut found = false;
        let mut held = Vec::new();
        for _ in 0..8 {
            let v = take(cap);
            if v.as_ptr() == ptr {
                found = true;
                break;
            }
            held.push(v);
        }
        assert!(found, "buffer was not reused");
    }
}
