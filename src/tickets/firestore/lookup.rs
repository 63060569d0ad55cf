//! Point lookups of tickets missing from the snapshot (issued since the last sync):
//! [`FirestoreLookup`] coalesces them per id and puts them behind a negative cache and a
//! global rate limit, so a flood of unknown tickets cannot become a flood of reads.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::Firestore;
use crate::tickets::snapshot::TicketCell;
use crate::tickets::{Found, Lookup, LookupFuture, TicketId};

/// Point lookups of tickets missing from the snapshot.
pub struct FirestoreLookup {
    fs: Arc<Firestore>,
    cell: Arc<TicketCell>,
    runtime: tokio::runtime::Handle,
    negative_ttl: Duration,
    rate: f64,
    state: Arc<Mutex<LookupState>>,
}

type Waiters = Vec<tokio::sync::oneshot::Sender<Found>>;

struct LookupState {
    inflight: HashMap<TicketId, Waiters>,
    negative: HashMap<TicketId, Instant>,
    tokens: f64,
    refilled: Instant,
}

impl FirestoreLookup {
    /// Lookups of at most `rate` per second (burst `rate`), misses remembered `negative_ttl`.
    pub fn new(
        fs: Arc<Firestore>,
        cell: Arc<TicketCell>,
        runtime: tokio::runtime::Handle,
        negative_ttl: Duration,
        rate: f64,
    ) -> FirestoreLookup {
        FirestoreLookup {
            fs,
            cell,
            runtime,
            negative_ttl,
            rate,
            state: Arc::new(Mutex::new(LookupState {
                inflight: HashMap::new(),
                negative: HashMap::new(),
                tokens: rate,
                refilled: Instant::now(),
            })),
        }
    }

    fn count(&self, i: usize) {
        self.cell.lookups[i].fetch_add(1, Ordering::Relaxed);
    }
}

impl Lookup for FirestoreLookup {
    fn find(&self, id: TicketId) -> LookupFuture {
        let now = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let Ok(mut st) = self.state.lock() else {
                return Box::pin(async { Found::Unavailable });
            };
            if st.negative.get(&id).is_some_and(|until| *until > now) {
                self.count(1);
                return Box::pin(async { Found::Missing });
            }
            if let Some(waiters) = st.inflight.get_mut(&id) {
                waiters.push(tx);
                return Box::pin(async move { rx.await.unwrap_or(Found::Unavailable) });
            }
            let elapsed = now.duration_since(st.refilled).as_secs_f64();
            st.tokens = (st.tokens + elapsed * self.rate).min(self.rate.max(1.0));
            st.refilled = now;
            if st.tokens < 1.0 {
                self.count(2);
                return Box::pin(async { Found::Unavailable });
            }
            st.tokens -= 1.0;
            if st.negative.len() > 100_000 {
                st.negative.retain(|_, until| *until > now);
            }
            st.inflight.insert(id, vec![tx]);
        }
        let (fs, cell) = (self.fs.clone(), self.cell.clone());
        let ttl = self.negative_ttl;
        let state = self.state.clone();
        self.runtime.spawn(async move {
            let result = fs.get(&id).await;
            let (found, outcome) = match result {
                Ok(Some(d)) => (Found::Record(Arc::new(d.record)), 0),
                Ok(None) => (Found::Missing, 1),
                Err(e) => {
                    tracing::warn!("ticket lookup failed: {e}");
                    (Found::Unavailable, 3)
                }
            };
            cell.lookups[outcome].fetch_add(1, Ordering::Relaxed);
            if let Found::Record(r) = &found {
                cell.remember(id, r.clone());
            }
            let waiters = {
                let mut st = state.lock().unwrap_or_else(|e| e.into_inner());
                if outcome == 1 {
                    st.negative.insert(id, Instant::now() + ttl);
                }
                st.inflight.remove(&id).unwrap_or_default()
            };
            for w in waiters {
                let _ = w.send(found.clone());
            }
        });
        Box::pin(async move { rx.await.unwrap_or(Found::Unavailable) })
    }
}
