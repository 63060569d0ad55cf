//! Per-relay admission limits around tickets: concurrent connections per ticket
//! (`maxConnections`) and failed ticket checks per client IP (429 `rate_limited`).
//!
//! Both are touched once per connection attempt, never per frame.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TicketId;

/// Live connections per ticket on this relay.
#[derive(Default)]
pub struct ConnCounts {
    counts: Mutex<HashMap<TicketId, u32>>,
}

impl ConnCounts {
    /// Take a slot for `id` unless `max` are taken.
    pub fn acquire(&self, id: &TicketId, max: Option<u32>) -> bool {
        let Ok(mut m) = self.counts.lock() else {
            return false;
        };
        let n = m.entry(*id).or_insert(0);
        if max.is_some_and(|max| *n >= max) {
            if *n == 0 {
                m.remove(id);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Give a slot back.
    pub fn release(&self, id: &TicketId) {
        if let Ok(mut m) = self.counts.lock() {
            if let Some(n) = m.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    m.remove(id);
                }
            }
        }
    }
}

/// Counts failed ticket checks per IP in fixed windows.
pub struct FailureLimiter {
    limit: u32,
    window: Duration,
    /// Failures per address in its current window, the least recently failing address
    /// evicted first once [`MAX_TRACKED`] addresses are held.
    by_ip: Mutex<lru::LruCache<IpAddr, (u32, Instant)>>,
}

/// Most addresses the limiter remembers: its memory is bounded (about 64 bytes an address)
/// however many addresses fail. An evicted address starts again from zero failures.
pub const MAX_TRACKED: usize = 65_536;

impl FailureLimiter {
    /// `limit` failures per `window` per IP; 0 disables the limiter.
    pub fn new(limit: u32, window: Duration) -> Self {
        Self::with_capacity(limit, window, MAX_TRACKED)
    }

    /// As [`FailureLimiter::new`], remembering at most `capacity` addresses.
    pub fn with_capacity(limit: u32, window: Duration, capacity: usize) -> Self {
        let capacity = std::num::NonZeroUsize::new(capacity).unwrap_or(std::num::NonZeroUsize::MIN);
        FailureLimiter {
            limit,
            window,
            by_ip: Mutex::new(lru::LruCache::new(capacity)),
        }
    }

    /// Whether `ip` has used up its failures.
    pub fn is_limited(&self, ip: IpAddr, now: Instant) -> bool {
        if self.limit == 0 {
            return false;
        }
        let Ok(m) = self.by_ip.lock() else {
            return false;
        };
        m.peek(&ip)
            .is_some_and(|(n, start)| now.duration_since(*start) < self.window && *n >= self.limit)
    }

    /// Record one failure.
    pub fn record_failure(&self, ip: IpAddr, now: Instant) {
        if self.limit == 0 {
            return;
        }
        let Ok(mut m) = self.by_ip.lock() else { return };
        let e = m.get_or_insert_mut(ip, || (0, now));
        if now.duration_since(e.1) >= self.window {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// Addresses remembered now.
    pub fn tracked(&self) -> usize {
        self.by_ip.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections() {
        let c = ConnCounts::default();
        let id = [1u8; 32];
        assert!(c.acquire(&id, Some(2)));
        assert!(c.acquire(&id, Some(2)));
        assert!(!c.acquire(&id, Some(2)));
        c.release(&id);
        assert!(c.acquire(&id, Some(2)));
        assert!(c.acquire(&[2u8; 32], None));
    }

    #[test]
    fn failures_per_ip() {
        let l = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let t = Instant::now();
        for _ in 0..3 {
            assert!(!l.is_limited(ip, t));
            l.record_failure(ip, t);
        }
        assert!(l.is_limited(ip, t));
        assert!(!l.is_limited("127.0.0.3".parse().unwrap(), t));
        assert!(!l.is_limited(ip, t + Duration::from_secs(61)));
    }

    #[test]
    fn memory_is_bounded_however_many_addresses_fail() {
        let l = FailureLimiter::with_capacity(2, Duration::from_secs(60), 100);
        let t = Instant::now();
        for i in 0..10_000u32 {
            l.record_failure(IpAddr::from(i.to_be_bytes()), t);
        }
        assert_eq!(l.tracked(), 100);
        // The newest offenders are still tracked.
        let last = IpAddr::from(9_999u32.to_be_bytes());
        l.record_failure(last, t);
        assert!(l.is_limited(last, t));
    }
}
