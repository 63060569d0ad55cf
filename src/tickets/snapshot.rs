//! The immutable ticket snapshot the workers read, and the cell it is swapped through.
//!
//! The control plane builds a new [`Snapshot`] whenever the store changes and publishes it
//! with one atomic pointer swap; workers load it without locking. A snapshot is never
//! replaced by an empty one because a load failed: the last good one keeps serving.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;

use super::{ticket_id, Refusal, TicketId, TicketRecord};

/// Every ticket record, by id.
#[derive(Default)]
pub struct Snapshot {
    records: HashMap<TicketId, Arc<TicketRecord>>,
    /// Increases with every swap; workers re-check their connections when it moves.
    pub version: u64,
    /// When the snapshot was built.
    pub built_at: Option<SystemTime>,
}

impl Snapshot {
    /// Build from store records.
    pub fn new(records: Vec<(TicketId, TicketRecord)>, version: u64) -> Snapshot {
        Snapshot {
            records: records
                .into_iter()
                .map(|(id, r)| (id, Arc::new(r)))
                .collect(),
            version,
            built_at: Some(SystemTime::now()),
        }
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record for an id.
    pub fn get(&self, id: &TicketId) -> Option<&Arc<TicketRecord>> {
        self.records.get(id)
    }

    /// Check a presented ticket string. Hot path: one SHA-256, one probe, no allocation.
    pub fn check(
        &self,
        ticket: Option<&str>,
        now: SystemTime,
    ) -> Result<(TicketId, Arc<TicketRecord>), Refusal> {
        let ticket = ticket.filter(|t| !t.is_empty()).ok_or(Refusal::Missing)?;
        let id = ticket_id(ticket);
        let record = self.records.get(&id).ok_or(Refusal::Invalid)?;
        record.validity(now)?;
        Ok((id, record.clone()))
    }
}

/// The shared cell holding the current snapshot.
pub struct TicketCell {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    next_version: AtomicU64,
}

impl Default for TicketCell {
    fn default() -> Self {
        TicketCell {
            current: ArcSwap::from_pointee(Snapshot::default()),
            ready: AtomicBool::new(false),
            next_version: AtomicU64::new(1),
        }
    }
}

impl TicketCell {
    /// The current snapshot.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// Publish a new collection.
    pub fn publish(&self, records: Vec<(TicketId, TicketRecord)>) {
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        self.current
            .store(Arc::new(Snapshot::new(records, version)));
        self.ready.store(true, Ordering::Release);
    }

    /// Whether a snapshot has been loaded at least once.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rec(expires_in: u64, revoked: bool) -> TicketRecord {
        let now = SystemTime::now();
        TicketRecord {
            uid: "alice".into(),
            streams: vec!["live/*".into()],
            expires_at: now + Duration::from_secs(expires_in),
            revoked,
            max_connections: None,
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
}
