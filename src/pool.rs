//! Pooled payload buffers.
//!
//! Origin reads fill a buffer taken from here; the buffer is then frozen into one
//! [`Bytes`] that every viewer's send shares. When the last reference drops (on whichever
//! worker sent last) the allocation returns to its size class instead of going back to
//! the allocator, so a steady live stream reuses the same few buffers.
//!
//! Classes are powers of two from 4 KiB to 16 MiB; larger buffers are not pooled. The
//! pool keeps at most [`MAX_POOLED_BYTES`] idle.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

const MIN_CLASS: u32 = 12; // 4 KiB
const MAX_CLASS: u32 = 24; // 16 MiB
const CLASSES: usize = (MAX_CLASS - MIN_CLASS + 1) as usize;
/// Upper bound of idle pooled memory.
pub const MAX_POOLED_BYTES: usize = 64 << 20;

static POOL: [Mutex<Vec<Vec<u8>>>; CLASSES] = [const { Mutex::new(Vec::new()) }; CLASSES];
static IDLE_BYTES: AtomicUsize = AtomicUsize::new(0);
static REUSED: AtomicUsize = AtomicUsize::new(0);

fn class_of(cap: usize) -> Option<usize> {
    let bits = cap
        .max(1)
        .next_power_of_two()
        .trailing_zeros()
        .max(MIN_CLASS);
    (bits <= MAX_CLASS).then(|| (bits - MIN_CLASS) as usize)
}

/// An empty buffer with capacity for at least `cap` bytes.
pub fn take(cap: usize) -> Vec<u8> {
    let Some(class) = class_of(cap) else {
        return Vec::with_capacity(cap);
    };
    let reused = POOL[class].lock().ok().and_then(|mut v| v.pop());
    match reused {
        Some(mut v) => {
            IDLE_BYTES.fetch_sub(v.capacity(), Ordering::Relaxed);
            REUSED.fetch_add(1, Ordering::Relaxed);
            v.clear();
            v
        }
        None => Vec::with_capacity(1 << (class as u32 + MIN_CLASS)),
    }
}

fn give_back(v: Vec<u8>) {
    let cap = v.capacity();
    // Only exact class sizes come back (buffers that were made by `take`).
    if !cap.is_power_of_two() {
        return;
    }
    let Some(class) = class_of(cap) else { return };
    if IDLE_BYTES.load(Ordering::Relaxed) + cap > MAX_POOLED_BYTES {
        return;
    }
    if let Ok(mut list) = POOL[class].lock() {
        IDLE_BYTES.fetch_add(cap, Ordering::Relaxed);
        list.push(v);
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
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(4096), Some(0));
        assert_eq!(class_of(4097), Some(1));
        assert_eq!(class_of(16 << 20), Some(12));
        assert_eq!(class_of((16 << 20) + 1), None);
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
