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
    /// Period of the incremental sync.
    pub sync_interval: Duration,
    /// Period of the full reload.
    pub full_resync_interval: Duration,
    /// Period of the deletion check (a count compared with the snapshot); zero: never.
    pub deletion_check_interval: Duration,
    /// Where the snapshot is persisted for warm starts.
    pub snapshot_file: PathBuf,
    /// Documents per listing page.
    pub page_size: u32,
}

/// How far back each incremental sync reads from the last one's read time. Firestore stamps
/// `updatedAt` (`REQUEST_TIME`) before a commit is visible, so a document of a slow or
/// large commit can appear with an `updatedAt` older than what a previous sync already
/// read; re-reading this window catches it (documents read twice are applied once).
const OVERLAP: Duration = Duration::from_secs(2);

/// The RFC 3339 time `back` before `ts` (`ts` itself when it does not parse).
fn earlier(ts: &str, back: Duration) -> String {
    match humantime::parse_rfc3339_weak(ts) {
        Ok(t) => humantime::format_rfc3339_micros(t.checked_sub(back).unwrap_or(t)).to_string(),
        Err(_) => ts.to_string(),
    }
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
    let mut last_check: Option<Instant> = None;
    let mut gap: Option<i64> = None;
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
                    // The next incremental sync reads from the newest `updatedAt` listed
                    // (less the overlap); a listing is not one consistent read.
                    let next = Cursor::after(&docs)
                        .map(|c| Cursor {
                            updated_at: c.updated_at,
                            name: String::new(),
                        })
                        .or(cursor.clone());
                    // The count difference to watch (documents the listing skipped as
                    // malformed), taken before the snapshot is published, so a deletion
                    // right after the start is not taken for part of it.
                    gap = None;
                    if let (Some(c), false) = (&next, settings.deletion_check_interval.is_zero()) {
                        if let Ok(limit) = humantime::parse_rfc3339_weak(&c.updated_at) {
                            let local =
                                docs.iter().filter(|d| d.record.updated_at <= limit).count();
                            if let Ok(store) = fs.count_until(&c.updated_at).await {
                                gap = Some(store as i64 - local as i64);
                            }
                        }
                        last_check = Some(Instant::now());
                    }
                    cell.publish(docs.into_iter().map(|d| (d.id, d.record)).collect());
                    cursor = next;
                    last_full = Some(Instant::now());
                    tracing::info!(tickets = n, "ticket snapshot: full load from Firestore");
                    Ok(true)
                }
                Err(e) => Err(e),
            }
        } else {
            // From the last read time less the overlap, every document (no name cursor).
            let from = Cursor {
                updated_at: cursor.as_ref().map_or_else(
                    || "1970-01-01T00:00:00Z".to_string(),
                    |c| earlier(&c.updated_at, OVERLAP),
                ),
                name: String::new(),
            };
            match fs.changes_since(&from).await {
                Ok((docs, read_time)) => {
                    if let Some(t) =
                        read_time.or_else(|| Cursor::after(&docs).map(|c| c.updated_at))
                    {
                        cursor = Some(Cursor {
                            updated_at: t,
                            name: String::new(),
                        });
                    }
                    // Documents read again in the overlap, unchanged, change nothing.
                    let changes: Vec<_> = docs
                        .into_iter()
                        .filter(|d| cell.get(&d.id).is_none_or(|r| *r != d.record))
                        .map(|d| (d.id, Some(d.record)))
                        .collect();
                    if changes.is_empty() {
                        Ok(false)
                    } else {
                        tracing::debug!(
                            changes = changes.len(),
                            "ticket snapshot: incremental sync"
                        );
                        cell.apply(changes);
                        Ok(true)
                    }
                }
                Err(e) => Err(e),
            }
        };
        // Deleted documents leave no trace in the incremental sync. Compare the store's
        // count of documents up to the last read time with the snapshot's: the difference
        // (documents the snapshot skips as malformed) is taken right after a full load, and
        // when it changes, something was deleted (or missed) and the snapshot is reloaded.
        let check_due = !settings.deletion_check_interval.is_zero()
            && !full_due
            && last_check.is_none_or(|t| t.elapsed() >= settings.deletion_check_interval);
        let result = match (result, &cursor) {
            (Ok(changed), Some(c)) if check_due => {
                last_check = Some(Instant::now());
                match count_gap(&fs, &cell, &c.updated_at).await {
                    Ok(Some(now)) if gap.is_none() => {
                        gap = Some(now);
                        Ok(changed)
                    }
                    Ok(Some(now)) if gap != Some(now) => {
                        tracing::info!(
                            was = gap.unwrap_or_default(),
                            now,
                            "ticket count differs from Firestore's: reloading the snapshot"
                        );
                        gap = None;
                        last_full = None;
                        Ok(changed)
                    }
                    Ok(_) => Ok(changed),
                    Err(e) => Err(e),
                }
            }
            (r, _) => r,
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

/// Firestore's count of documents with `updatedAt` at or before `until`, less the
/// snapshot's (`None` when `until` does not parse).
async fn count_gap(
    fs: &Firestore,
    cell: &TicketCell,
    until: &str,
) -> Result<Option<i64>, super::FsError> {
    let Ok(limit) = humantime::parse_rfc3339_weak(until) else {
        return Ok(None);
    };
    let store = fs.count_until(until).await?;
    let local = cell
        .load_full()
        .records()
        .iter()
        .filter(|(_, r)| r.updated_at <= limit)
        .count() as u64;
    Ok(Some(store as i64 - local as i64))
}
