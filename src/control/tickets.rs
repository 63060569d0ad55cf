//! Keeping the ticket snapshot current, off the data path: a thread re-reading the ticket
//! file when it changes, or a tokio runtime syncing a Firestore collection; the last good
//! snapshot stays in force when a load fails. A ticket missing from the snapshot gets one
//! point lookup: in Firestore, or a re-read of the ticket file if it changed since the last
//! load, so a ticket issued a moment before its first use is accepted at once.

use std::sync::Arc;

use crate::config::Config;
use crate::tickets::file::FileStore;
use crate::tickets::firestore::{self, Firestore, FirestoreLookup, SyncSettings, Target};
use crate::tickets::snapshot::TicketCell;
use crate::tickets::{Found, Lookup, LookupFuture, TicketId};

/// What the workers get from the control plane about tickets: the cell they read and, for
/// stores that support it, the point-lookup service for tickets missing from the snapshot.
pub type Tickets = (Arc<TicketCell>, Option<Arc<dyn Lookup>>);

/// Start keeping the ticket snapshot for `config.tickets.url`.
pub fn start_tickets(config: &Config) -> anyhow::Result<Tickets> {
    let cell = Arc::new(TicketCell::default());
    let t = &config.tickets;
    if t.url.starts_with("firestore://") {
        let target = Target::parse(&t.url).map_err(|e| anyhow::anyhow!("tickets: {e}"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let emulator = std::env::var("FIRESTORE_EMULATOR_HOST").ok();
        let fs = Arc::new(Firestore::new(target, emulator.as_deref(), &handle));
        let settings = SyncSettings {
            sync_interval: t.sync_interval,
            full_resync_interval: t.full_resync_interval,
            deletion_check_interval: t.deletion_check_interval,
            snapshot_file: t.snapshot_file.clone(),
            page_size: t.page_size,
        };
        let lookup: Arc<dyn Lookup> = Arc::new(FirestoreLookup::new(
            fs.clone(),
            cell.clone(),
            handle,
            t.lookup_negative_ttl,
            f64::from(t.lookup_rate),
        ));
        tracing::info!(collection = %t.url, "tickets from Firestore");
        let c = cell.clone();
        std::thread::Builder::new()
            .name("tickets".into())
            .spawn(move || runtime.block_on(firestore::sync_forever(fs, c, settings)))?;
        return Ok((cell, Some(lookup)));
    }
    let path = t.url.strip_prefix("file://").unwrap_or(&t.url);
    let store = FileStore::new(path.into());
    // Whether the file as it is now could be read: an unknown ticket is only "invalid"
    // when it could (else the relay could not check it: 503).
    let mut readable = refresh(&store, &cell).unwrap_or(true);
    let (asks, asked) = flume::unbounded::<flume::Sender<bool>>();
    let (c, interval) = (cell.clone(), t.reload_interval);
    std::thread::Builder::new()
        .name("tickets".into())
        .spawn(move || loop {
            // Every `interval`, or at once when an upgrade presents a ticket the snapshot
            // does not have (all such asks waiting are answered by one load).
            let waiting: Vec<_> = match asked.recv_timeout(interval) {
                Ok(first) => std::iter::once(first).chain(asked.try_iter()).collect(),
                Err(flume::RecvTimeoutError::Timeout) => Vec::new(),
                Err(flume::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(interval);
                    Vec::new()
                }
            };
            if let Some(ok) = refresh(&store, &c) {
                readable = ok;
            }
            for done in waiting {
                let _ = done.send(readable);
            }
        })?;
    Ok((cell.clone(), Some(Arc::new(FileLookup { asks, cell }))))
}

/// Point lookups in the ticket file: the tickets thread re-reads it now if it changed, and
/// the upgrade then finds the ticket in the snapshot, or not. The worker only waits for the
/// answer (within `lookup_timeout`); it never touches the file.
struct FileLookup {
    asks: flume::Sender<flume::Sender<bool>>,
    cell: Arc<TicketCell>,
}

impl Lookup for FileLookup {
    fn find(&self, id: TicketId) -> LookupFuture {
        let (done, loaded) = flume::bounded(1);
        let asked = self.asks.send(done).is_ok();
        let cell = self.cell.clone();
        Box::pin(async move {
            // No answer, or a file that cannot be read: the ticket could not be checked.
            if !asked || loaded.recv_async().await != Ok(true) {
                return Found::Unavailable;
            }
            match cell.get(&id) {
                Some(record) => Found::Record(record),
                None => Found::Missing,
            }
        })
    }
}

/// Load the ticket file into the snapshot if it changed: `Some(true)` loaded, `Some(false)`
/// unreadable (the last good snapshot stays), `None` unchanged.
fn refresh(store: &FileStore, cell: &TicketCell) -> Option<bool> {
    use crate::tickets::TicketStore;
    match store.load_if_changed() {
        Ok(Some(records)) => {
            tracing::info!(tickets = records.len(), store = %store.describe(), "ticket snapshot loaded");
            cell.publish(records);
            cell.mark_synced();
            Some(true)
        }
        Ok(None) => {
            cell.mark_synced();
            None
        }
        Err(e) => {
            cell.sync_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("ticket store unreadable, keeping the last good snapshot: {e}");
            Some(false)
        }
    }
}
