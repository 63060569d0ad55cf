//! The upgrade rule: which connection attempts become connections. The ticket is checked
//! against the snapshot first (no lock, no I/O): valid there, it is accepted whatever its
//! address did before. Otherwise an address over its failure budget is refused (429)
//! before any more work; a ticket missing from the snapshot gets one bounded point lookup
//! (the only store call on the upgrade path), and a lookup that gets no answer is 503
//! `tickets_unavailable`, never "invalid"; then the per-ticket connection limit is taken.
//! Failed checks count against the client's address.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::limits::{ConnCounts, FailureLimiter};
use super::snapshot::TicketCell;
use super::{ticket_id, Found, Lookup, Refusal, TicketId, TicketRecord};

/// Everything the upgrade rule reads, shared by every worker.
pub struct Gate {
    /// The current ticket snapshot.
    pub tickets: Arc<TicketCell>,
    /// Point lookups of tickets missing from the snapshot (stores that have them).
    pub lookup: Option<Arc<dyn Lookup>>,
    /// Concurrent connections per ticket.
    pub conn_counts: ConnCounts,
    /// Failed ticket checks per client address.
    pub failures: FailureLimiter,
}

impl Gate {
    /// A gate over `tickets`, allowing `failure_limit` failed checks per address per
    /// `failure_window`.
    pub fn new(
        tickets: Arc<TicketCell>,
        lookup: Option<Arc<dyn Lookup>>,
        failure_limit: u32,
        failure_window: Duration,
    ) -> Gate {
        Gate {
            tickets,
            lookup,
            conn_counts: ConnCounts::default(),
            failures: FailureLimiter::new(failure_limit, failure_window),
        }
    }

    /// Check the ticket a client at `peer` presented (`None`: none). A ticket unknown to
    /// the snapshot is looked up in the store, waiting at most `lookup_timeout`.
    pub async fn check(
        &self,
        peer: IpAddr,
        ticket: Option<&str>,
        lookup_timeout: Duration,
    ) -> Result<(TicketId, Arc<TicketRecord>), Refusal> {
        // A ticket valid in the snapshot is accepted whatever its address's failure count:
        // many users share an address behind NAT. The limiter guards the work below.
        let checked = self.in_snapshot(ticket);
        if checked.is_ok() {
            return checked;
        }
        let now = Instant::now();
        if self.failures.is_limited(peer, now) {
            return Err(Refusal::RateLimited);
        }
        let checked = self.look_up(checked, ticket, lookup_timeout).await;
        if matches!(checked, Err(r) if r != Refusal::Unavailable) {
            self.failures.record_failure(peer, now);
        }
        checked
    }

    /// Check a ticket an open connection presents to replace its own (`refresh`): as an
    /// upgrade, without the per-address limit (the connection is authenticated already).
    pub async fn verify(
        &self,
        ticket: &str,
        lookup_timeout: Duration,
    ) -> Result<(TicketId, Arc<TicketRecord>), Refusal> {
        let checked = self.in_snapshot(Some(ticket));
        if checked.is_ok() {
            return checked;
        }
        self.look_up(checked, Some(ticket), lookup_timeout).await
    }

    fn in_snapshot(&self, ticket: Option<&str>) -> Result<(TicketId, Arc<TicketRecord>), Refusal> {
        self.tickets
            .load()
            .check(ticket, SystemTime::now())
            .map(|(id, r)| (id, r.clone()))
    }

    /// A ticket issued since the last sync: one bounded point lookup, for this request
    /// only. A lookup that gets no answer is `Unavailable`, never "invalid".
    async fn look_up(
        &self,
        checked: Result<(TicketId, Arc<TicketRecord>), Refusal>,
        ticket: Option<&str>,
        lookup_timeout: Duration,
    ) -> Result<(TicketId, Arc<TicketRecord>), Refusal> {
        let (Err(Refusal::Invalid), Some(lookup), Some(t)) = (&checked, &self.lookup, ticket)
        else {
            return checked;
        };
        let id = ticket_id(t);
        let found = match self.tickets.get(&id) {
            Some(r) => Found::Record(r),
            None => monoio::time::timeout(lookup_timeout, lookup.find(id))
                .await
                .unwrap_or(Found::Unavailable),
        };
        match found {
            Found::Record(record) => record.validity(SystemTime::now()).map(|()| (id, record)),
            Found::Missing => checked,
            Found::Unavailable => Err(Refusal::Unavailable),
        }
    }

    /// Take one of the ticket's connection slots; `Err` when all are taken.
    pub fn acquire(&self, id: &TicketId, record: &TicketRecord) -> Result<(), Refusal> {
        if self.conn_counts.acquire(id, record.max_connections) {
            Ok(())
        } else {
            Err(Refusal::TooManyConnections)
        }
    }

    /// Give a connection slot back.
    pub fn release(&self, id: &TicketId) {
        self.conn_counts.release(id);
    }
}
