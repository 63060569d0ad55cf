//! The immutable ticket snapshot the workers read, and the cell it is swapped through.
//!
//! A snapshot is a large `base` map (rebuilt by a full load) plus a small `delta` of the
//! changes seen since (incremental syncs), so applying a sync costs O(changes), not
//! O(tickets); a lookup is at most two hash probes. The control plane publishes each new
//! snapshot with one atomic pointer swap; workers load it without locking. A snapshot is
//! never replaced by an empty one because a load failed: the last good one keeps serving.
//!
//! Tickets found by a point lookup (issued after the last sync) are kept in a small `recent`
//! map until a sync brings them into the snapshot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;

use super::{ticket_id, Refusal, TicketId, TicketRecord};

/// Hashes a ticket id by its first eight bytes. Ids are SHA-256 outputs, uniformly
/// distributed, so re-hashing them (SipHash) would only add time to every check. Only the
/// operator's tickets are ever inserted, so a client choosing tickets cannot lengthen chains.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    fn write_usize(&mut self, _: usize) {
        // The length prefix of a fixed-size id carries nothing.
    }
}

type IdBuild = std::hash::BuildHasherDefault<IdHasher>;
type Map = HashMap<TicketId, Arc<TicketRecord>, IdBuild>;

/// Every ticket record, by id.
#[derive(Default)]
pub struct Snapshot {
    base: Arc<Map>,
    /// Changes since `base`: `None` marks a deletion.
    delta: HashMap<TicketId, Option<Arc<TicketRecord>>, IdBuild>,
    len: usize,
    /// Increases with every swap; workers re-check their connections when it moves.
    pub version: u64,
    /// When the snapshot was built.
    pub built_at: Option<SystemTime>,
}

impl Snapshot {
    /// Build from store records.
    pub fn new(records: Vec<(TicketId, TicketRecord)>, version: u64) -> Snapshot {
        let base: Map = records
            .into_iter()
            .map(|(id, r)| (id, Arc::new(r)))
            .collect();
        Snapshot {
            len: base.len(),
            base: Arc::new(base),
            delta: HashMap::default(),
            version,
            built_at: Some(SystemTime::now()),
        }
    }

    /// This snapshot with `changes` applied (`None` deletes).
    fn with_changes(
        &self,
        changes: Vec<(TicketId, Option<TicketRecord>)>,
        version: u64,
    ) -> Snapshot {
        let mut delta = self.delta.clone();
        let mut len = self.len;
        for (id, r) in changes {
            let was = self.get(&id).is_some();
            let is = r.is_some();
            delta.insert(id, r.map(Arc::new));
            len = len + usize::from(is) - usize::from(was);
        }
        let mut snap = Snapshot {
            base: self.base.clone(),
            delta,
            len,
            version,
            built_at: Some(SystemTime::now()),
        };
        // Fold a delta that has grown large into a new base.
        if snap.delta.len() > 4096 && snap.delta.len() * 8 > snap.base.len() {
            let mut base = (*snap.base).clone();
            for (id, r) in snap.delta.drain() {
                match r {
                    Some(r) => base.insert(id, r),
                    None => base.remove(&id),
                };
            }
            snap.base = Arc::new(base);
        }
        snap
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Record for an id.
    pub fn get(&self, id: &TicketId) -> Option<&Arc<TicketRecord>> {
        match self.delta.get(id) {
            Some(r) => r.as_ref(),
            None => self.base.get(id),
        }
    }

    /// Every record (for persisting the snapshot).
    pub fn records(&self) -> Vec<(TicketId, Arc<TicketRecord>)> {
        let mut out: Vec<_> = self
            .base
            .iter()
            .filter(|(id, _)| !self.delta.contains_key(*id))
            .map(|(id, r)| (*id, r.clone()))
            .collect();
        out.extend(
            self.delta
                .iter()
                .filter_map(|(id, r)| r.as_ref().map(|r| (*id, r.clone()))),
        );
        out
    }

    /// Check a presented ticket string. Hot path: one SHA-256, at most two probes, no
    /// allocation, no reference-count traffic (the caller clones the record it keeps).
    pub fn check(
        &self,
        ticket: Option<&str>,
        now: SystemTime,
    ) -> Result<(TicketId, &Arc<TicketRecord>), Refusal> {
        let ticket = ticket.filter(|t| !t.is_empty()).ok_or(Refusal::Missing)?;
        let id = ticket_id(ticket);
        let record = self.get(&id).ok_or(Refusal::Invalid)?;
        record.validity(now)?;
        Ok((id, record))
    }
}

/// The shared cell holding the current snapshot, plus what the control plane reports.
pub struct TicketCell {
    current: ArcSwap<Snapshot>,
    recent: Mutex<Map>,
    ready: AtomicBool,
    next_version: AtomicU64,
    /// Unix milliseconds of the last successful load or sync (0: never).
    synced_ms: AtomicU64,
    /// Failed loads or syncs.
    pub sync_errors: AtomicU64,
    /// Point lookups by outcome: found, missing, rate-limited, failed.
    pub lookups: [AtomicU64; 4],
}

impl Default for TicketCell {
    fn default() -> Self {
        TicketCell {
            current: ArcSwap::from_pointee(Snapshot::default()),
            recent: Mutex::new(HashMap::default()),
            ready: AtomicBool::new(false),
            next_version: AtomicU64::new(1),
            synced_ms: AtomicU64::new(0),
            sync_errors: AtomicU64::new(0),
            lookups: Default::default(),
        }
    }
}

impl TicketCell {
    /// The current snapshot.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc` (for holding it across many checks).
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The record for `id`: the snapshot's, or one a point lookup found.
    pub fn get(&self, id: &TicketId) -> Option<Arc<TicketRecord>> {
        if let Some(r) = self.current.load().get(id) {
            return Some(r.clone());
        }
        self.recent.lock().ok()?.get(id).cloned()
    }

    /// Keep a record found by a point lookup until a sync brings it in.
    pub fn remember(&self, id: TicketId, record: Arc<TicketRecord>) {
        if let Ok(mut r) = self.recent.lock() {
            r.insert(id, record);
        }
    }

    fn swap(&self, snap: Snapshot) {
        let snap = Arc::new(snap);
        self.current.store(snap.clone());
        if let Ok(mut recent) = self.recent.lock() {
            recent.retain(|id, _| snap.get(id).is_none());
        }
        self.ready.store(true, Ordering::Release);
    }

    /// Publish a whole new collection.
    pub fn publish(&self, records: Vec<(TicketId, TicketRecord)>) {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        self.swap(Snapshot::new(records, version));
    }

    /// Publish the current snapshot with `changes` applied (`None` deletes).
    pub fn apply(&self, changes: Vec<(TicketId, Option<TicketRecord>)>) {
        if changes.is_empty() {
            return;
        }
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let next = self.current.load().with_changes(changes, version);
        self.swap(next);
    }

    /// Record a successful load or sync.
    pub fn mark_synced(&self) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.synced_ms.store(ms, Ordering::Relaxed);
    }

    /// Time since the last successful load or sync, if there was one.
    pub fn age(&self) -> Option<Duration> {
        let ms = self.synced_ms.load(Ordering::Relaxed);
        if ms == 0 {
            return None;
        }
        let then = UNIX_EPOCH + Duration::from_millis(ms);
        Some(SystemTime::now().duration_since(then).unwrap_or_default())
    }

    /// Whether a snapshot has been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(expires_in: u64, revoked: bool) -> TicketRecord {
        let now = SystemTime::now();
        TicketRecord {
            uid: "alice".into(),
            streams: vec!["live/*".into()],
            expires_at: now + Duration::from_secs(expires_in),
            revoked,
            max_connections: None,
            publish: Vec::new(),
            updated_at: now,
        }
    }

    #[test]
    fn check_each_case() {
        let cell = TicketCell::default();
        assert!(!cell.is_ready());
        cell.publish(vec![
            (ticket_id("good"), rec(60, false)),
            (ticket_id("old"), rec(0, false)),
            (ticket_id("gone"), rec(60, true)),
        ]);
        assert!(cell.is_ready());
        let s = cell.load();
        let now = SystemTime::now();
        assert_eq!(s.check(Some("good"), now).unwrap().1.uid, "alice");
        assert_eq!(s.check(None, now).unwrap_err(), Refusal::Missing);
        assert_eq!(s.check(Some(""), now).unwrap_err(), Refusal::Missing);
        assert_eq!(s.check(Some("nope"), now).unwrap_err(), Refusal::Invalid);
        assert_eq!(s.check(Some("old"), now).unwrap_err(), Refusal::Expired);
        assert_eq!(s.check(Some("gone"), now).unwrap_err(), Refusal::Revoked);
        let v = s.version;
        cell.publish(vec![]);
        assert!(cell.load().version > v);
    }

    #[test]
    fn deltas_and_recent() {
        let cell = TicketCell::default();
        cell.publish(vec![
            (ticket_id("a"), rec(60, false)),
            (ticket_id("b"), rec(60, false)),
        ]);
        let v = cell.load().version;
        cell.apply(vec![
            (ticket_id("a"), Some(rec(60, true))),
            (ticket_id("b"), None),
            (ticket_id("c"), Some(rec(60, false))),
        ]);
        let s = cell.load();
        assert!(s.version > v);
        assert_eq!(s.len(), 2);
        assert!(s.get(&ticket_id("a")).unwrap().revoked);
        assert!(s.get(&ticket_id("b")).is_none());
        assert!(s.get(&ticket_id("c")).is_some());
        assert_eq!(s.records().len(), 2);
        cell.apply(vec![]);
        assert_eq!(cell.load().version, s.version, "no change, no swap");
        // A looked-up ticket stays visible until a sync brings it in, then leaves `recent`.
        cell.remember(ticket_id("d"), Arc::new(rec(60, false)));
        assert!(cell.get(&ticket_id("d")).is_some());
        cell.apply(vec![(ticket_id("d"), Some(rec(60, true)))]);
        assert!(cell.get(&ticket_id("d")).unwrap().revoked);
        assert!(cell.recent.lock().unwrap().is_empty());
        assert!(cell.age().is_none());
        cell.mark_synced();
        assert!(cell.age().unwrap() < Duration::from_secs(1));
    }

    #[test]
    fn big_deltas_fold_into_the_base() {
        let cell = TicketCell::default();
        cell.publish(vec![(ticket_id("x"), rec(60, false))]);
        let changes: Vec<_> = (0..5000)
            .map(|i| (ticket_id(&i.to_string()), Some(rec(60, false))))
            .collect();
        cell.apply(changes);
        let s = cell.load();
        assert_eq!(s.len(), 5001);
        assert!(s.delta.is_empty());
        assert!(s.get(&ticket_id("4999")).is_some());
    }
}
