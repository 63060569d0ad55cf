//! Keeping the ticket snapshot current, off the data path: a thread re-reading the ticket
//! file when it changes, or a tokio runtime syncing a Firestore collection; the last good
//! snapshot stays in force when a load fails.

use std::sync::Arc;

use crate::config::Config;
use crate::tickets::file::FileStore;
use crate::tickets::firestore::{self, Firestore, FirestoreLookup, SyncSettings, Target};
use crate::tickets::snapshot::TicketCell;
use crate::tickets::Lookup;

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
    refresh(&store, &cell);
    let (c, interval) = (cell.clone(), t.reload_interval);
    std::thread::Builder::new()
        .name("tickets".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            refresh(&store, &c);
        })?;
    Ok((cell, None))
}

fn refresh(store: &FileStore, cell: &TicketCell) {
    use crate::tickets::TicketStore;
    match store.load_if_changed() {
        Ok(Some(records)) => {
            tracing::info!(tickets = records.len(), store = %store.describe(), "ticket snapshot loaded");
            cell.publish(records);
            cell.mark_synced();
        }
        Ok(None) => cell.mark_synced(),
        Err(e) => {
            cell.sync_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::error!("ticket store unreadable, keeping the last good snapshot: {e}");
        }
    }
}
