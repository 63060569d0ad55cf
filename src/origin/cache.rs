//! The segment cache and single-flight origin fetches, shared by all workers.
//!
//! `get` answers from an LRU cache with a byte budget; on a miss it joins the fetch already
//! under way for that key (on any worker) or starts one. The fetch runs as its own task, so
//! a requester that goes away never strands the others waiting on it. However many viewers
//! ask, each key is read from the origin once while it stays cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use event_listener::Event;
use lru::LruCache;

use super::{Object, Origin, OriginError};

/// Upper bounds (seconds) of the origin fetch latency histogram's buckets.
pub const FETCH_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Latency of origin object reads (a Prometheus histogram, cumulative at render time).
#[derive(Default)]
pub struct FetchLatency {
    /// Per bucket (not cumulative); the last one is +Inf.
    pub buckets: [AtomicU64; 14],
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

impl FetchLatency {
    /// Record one fetch.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = FETCH_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(FETCH_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters for metrics.
#[derive(Default)]
pub struct CacheStats {
    pub fetch_latency: FetchLatency,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub evictions: AtomicU64,
    /// Origin object reads by result: ok, not_found, too_large, unavailable.
    pub origin_results: [AtomicU64; 4],
    pub bytes: AtomicU64,
    pub entries: AtomicU64,
}

struct Flight {
    result: OnceLock<Result<Object, OriginError>>,
    done: Event,
}

struct Lru {
    map: LruCache<Arc<str>, Object>,
    bytes: usize,
}

/// Cache plus single-flight.
pub struct Cache {
    origin: Arc<dyn Origin>,
    budget: usize,
    max_object: u64,
    lru: Mutex<Lru>,
    flights: Mutex<HashMap<Arc<str>, Arc<Flight>>>,
    pub stats: CacheStats,
}

impl Cache {
    /// A cache of `budget` bytes in front of `origin`.
    pub fn new(origin: Arc<dyn Origin>, budget: usize, max_object: u64) -> Cache {
        Cache {
            origin,
            budget,
            max_object,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                bytes: 0,
            }),
            flights: Mutex::new(HashMap::new()),
            stats: CacheStats::default(),
        }
    }

    /// The origin behind the cache.
    pub fn origin(&self) -> &Arc<dyn Origin> {
        &self.origin
    }

    /// A cached object, marking it recently used.
    pub fn lookup(&self, key: &str) -> Option<Object> {
        let mut lru = self.lru.lock().ok()?;
        lru.map.get(key).cloned()
    }

    fn publish_size(&self, lru: &Lru) {
        self.stats.bytes.store(lru.bytes as u64, Ordering::Relaxed);
        self.stats
            .entries
            .store(lru.map.len() as u64, Ordering::Relaxed);
    }

    fn insert(&self, obj: &Object) {
        let size = obj.mem_size();
        // An object over an eighth of the budget would evict too much to be worth keeping.
        if size > self.budget / 8 {
            return;
        }
        let Ok(mut lru) = self.lru.lock() else { return };
        if let Some(old) = lru.map.put(obj.key.clone(), obj.clone()) {
            lru.bytes -= old.mem_size();
        }
        lru.bytes += size;
        while lru.bytes > self.budget {
            match lru.map.pop_lru() {
                Some((_, old)) => {
                    lru.bytes -= old.mem_size();
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                }
                None => break,
            }
        }
        self.publish_size(&lru);
    }

    /// Put an object just written to the origin (ingest) in the cache, in place of any
    /// older one under its key.
    pub fn replace(&self, obj: &Object) {
        self.forget(&obj.key);
        self.insert(obj);
    }

    /// Read `key` from the origin again, bypassing the cache, and put what it holds now in
    /// the cache's place (an object that can change in storage: a stream's init segment).
    /// A key no longer in storage leaves the cache too.
    pub async fn refresh(&self, key: &str) -> Result<Object, OriginError> {
        let started = std::time::Instant::now();
        let r = self.origin.get(key, self.max_object).await;
        self.stats.fetch_latency.observe(started.elapsed());
        self.count(&r);
        match &r {
            Ok(obj) => self.insert(obj),
            Err(OriginError::NotFound) => self.forget(key),
            Err(_) => {}
        }
        r
    }

    /// Count an origin read by its result.
    fn count(&self, r: &Result<Object, OriginError>) {
        let i = match r {
            Ok(_) => 0,
            Err(OriginError::NotFound) => 1,
            Err(OriginError::TooLarge { .. }) => 2,
            Err(OriginError::Unavailable(_)) => 3,
        };
        self.stats.origin_results[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Drop `key` from the cache.
    pub fn forget(&self, key: &str) {
        let Ok(mut lru) = self.lru.lock() else { return };
        if let Some(old) = lru.map.pop(key) {
            lru.bytes -= old.mem_size();
            self.publish_size(&lru);
        }
    }

    /// The object `key` (validated), from the cache or the origin (once per key however
    /// many ask at the same time). Must be called on a worker runtime.
    pub async fn get(self: &Arc<Self>, key: &str) -> Result<Object, OriginError> {
        if let Some(obj) = self.lookup(key) {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(obj);
        }
        let (flight, leader) = {
            let mut flights = self
                .flights
                .lock()
                .map_err(|_| OriginError::Unavailable("cache lock poisoned".into()))?;
            match flights.get(key) {
                Some(f) => (f.clone(), false),
                None => {
                    let f = Arc::new(Flight {
                        result: OnceLock::new(),
                        done: Event::new(),
                    });
                    flights.insert(Arc::from(key), f.clone());
                    (f, true)
                }
            }
        };
        if leader {
            self.stats.misses.fetch_add(1, Ordering::Relaxed);
            let this = self.clone();
            let key: Arc<str> = Arc::from(key);
            let f = flight.clone();
            monoio::spawn(async move {
                // Another flight may have filled the cache between our lookup and now.
                let result = match this.lookup(&key) {
                    Some(obj) => Ok(obj),
                    None => {
                        let started = std::time::Instant::now();
                        let r = this.origin.get(&key, this.max_object).await;
                        this.stats.fetch_latency.observe(started.elapsed());
                        if let Ok(obj) = &r {
                            this.insert(obj);
                        }
                        this.count(&r);
                        r
                    }
                };
                let _ = f.result.set(result);
                if let Ok(mut flights) = this.flights.lock() {
                    flights.remove(&key);
                }
                f.done.notify(usize::MAX);
            });
        } else {
            self.stats.coalesced.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            if let Some(r) = flight.result.get() {
                return r.clone();
            }
            let listener = flight.done.listen();
            if let Some(r) = flight.result.get() {
                return r.clone();
            }
            listener.await;
        }
    }
}
