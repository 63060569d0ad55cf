//! Keeping the snapshot in sync with the collection: [`SyncSettings`], the incremental
//! sync [`Cursor`] and [`sync_forever`], the loop of full loads and `updatedAt` deltas
//! that publishes to the workers' [`TicketCell`] and persists the snapshot file.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::Firestore;
use super::decode::Decoded;
use super::snapshot_file::{load_persisted, persist};
use crate::tickets::snapshot::TicketCell;

/// Settings of the sync loop.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub sync_interval: Duration,
    pub full_resync_interval: Duration,
    pub snapshot_file: PathBuf,
    pub page_size: u32,
}

/// Where incremental sync continues: the last `updatedAt` seen and its document's name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Cursor {
    pub updated_at: String,
    pub name: String,
}

impl Cursor {
    /// The cursor after a set of documents (the newest `updatedAt`, ties by name).
    pub fn after(docs: &[Decoded]) -> Option<Cursor> {
        docs.iter()
            .max_by(|a, b| {
                a.record
                    .updated_at
                    .cmp(&b.record.updated_at)
                    .then_with(|| a.name.cmp(&b.name))
            })
            .map(|d| Cursor {
                updated_at: d.updated_raw.clone(),
                name: d.name.clone(),
            })
    }
}

/// Keep `cell` in sync with the collection, forever (run on the control runtime).
pub async fn sync_forever(fs: Arc<Firestore>, cell: Arc<TicketCell>, settings: SyncSettings) {
    let mut cursor: Option<Cursor> = None;
    if let Some((records, c)) = load_persisted(&settings.snapshot_file) {
        tracing::info!(
            tickets = records.len(),
            file = %settings.snapshot_file.display(),
            "ticket snapshot loaded from the last run"
        );
        cell.publish(records);
        cursor = c;
    }
    let mut failures = 0u32;
    let mut last_full: Option<Instant> = None;
    // The persisted file holds the whole collection: write it after a full load at once,
    // and after incremental changes at most every PERSIST_EVERY.
    const PERSIST_EVERY: Duration = Duration::from_secs(10);
    let mut dirty = false;
    let mut persisted_at: Option<Instant> = None;
    loop {
        let full_due = last_full.is_none_or(|t| t.elapsed() >= settings.full_resync_interval);
        let result = if full_due {
            match fs.list_all(settings.page_size).await {
                Ok(docs) => {
                    let n = docs.len();
                    let next = Cursor::after(&docs).or(cursor.clone());
                    cell.publish(docs.into_iter().map(|d| (d.id, d.record)).collect());
                    cursor = next;
                    last_full = Some(Instant::now());
                    tracing::info!(tickets = n, "ticket snapshot: full load from Firestore");
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        } else {
            let from = cursor.clone().unwrap_or(Cursor {
                updated_at: "1970-01-01T00:00:00Z".into(),
                name: String::new(),
            });
            match fs.changes_since(&from).await {
                Ok(docs) if docs.is_empty() => Ok(false),
                Ok(docs) => {
                    if let Some(c) = Cursor::after(&docs) {
                        cursor = Some(c);
                    }
                    tracing::debug!(changes = docs.len(), "ticket snapshot: incremental sync");
                    cell.apply(docs.into_iter().map(|d| (d.id, Some(d.record))).collect());
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(changed) => {
                if failures > 0 {
                    tracing::info!(failures, "Firestore sync recovered");
                }
                failures = 0;
                cell.mark_synced();
                dirty |= changed;
                let due = full_due || persisted_at.is_none_or(|t| t.elapsed() >= PERSIST_EVERY);
                if dirty && due {
                    dirty = false;
                    persisted_at = Some(Instant::now());
                    let (path, c, cl) =
                        (settings.snapshot_file.clone(), cursor.clone(), cell.clone());
                    let saved = tokio::task::spawn_blocking(move || persist(&path, &cl, &c)).await;
                    if let Ok(Err(e)) = saved {
                        tracing::warn!(file = %settings.snapshot_file.display(), "cannot persist the ticket snapshot: {e}");
                    }
                }
                tokio::time::sleep(settings.sync_interval).await;
            }
            Err(e) => {
                failures += 1;
                cell.sync_errors.fetch_add(1, Ordering::Relaxed);
                // Log the first failure, then every 30th; back off up to 30 s.
                if failures == 1 || failures % 30 == 0 {
                    tracing::error!(
                        failures,
                        "Firestore sync failed, serving the last snapshot: {e}"
                    );
                }
                let wait = (settings.sync_interval * failures.min(30)).min(Duration::from_secs(30));
                tokio::time::sleep(wait).await;
            }
        }
    }
}
